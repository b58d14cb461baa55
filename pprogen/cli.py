"""The ``pprogen`` command: ``list``, ``info NAME``, ``train NAME``, ``evaluate RUN``, ``sample RUN``.

A thin layer: arguments in, one call into :mod:`pprogen.engine` (or :mod:`pprogen.inference`), results out.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch

from pprogen import __version__, distributed
from pprogen.engine import (  # noqa: F401  (re-exported: the names tests and scripts use from here)
    GAN_TRAIN_DEFAULTS,
    TRAIN_DEFAULTS,
    TRAIN_OPTIONS,
    Interrupted,
    _condition,
    _config_from_args,
    _format_eval,
    _format_gan_eval,
    _gan_trainer,
    build,
    disentanglement,
    evaluate_split,
    gan_evaluation,
    format_disentanglement,
    format_ood,
    format_reverse_kl,
    reverse_kl_evaluation,
    _some_split,
    load_run,
    ood_split,
    other_dataset,
    prepare_run,
    ship_run,
    train_run,
)
from pprogen.engine import evaluate_split as _evaluate, load_run as _load_run  # noqa: F401  (older names)
from pprogen.capabilities import capabilities
from pprogen.inference.metrics import evaluate_samples, translates
from pprogen.inference.train import NonFiniteLossError
from pprogen.registry import get_card, list_models
from pprogen.data import DataError
from pprogen.runs import REQUIRED, Run, RunError, atomic_write


def cmd_train(args) -> int:
    config, dataset, run, checkpoint, finished = prepare_run(args)
    if finished:
        print(f"{run.path.name} {finished}")
        return 0
    try:
        trained = train_run(config, dataset, run, checkpoint, out=args.out, progress=not args.no_progress,
                            dist_timeout=args.dist_timeout)
    except NonFiniteLossError as err:
        print(f"pprogen: training stopped: {err}", file=sys.stderr)
        return 1
    except Interrupted as stop:
        if stop.message:
            print(stop.message, file=sys.stderr)
        return 130
    if trained.run is None:  # a rank that does not write
        return 0
    summary, run = trained.summary, trained.run
    what = {"em": f"{summary['epochs_run']} EM iterations", "nuts": f"{summary.get('draws')} NUTS draws"}.get(
        trained.session.config.get("trainer"), f"{summary['epochs_run']} epochs")
    if summary.get("resumed_at_epoch"):  # this session trained the epochs after the checkpoint only
        print(f"trained epochs {summary['resumed_at_epoch'] + 1}-{summary['epochs_run']} in {trained.seconds:.1f} s on "
              f"{summary['device']} ({trained.history.stop_reason}); {what} in all, {summary['train_seconds']:.1f} s "
              "of training")
    else:
        print(f"trained {what} in {trained.seconds:.1f} s on {summary['device']} ({trained.history.stop_reason})")
    print(trained.session.format(trained.split, summary[f"{trained.split}_evaluation"]))
    print(f"run folder: {run.path}   pictures: {', '.join(str(run.path / p) for p in trained.pictures)}")
    return 0


ANNEALING_OPTIONS = {"steps": 1000, "chains": 16, "leapfrog": 10, "schedule": "sigmoid"}


def _check_evaluate_args(args) -> None:
    """Refuse options that do not apply to ``--method`` and fill in the defaults of those that do."""
    given = [f"--{k}" for k in ANNEALING_OPTIONS if getattr(args, k) is not None]
    if args.method in ("auto", "is"):
        if given:
            raise ValueError(f"{', '.join(given)} set the annealed chains of --method ais or bdmc; with --method "
                             f"{args.method} set --num-samples")
        args.num_samples = 1000 if args.num_samples is None else args.num_samples
        if args.num_samples < 1:
            raise ValueError(f"--num-samples must be at least 1, got {args.num_samples}")
        if args.refine < 0:
            raise ValueError(f"--refine is a number of Adam steps (0: the guide proposes as trained), got {args.refine}")
        if args.refine and (args.data is not None or args.ood is not None):
            raise ValueError("--refine applies to the run's own data; drop --data/--ood or --refine")
    else:
        if args.refine:
            raise ValueError(f"--refine refines importance sampling's proposal (--method auto or is); --method "
                             f"{args.method} anneals from the guide instead: drop --refine")
        if args.num_samples is not None:
            raise ValueError(f"--num-samples sets importance sampling (--method auto or is); --method {args.method} uses "
                             "--steps T (annealing steps) and --chains C (chains per example)")
        for key, default in ANNEALING_OPTIONS.items():
            if getattr(args, key) is None:
                setattr(args, key, default)
        for key in ("steps", "chains", "leapfrog"):
            if getattr(args, key) < 1:
                raise ValueError(f"--{key} must be at least 1, got {getattr(args, key)}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")


def _format_annealed(split: str, args, result: dict[str, Any]) -> str:
    head = f"T = {args.steps} steps ({args.schedule}), C = {args.chains} chains, L = {args.leapfrog} leapfrog steps"
    if args.method == "ais":
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


def _evaluate_target_fit(args) -> int:
    """``pprogen evaluate`` of a flow fitted to an energy target: ELBO, log Z and KL(q || p) again."""
    if args.data is not None or args.ood is not None or args.method != "auto" or args.limit is not None:
        raise ValueError("a flow fitted to an energy target is scored against its target: drop --data, --ood, "
                         "--method and --limit (--num-samples sets the draws)")
    if args.num_samples is not None and args.num_samples < 2:
        raise ValueError(f"--num-samples must be at least 2, got {args.num_samples}")
    run, config, _, model, _, _ = load_run(args.run, torch.device("cpu"))
    torch.manual_seed(args.seed)
    result = reverse_kl_evaluation(model, config["target"], args.num_samples or 20000)
    summary = run.read_json("summary.json")
    summary["target_evaluation"] = result
    run.write_json("summary.json", summary)
    print(format_reverse_kl(result))
    return 0


def cmd_evaluate(args) -> int:
    if Run.open(args.run).config_with(*REQUIRED).get("trainer") == "reverse_kl":
        return _evaluate_target_fit(args)
    _check_evaluate_args(args)
    other_data = args.data is not None or args.ood is not None
    if args.ood_batch is not None and args.ood is None:
        raise ValueError("--ood-batch sets the typicality test of --ood; give --ood NAME|FILE too")
    if other_data and args.method not in ("auto", "is"):
        raise ValueError(f"--data and --ood score log p(x) by --method auto or is, not {args.method}; drop --method")
    world, device = distributed.init(Run.open(args.run).config_with(*REQUIRED).get("device", "auto"), args.dist_timeout)
    run, config, dataset, model, guide, device = load_run(args.run, device, args.data_dir,  # each rank: its GPU
                                                          need_data=args.data is None)
    if other_data and config.get("kind") == "gan":
        if not capabilities(model).stated_likelihood:
            raise ValueError(f"{run.path.name} is a GAN: it has no likelihood to score other data or outliers with")
        raise ValueError(f"{run.path.name} is a {config['model']} run, trained adversarially: scoring other data or "
                         "outliers is offered for models trained on their likelihood only")
    if args.data is not None:  # score another data set the run's model accepts
        dataset = other_dataset(config, dataset, args.data, args.data_dir)
    key = f"{args.split}_evaluation" if not args.refine else f"{args.split}_evaluation_refined"
    torch.manual_seed(args.seed)
    if args.ood is not None:
        other = other_dataset(config, dataset, args.ood, args.data_dir)
        batch = 1 if args.ood_batch is None else args.ood_batch
        result, report = ood_split(model, guide, dataset, other, args.split, args.num_samples, device, run,
                                   args.limit, world, batch)
        if not world.is_main:
            return 0
        from pprogen.plots import save_ood

        result["picture"] = f"ood-{other.name}.png"
        save_ood(report, [f"in: {result['in']}", f"out: {result['out']}", f"reference: {result['reference']}"],
                 run.path / result["picture"], title=f"{config['model']} ({config['data']}): -log p(x) per input")
        summary = run.read_json("summary.json")
        summary.setdefault("ood", {})[f"{result['in']} vs {result['out']}"] = result
        run.write_json("summary.json", summary)
        print(format_ood(result) + f"\npicture: {run.path / result['picture']}")
        return 0
    if config.get("kind") == "gan":
        if args.refine:
            raise ValueError(f"{run.path.name} is a GAN run: --refine refines the guide of importance sampling; drop it")
        if args.method != "auto":
            what = ("its stated likelihood is scored by importance sampling with its encoder (--num-samples sets K)"
                    if capabilities(model).stated_likelihood else "a GAN has no likelihood to estimate")
            raise ValueError(f"{what}; evaluate {run.path.name} without --method")
        if not world.is_main:  # the sample-based GAN metrics run on rank 0 alone
            return 0
        result = gan_evaluation(model, dataset, args.split, args.num_samples, device, run, args.limit,
                                num_particles=args.num_samples)
        text = _format_gan_eval(result)
    elif args.method in ("ais", "bdmc"):
        annealing = {"num_steps": args.steps, "num_chains": args.chains, "leapfrog_steps": args.leapfrog,
                     "schedule": args.schedule}
        result = evaluate_split(model, guide, dataset, args.split, 0, device, run, args.limit, world, args.method,
                           **annealing)
        result["seed"] = args.seed
        text, key = _format_annealed(args.split, args, result), f"{args.split}_{args.method}"
    else:
        refine = {"refine": args.refine} if args.refine else {}
        result = evaluate_split(model, guide, dataset, args.split, args.num_samples, device, run, args.limit, world,
                                args.method, **refine)
        text = _format_eval(args.split, result)
        if args.data is not None:
            text = f"{dataset.name}: {text}"
        scores = disentanglement(model, guide, dataset, device) if world.is_main else None
        if scores is not None:
            result["disentanglement"] = scores
            text += "\n" + format_disentanglement(scores)
    if not world.is_main:
        return 0
    summary = run.read_json("summary.json")
    if args.data is not None and dataset.name != config["data"]:
        summary.setdefault("evaluations", {})[f"{dataset.name}/{args.split}"] = result
    else:
        summary[key] = result
    run.write_json("summary.json", summary)
    print(text)
    return 0


def _check_sample_args(args, model, caps) -> None:
    """One-line errors for sampling options the model cannot serve (before anything is written)."""
    name = type(model).__name__.lower()
    if args.n is not None and args.n < 1:
        raise ValueError(f"-n must be at least 1, got {args.n}")
    for flag, value in (("--steps", args.steps), ("--span", args.span)):
        if value is not None and not (args.interpolate or args.traverse):
            raise ValueError(f"{flag} sets --interpolate or --traverse; add one of them or drop {flag}")
    if args.span is not None and not args.traverse:
        raise ValueError("--span sets --traverse; add --traverse or drop --span")
    if args.from_data and not (args.interpolate or args.traverse):
        raise ValueError("--from-data starts --interpolate or --traverse at encodings of data; add one of them")
    if args.limit is not None and not (args.traverse and args.from_data):
        raise ValueError("--limit sets the rows --traverse --from-data measures KL on; drop it")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    if args.steps is not None and args.steps < 2:
        raise ValueError(f"--steps must be at least 2, got {args.steps}")
    if args.span is not None and not args.span > 0:
        raise ValueError(f"--span must be positive, got {args.span}")
    if args.mean and not (caps.latent_mean or hasattr(model, "sample") and "mean" in _params(model.sample)):
        raise ValueError(f"{name} has no likelihood mean to show (its samples are draws of x itself or x = f(z)); "
                         "drop --mean")
    if args.psi is not None:
        if not caps.style_mixing:
            raise ValueError(f"{name} has no truncation; --psi applies to style-based generators (stylegan)")
        if args.interpolate or args.traverse:
            raise ValueError("--psi truncates plain samples; drop --interpolate / --traverse")
        if not 0 <= args.psi <= 1:
            raise ValueError(f"--psi must lie in [0, 1], got {args.psi}")
    if args.label is not None:
        if not caps.conditional:
            raise ValueError(f"{name} is not conditioned on labels; drop --label")
        if not 0 <= args.label < model.num_classes:
            raise ValueError(f"--label {args.label} is out of range: {name} has classes 0 to {model.num_classes - 1}")


def _params(fn) -> set[str]:
    import inspect

    return set(inspect.signature(fn).parameters)


def _read_missing(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows with NaN where missing (``.npy``, ``.pt``, or ``.npz`` with ``x`` and an optional ``missing`` mask)."""
    from pprogen.data import read_arrays

    if not Path(path).is_file():
        raise ValueError(f"--impute file {path} does not exist")
    arrays = read_arrays(path)
    if "x" not in arrays:
        raise ValueError(f"--impute file {path} holds {sorted(arrays)}; name the data 'x' (and the mask 'missing')")
    missing = arrays.get("missing")
    return arrays["x"].float(), None if missing is None else torch.as_tensor(missing)


def _write_rows(out: Path, rows: torch.Tensor) -> None:
    """An ``.npy`` or ``.pt`` array file, atomically."""
    if out.suffix.lower() == ".npy":
        import numpy as np

        def save(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, rows.numpy())

        atomic_write(out, save)
    else:
        atomic_write(out, lambda tmp: torch.save(rows, tmp))


def _impute(args, run, config, dataset, model, guide, device, out: Path) -> int:
    from pprogen.impute import impute

    x, missing = _read_missing(args.impute)
    shape = tuple(dataset.shape)
    if tuple(x.shape[1:]) != shape:
        if x.dim() >= 2 and math.prod(x.shape[1:]) == math.prod(shape) and config.get("flatten"):
            x = x.reshape(x.shape[0], *shape)
            missing = None if missing is None else missing.reshape(x.shape[0], *shape)
        else:
            raise ValueError(f"--impute rows have shape {tuple(x.shape[1:])}, but {config['model']} takes "
                             f"{shape}; give rows of that shape with NaN where missing")
    if missing is not None and tuple(missing.shape) != tuple(x.shape):
        raise ValueError(f"the mask 'missing' has shape {tuple(missing.shape)} but the data {tuple(x.shape)}; "
                         "give one flag per entry (True where missing)")
    known = x[~torch.isnan(x) & (~missing.bool() if missing is not None else True)]
    if dataset.binary and known.numel() and not bool(((known == 0) | (known == 1)).all()):
        raise ValueError(f"{config['model']} models binary data; the observed entries of {args.impute} are not 0/1")
    condition = {}
    if args.label is not None and not capabilities(model).conditional:
        raise ValueError(f"{config['model']} is not conditioned on labels; drop --label")
    if capabilities(model).conditional:
        if args.label is None:
            raise ValueError(f"{config['model']} is conditioned on labels; give the rows' class with --label L")
        if not 0 <= args.label < model.num_classes:
            raise ValueError(f"--label {args.label} is out of range: {config['model']} has classes 0 to "
                             f"{model.num_classes - 1}")
        condition = {"y": torch.full((x.shape[0],), args.label, device=device)}
    torch.manual_seed(args.seed)
    s = args.n or 8
    result = impute(model, guide, x.to(device), None if missing is None else missing.to(device), s,
                    args.particles, condition)
    completions = result.completions.cpu()
    text = f"{result.method}; {completions.shape[0]} rows, {s} completions each"
    if result.ess is not None:
        text += f" (effective sample size: mean {result.ess.mean():.1f}, min {result.ess.min():.1f})"
    suffix = out.suffix.lower()
    if suffix in (".png", ".pdf"):
        from pprogen.plots import save_samples

        rows = min(completions.shape[0], 16)
        shown = torch.where(result.missing[:rows, None].cpu(), torch.full_like(completions[:rows, :1], 0.5),
                            completions[:rows, :1])
        grid = torch.cat([shown, completions[:rows]], 1).reshape(rows * (s + 1), *shape)
        save_samples(grid, dataset.image_shape or shape, out, columns=s + 1,
                     title=f"{config['model']}: observed entries (missing in grey), then {s} completions; {text}")
    else:
        _write_rows(out, completions)
    print(f"wrote completions to {out}: {text}")
    return 0


def cmd_sample(args) -> int:
    from pprogen import latent
    from pprogen.capabilities import capabilities

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".pdf", ".npy", ".pt"):
        raise ValueError(f"--out must end in .png, .pdf, .npy or .pt, got {out.name!r}")
    run, config, dataset, model, guide, device = load_run(args.run, data_dir=args.data_dir,
                                                          need_data=args.from_data)
    caps = capabilities(model)
    if args.particles is not None and not args.impute:
        raise ValueError("--particles sets --impute's importance resampling; add --impute FILE or drop it")
    if args.impute:
        stray = [f for f, v in (("--interpolate", args.interpolate), ("--traverse", args.traverse),
                                ("--mean", args.mean), ("--draws", args.draws), ("--from-data", args.from_data))
                 if v]
        if stray:
            raise ValueError(f"{stray[0]} does not apply to --impute; drop it")
        if args.n is not None and args.n < 1:
            raise ValueError(f"-n must be at least 1, got {args.n}")
        if args.particles is not None and args.particles < 1:
            raise ValueError(f"--particles must be at least 1, got {args.particles}")
        args.particles = 256 if args.particles is None else args.particles
        return _impute(args, run, config, dataset, model, guide, device, out)
    _check_sample_args(args, model, caps)
    picture = args.interpolate or args.traverse
    if caps.reconstruction and not (picture and args.from_data):
        raise ValueError(f"{config['model']} has no prior to sample from (an autoencoder); picture the codes of "
                         "data instead (--interpolate or --traverse with --from-data), or train a vae")
    if picture:
        latent.check_latent(model, args.mean, args.from_data, guide)
    torch.manual_seed(args.seed)
    name = config["model"]
    K = getattr(model, "num_classes", None) if caps.conditional else None
    mean = args.mean if args.mean or args.draws else bool(picture and caps.latent_mean)
    columns, title = None, ""
    data = condition = None
    if args.from_data:
        split = _some_split(dataset, args.split)
        rows = 2 * (args.n or 8) if args.interpolate else (args.limit or 1000)
        data = dataset.split(split)[:rows].to(device)
        condition = _condition(model, dataset, split, rows, device)
        if args.label is not None:
            raise ValueError("--label picks the class of prior draws; with --from-data the data's own labels are used")
    elif K:
        n_rows = args.n or (8 if args.interpolate else 10 if args.traverse else K * max(1, 64 // K))
        labels = (torch.full((n_rows,), args.label) if args.label is not None else torch.arange(n_rows) % K)
        condition = {"y": labels.to(device)}
    what = ("decoder outputs" if caps.reconstruction else "likelihood means E[x | z]" if mean else "x = f(z)" if picture and not caps.latent_mean
            else "draws x ~ p(x | z)" if caps.latent_mean else "samples")
    given = "" if not K else f", class {args.label}" if args.label is not None else ""
    if args.interpolate:
        n, steps = args.n or 8, args.steps or 10
        if condition and not args.from_data:
            condition = {"y": condition["y"][:n]}
        samples = latent.interpolate(model, n, steps, mean=mean, guide=guide, data=data, condition=condition).cpu()
        start = "encodings of data points" if args.from_data else "prior draws"
        per_row = "; row labels 0, 1, ... in turn" if K and args.label is None and not args.from_data else ""
        title, columns = f"{name}: spherical interpolation between {start}{given}{per_row} ({what})", steps
    elif args.traverse:
        steps = args.steps or 9
        span = 3.0 if args.span is None else args.span
        cond = {"y": condition["y"][:1]} if condition and not args.from_data else condition
        samples, dims, kl = latent.traverse(model, args.n or 10, steps, span, mean=mean, guide=guide, data=data,
                                            condition=cond)
        samples = samples.cpu()
        order = (f"rows: dimensions {dims.tolist()} by KL (largest first)" if kl is not None
                 else f"rows: dimensions {dims.tolist()}")
        at = "the encoding of a data point" if args.from_data else "zero"
        title, columns = f"{name}: each latent swept over [-{span:g}, {span:g}] at {at}{given}; {order} ({what})", steps
        if kl is not None:
            print("KL per dimension (nats, largest first): " + ", ".join(f"{int(d)}: {kl[d]:.3f}" for d in dims))
    else:
        n = args.n or (K * max(1, 64 // K) if K else 64)
        if translates(model):  # translations of the test split's A images
            samples = model.sample(n, model.split(dataset.split("test").to(device))[0]).cpu()
            title = f"{name}: translations of test images"
        else:
            kw = {"mean": True} if mean else {}
            if args.draws and "mean" in _params(model.sample):  # asked for draws: say so, whatever the model's default
                kw = {"mean": False}
            if condition:
                kw["y"] = condition["y"][:n]
            if args.psi is not None:
                kw["psi"] = args.psi
            samples = model.sample(n, **kw).cpu()
            if caps.adversarial and caps.stated_likelihood:  # a VAE-GAN shows its decoder's mean images
                what = ("draws x ~ p(x | z)" if args.draws else "decoder means E[x | z]") + ", z ~ N(0, I)"
            elif caps.adversarial:
                what = "x = G(z), z ~ N(0, I)" + (f", truncation psi = {args.psi:g}" if args.psi is not None else "")
            elif caps.latent_mean:
                what = f"{what}, z ~ p(z)"
            else:
                what = "samples x ~ p(x)"
            title = f"{name}: {n} {what}{given}"
            if K and args.label is None:
                title += f"; column j shows class j (0 to {K - 1})"
                columns = K
    if out.suffix.lower() in (".png", ".pdf"):
        from pprogen.plots import save_samples

        shape = tuple(model.x_shape) if translates(model) else dataset.image_shape or dataset.shape
        save_samples(samples, shape, out, title=title, columns=columns)
    else:
        _write_rows(out, samples)
    print(f"wrote {samples.shape[0]} {'images' if dataset.is_image else 'rows'} to {out}: {title}")
    return 0


def cmd_ship(args) -> int:
    if args.float32 and args.int8:
        raise ValueError("--float32 and --int8 ask for two encodings of the weights; give one")
    sizes = ship_run(args.run, args.out, half=not args.float32, data_dir=args.data_dir, int8=args.int8)
    files = ", ".join(f"{name}.safetensors {size / 2**20:.2f} MiB" for name, size in sizes.items())
    print(f"shipped {args.run} to {args.out} ({files}); evaluate it with `pprogen evaluate {args.out}` and compare")
    return 0


def cmd_list(args) -> int:
    names = list_models(args.pattern)
    width = max((len(n) for n in names), default=0)
    for name in names:
        card = get_card(name)
        print(f"{name:{width}s}  {card.kind:15s} trains on: {card.trains_on}")
    return 0


def cmd_info(args) -> int:
    print(get_card(args.model).describe())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pprogen", description="Deep generative models as Pyro programs.")
    p.add_argument("--version", action="version", version=f"pprogen {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="list the zoo's models")
    s.add_argument("pattern", nargs="?", default="*")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("info", help="print a model's card")
    s.add_argument("model")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("train", help="train a model; writes a run folder")
    s.add_argument("model", nargs="?", help="registered model name (omit with --resume)")
    s.add_argument("--data", help="data set name or file (default: the model's card)")
    s.add_argument("--data-dir", help="folder with downloaded data (or set PPROGEN_DATA)")
    s.add_argument("--limit", type=int, help="use at most this many examples per split")
    for option in TRAIN_OPTIONS:
        if option.type is bool:
            s.add_argument(option.flag, action=argparse.BooleanOptionalAction, default=None, help=option.help)
        elif option.type is not None:
            s.add_argument(option.flag, type=option.type, help=option.help)
    s.add_argument("--guide",
                   help="default (the model's own), amortized_normal, amortized_lowrank, amortized_iaf or auto_*")
    s.add_argument("--trainer", choices=("svi", "adversarial", "em", "nuts"),
                   help="svi (default), adversarial (GANs), em (closed-form EM: gmm, mixture_of_bernoullis; --epochs "
                        "iterations) or nuts (NUTS over global latents: bayesian_gmm)")
    s.add_argument("--target", metavar="NAME|FILE.py:FUNCTION", help="flows: fit an energy target by reverse KL "
                   "instead of data: u1, u2, u3, u4 (Rezende & Mohamed 2015) or a Python function of z (N, D) "
                   "returning the energy U(z) (N,); planar and radial train this way (default u1)")
    s.add_argument("--draws", type=int, help="--trainer nuts: posterior draws per chain (default 500)")
    s.add_argument("--warmup", type=int, help="--trainer nuts: warm-up steps per chain (default 300)")
    s.add_argument("--chains", type=int, help="--trainer nuts: chains (default 1)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="model argument, e.g. --set z_dim=20 --set hidden_dims=[500] --set natural_order=false (JSON or a "
                   "Python literal, else text; a value of the wrong kind is refused)")
    s.add_argument("--device", help="auto (default), cpu or cuda")
    s.add_argument("--seed", type=int, help="random seed (default 0)")
    s.add_argument("--out", help="run folder (default: runs/<model>-<data>-<time>)")
    s.add_argument("--resume", metavar="RUN", help="continue the run in this folder")
    s.add_argument("--eval-samples", type=int, help="importance samples for the final NLL (default 1000)")
    s.add_argument("--override", action="append", metavar="KEY=VALUE",
                   help="with --resume: change a setting of the run from the next epoch on (recorded in config.json)")
    s.add_argument("--plate-name", help="the per-datum plate's name (default: found from the program)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT,
                   help="under torchrun: seconds a collective waits for the other ranks before the run stops")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="test NLL of a trained run")
    s.add_argument("run")
    s.add_argument("--split", default="test", choices=("train", "valid", "test"))
    s.add_argument("--method", default="auto", choices=("auto", "is", "ais", "bdmc"),
                   help="auto (default): the model's exact log p(x) where it has one, its posterior predictive for "
                        "global latents, else importance sampling with the guide; is: importance sampling; ais: "
                        "annealed importance sampling from the guide to each example's posterior; bdmc: AIS's "
                        "sandwich bounds on data simulated from the model")
    s.add_argument("--num-samples", type=int,
                   help="importance samples per example (default 1000; GANs: generated samples scored)")
    s.add_argument("--refine", type=int, default=0, metavar="STEPS",
                   help="importance sampling: fit a per-example affine map of the guide's draws by STEPS Adam steps on "
                        "the data being scored before sampling (a tighter estimate where the guide proposes poorly "
                        "on held-out data; written to summary.json as SPLIT_evaluation_refined; default 0)")
    s.add_argument("--steps", type=int, help="ais/bdmc: annealing steps T (default 1000)")
    s.add_argument("--chains", type=int, help="ais/bdmc: chains per example C (default 16)")
    s.add_argument("--leapfrog", type=int, help="ais/bdmc: leapfrog steps per HMC transition (default 10)")
    s.add_argument("--schedule", choices=("sigmoid", "linear", "geometric"), help="ais/bdmc: default sigmoid")
    s.add_argument("--seed", type=int, default=0, help="random seed of the estimate (default 0)")
    s.add_argument("--limit", type=int, help="evaluate the first N examples of the split only")
    s.add_argument("--data-dir", help="read the run's data from this folder (default: where it was trained from, or "
                                      "$PPROGEN_DATA)")
    s.add_argument("--data", metavar="NAME|FILE", help="score this data set's --split instead of the run's own (same "
                                                       "shape per example; binary when the run's data was)")
    s.add_argument("--ood", metavar="NAME|FILE", help="out-of-distribution scores of this data set against the "
                   "in-distribution --split: AUROC and FPR at 95%% TPR by log-likelihood and by a typicality test")
    s.add_argument("--ood-batch", type=int, help="inputs per typicality test (default 1; Nalisnick et al. test "
                                                 "batches of M)")
    s.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT,
                   help="under torchrun: seconds a collective waits for the other ranks")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", help="draw samples from a trained run; interpolate or traverse its latent space")
    s.add_argument("run")
    s.add_argument("-n", type=int, help="samples (default 64); rows of --interpolate (default 8); latent dimensions "
                                        "of --traverse (default 10)")
    s.add_argument("--out", required=True, help="file: .png/.pdf picture, .npy or .pt array")
    s.add_argument("--seed", type=int, default=0)
    pictures = s.add_mutually_exclusive_group()
    pictures.add_argument("--interpolate", action="store_true", help="spherical interpolation between pairs of latents")
    pictures.add_argument("--traverse", action="store_true", help="each latent dimension swept with the others fixed "
                                                                   "(ordered by KL with --from-data)")
    s.add_argument("--from-data", action="store_true", help="start at the guide's encodings of the run's data "
                                                            "(--split) instead of prior draws")
    s.add_argument("--split", default="test", choices=("train", "valid", "test"), help="data for --from-data")
    s.add_argument("--limit", type=int, help="--traverse --from-data: rows that measure each dimension's KL "
                                             "(default 1000)")
    s.add_argument("--steps", type=int, help="pictures per row (default 10 for --interpolate, 9 for --traverse)")
    s.add_argument("--span", type=float, help="--traverse: sweep each latent over [-span, span] (default 3)")
    means = s.add_mutually_exclusive_group()
    means.add_argument("--mean", action="store_true", help="show the likelihood's mean E[x | z] (default for "
                                                           "--interpolate and --traverse)")
    means.add_argument("--draws", action="store_true", help="show draws x ~ p(x | z) (default for plain samples)")
    s.add_argument("--label", type=int, help="conditional models: draw this class (default: class j in column j)")
    s.add_argument("--psi", type=float, help="style-based generators: truncation psi in [0, 1] (1: none)")
    s.add_argument("--impute", metavar="FILE", help="fill in the missing entries of FILE's rows (.npy/.pt with NaN "
                   "where missing, or .npz with x and a boolean 'missing' mask): -n completions per row")
    s.add_argument("--particles", type=int, help="--impute: particles per row of importance-resampled routes "
                                                 "(default 256)")
    s.add_argument("--data-dir", help="read the run's data from this folder (a shipped run needs none)")
    s.set_defaults(func=cmd_sample)

    s = sub.add_parser("ship", help="copy a trained run as a small folder of config and weights (float16)")
    s.add_argument("run")
    s.add_argument("out", help="the new folder (must not exist)")
    s.add_argument("--float32", action="store_true", help="keep the weights in float32")
    s.add_argument("--int8", action="store_true", help="store matrices and kernels as int8 with a float32 scale per "
                   "block of 256 entries (about half float16's size; evaluate the copy against the run before "
                   "trusting it)")
    s.add_argument("--data-dir", help="read the run's data from this folder (for its shapes)")
    s.set_defaults(func=cmd_ship)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "train" and not args.model and not args.resume:
        parser().error("train needs a model name (see `pprogen list`) or --resume RUN")
    try:
        return args.func(args)
    except (ValueError, TypeError, RunError, DataError) as err:
        print(f"pprogen: error: {err}", file=sys.stderr)
        return 2
    except distributed.CollectiveError as err:
        print(f"pprogen: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pprogen: interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


def run() -> None:
    """The console entry point (``pprogen ...`` and ``python -m pprogen ...``): exits with :func:`main`'s status.

    As one of several ranks (torchrun) the process leaves without the interpreter's teardown, once every file is
    written and the output flushed: gloo's worker threads release the last collective's tensors after the
    collective has returned, and a release that reaches them during teardown cannot take the GIL and aborts the
    process ("terminate called without an active exception", seen on about 1 run in 20 on a loaded machine)
    although its work was done.
    """
    code = main()
    if distributed.launched():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
