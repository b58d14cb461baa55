"""Results as the command line prints them: one function per kind of result, text in, nothing written."""

from __future__ import annotations

from typing import Any


def format_eval(split: str, result: dict[str, Any]) -> str:
    """A likelihood evaluation (or an autoencoder's reconstruction error) of ``split``."""
    if "mse" in result:  # an autoencoder: no likelihood, no NLL
        return (f"{split} reconstruction error: MSE {result['mse']:.5f} ± {result['mse_stderr']:.5f} per value, "
                f"reconstruction loss {result['reconstruction_loss']:.3f} ± {result['reconstruction_loss_stderr']:.3f} "
                f"nats per example over {result['num_data']} examples (an autoencoder: no likelihood)")
    text = f"{split} NLL: {result['nll']:.3f} ± {result['nll_stderr']:.3f} nats over {result['num_data']} examples"
    if "bits_per_dim" in result:
        text += f" ({result['bits_per_dim']:.4f} bits/dim)"
    if result.get("method", "").startswith("dequantization"):
        text += f"; {result['method']}"
    if "num_samples" in result:
        text += f", K = {result['num_samples']} importance samples (mean ESS {result['mean_ess']:.1f})"
        if result.get("refine_steps"):
            text += f", from the guide refined per example by {result['refine_steps']} Adam steps"
    if result.get("khat_bands"):
        bands = result["khat_bands"]
        text += "\nPareto k-hat: " + ", ".join(f"{n} {bands[n]}" for n in ("good", "ok", "bad", "very bad"))
        text += " (k < 0.5 good, < 0.7 ok, < 1 bad, else very bad)"
    if result.get("stderr_note"):
        text += f"\nstandard error {result['stderr_note']}"
    return text


def format_gan_eval(result: dict[str, Any]) -> str:
    """A GAN's sample metrics (and a VAE-GAN's stated likelihood)."""
    parts = []
    if "modes" in result:
        kl = result["reverse_kl"]
        kl = "undefined (no high-quality sample)" if kl is None else f"{kl:.4f}"
        parts.append(f"modes {result['modes']}/{result['num_modes']}, high quality {100 * result['high_quality']:.1f}%, "
                     f"reverse KL {kl}")
    if "frechet_distance" in result:
        parts.append(f"Fréchet distance {result['frechet_distance']:.3f}, precision {result['precision']:.3f}, "
                     f"recall {result['recall']:.3f}, classifier score {result['classifier_score']:.2f}")
    if "label_agreement" in result:
        parts.append(f"label agreement {100 * result['label_agreement']:.1f}%")
    for key in ("l1_to_target", "cycle_l1"):
        if key in result:
            parts.append(f"{key.replace('_', ' ')} {result[key]:.4f}")
    parts.append(f"MMD^2 {result['mmd']:.5f}")
    text = f"{result['split']}: " + "; ".join(parts) + f" ({result['method']})"
    if "likelihood" in result:  # a VAE-GAN's stated likelihood, scored with its encoder as proposal
        text += "\n" + format_eval(result["split"], result["likelihood"])
    return text


def format_annealed(split: str, settings: Any, result: dict[str, Any]) -> str:
    """An AIS estimate or BDMC's sandwich bounds (``settings``: steps, schedule, chains, leapfrog, method)."""
    head = (f"T = {settings.steps} steps ({settings.schedule}), C = {settings.chains} chains, L = {settings.leapfrog} "
            "leapfrog steps")
    if settings.method == "ais":
        text = (f"{split} NLL (AIS, {head}): {result['nll']:.3f} ± {result['nll_stderr']:.3f} nats over "
                f"{result['num_data']} examples")
        if "bits_per_dim" in result:
            text += f" ({result['bits_per_dim']:.4f} bits/dim)"
    else:
        text = (f"BDMC ({head}) on {result['num_data']} examples simulated from the model (shaped like the {split!r} "
                f"split): log p(x) between {result['lower_log_prob']:.3f} and {result['upper_log_prob']:.3f} nats on "
                f"average; gap {result['gap']:.3f} ± {result['gap_stderr']:.3f} (max {result['gap_max']:.3f})")
    return (text + f"\nHMC: mean acceptance {result['mean_accept_rate']:.2f}, {result['divergences']} divergent "
            f"transitions; per-example results in {result['inference_data']} (ArviZ)")


def format_ood(result: dict[str, Any]) -> str:
    """Out-of-distribution scores by likelihood and by the typicality test."""
    likelier = ("the other set is MORE likely than the model's own test data: raw likelihood fails here"
                if result["out_more_likely"] else "the other set is less likely")
    lines = [f"OOD: {result['in']} ({result['num_in']} inputs, in distribution) against {result['out']} "
             f"({result['num_out']}); log p(x) by {result['method']}",
             f"mean NLL: in {result['nll_in']:.3f}, out {result['nll_out']:.3f} nats ({likelier}); entropy estimate "
             f"{result['entropy']:.3f} nats from {result['reference']} ({result['num_reference']} inputs)"]
    for kind, how in (("likelihood", "log p(x) per input"),
                      ("typicality", f"|mean NLL of {result['typicality_batch']} input(s) - entropy|")):
        r = result[kind]
        lines.append(f"{kind} ({how}): AUROC {r['auroc']:.4f}, FPR at 95% TPR {r['fpr_at_95_tpr']:.4f}")
    return "\n".join(lines)


def format_disentanglement(result: dict[str, Any]) -> str:
    """MIG and the FactorVAE score, or why they were not computed."""
    if "not_computed" in result:
        return f"disentanglement: not computed ({result['not_computed']})"
    parts = ", ".join(f"{k} {v:.2f}" for k, v in result["mig_per_factor"].items())
    return (f"disentanglement ({result['codes']}, {result['num_data']} images): MIG {result['mig']:.3f} ({parts}), "
            f"FactorVAE score {result['factor_vae_score']:.3f}")


def format_reverse_kl(result: dict[str, Any]) -> str:
    """A flow fitted to an energy target: its ELBO, and log Z and KL(q || p) where quadrature gives them."""
    text = (f"target {result['target']}: ELBO {result['elbo']:.4f} ± {result['elbo_stderr']:.4f} nats "
            f"({result['num_samples']} draws of the flow)")
    if "kl" in result:
        text += f"; log Z {result['log_z_quadrature']:.4f} by quadrature, KL(q || p) = {result['kl']:.4f} nats"
    return text + f"; importance-sampled log Z {result['log_z_importance']:.4f}"


def format_trained(trained: Any) -> str:
    """What ``pprogen train`` tells when a run has trained: what, how long, the evaluation and the files."""
    summary, run = trained.summary, trained.run
    what = trained.session.trained_what(summary)
    if summary.get("resumed_at_epoch"):  # this session trained the epochs after the checkpoint only
        head = (f"trained epochs {summary['resumed_at_epoch'] + 1}-{summary['epochs_run']} in {trained.seconds:.1f} s "
                f"on {summary['device']} ({trained.history.stop_reason}); {what} in all, "
                f"{summary['train_seconds']:.1f} s of training")
    else:
        head = f"trained {what} in {trained.seconds:.1f} s on {summary['device']} ({trained.history.stop_reason})"
    return "\n".join([head, trained.session.format(trained.split, summary[f"{trained.split}_evaluation"]),
                      f"run folder: {run.path}   pictures: {', '.join(str(run.path / p) for p in trained.pictures)}"])
