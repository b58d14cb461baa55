"""The pictures a run folder gets: samples (or a Bayesian network's tables, a 2-D flow's density),
reconstructions and curves for models with a likelihood; sample grids, translations and style pictures for GANs."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from pprogen.capabilities import capabilities
from pprogen.data import Dataset
from pprogen.engine.config import condition_of
from pprogen.runs import Run, atomic_write

if TYPE_CHECKING:
    from pyro.nn import PyroModule


def likelihood_pictures(run: Run, model: PyroModule, guide: Callable[..., Any] | None, dataset: Dataset,
                        device: torch.device, curve_label: str = "negative ELBO per datum (nats)") -> list[str]:
    """Samples (a Bayesian network: its learned tables; a 2-D flow: its density too), reconstructions of images,
    and the training curves; returns the names written in the run folder."""
    from pprogen import plots

    made = []
    caps = capabilities(model)
    if caps.fitted_network:  # a Bayesian network: its learned tables say more than samples
        network = model.fitted_network(guide)
        run.write_json("network.json", network.to_spec())
        atomic_write(run.path / "network.txt", lambda tmp: Path(tmp).write_text(network.describe() + "\n"))
        made += ["network.json", "network.txt"]
    elif hasattr(model, "sample"):
        made += _samples(run, model, guide, dataset, device, caps)
    if hasattr(model, "reconstruct") and dataset.is_image:
        split = "valid" if dataset.valid is not None else "train"
        x = dataset.split(split)[:12].to(device)
        recon = model.reconstruct(x, guide, **condition_of(model, dataset, split, 12, device))
        plots.save_reconstructions(x, recon, dataset.image_shape, run.path / "reconstructions.png")
        made.append("reconstructions.png")
    if caps.exact_log_prob and curve_label.startswith("negative ELBO"):  # no latents: the bound is log p(x)
        curve_label = "negative log-likelihood per datum (nats)"
    if caps.reconstruction:  # a flat prior and a point-mass guide: the "ELBO" is the reconstruction term alone
        curve_label = "reconstruction loss per datum (no likelihood)"
    plots.save_curves(run.read_metrics(), run.path / "curves.png", ylabel=curve_label,
                      title=f"{run.config['model']} on {run.config['data']}: per-epoch training curves")
    made.append("curves.png")
    return made


def _samples(run: Run, model, guide, dataset: Dataset, device, caps) -> list[str]:
    from pprogen import plots

    made = []
    if tuple(dataset.shape) == (2,) and caps.invertible and caps.exact_log_prob:  # a 2-D flow: its density
        plots.save_density_2d(model.log_prob, dataset.split("test" if dataset.test is not None else "train"),
                              run.path / "density.png", title=f"{run.config['model']} on {run.config['data']}",
                              device=device)
        made.append("density.png")
    params = inspect.signature(model.sample).parameters
    extra = {"mean": True} if "mean" in params else {"guide": guide} if "guide" in params else {}
    title = f"{run.config['model']}: " + ("likelihood means E[x | z], z ~ p(z)" if "mean" in extra else "samples")
    n, columns = 64, None
    if caps.conditional and getattr(model, "num_classes", None):  # labels 0..K-1 in turn: one class a column
        columns = model.num_classes
        n = columns * max(1, 64 // columns)
        title += f"; column j shows class j (0 to {columns - 1})"
    samples = model.sample(n, **extra)
    plots.save_samples(samples, dataset.image_shape or dataset.shape, run.path / "samples.png", title=title,
                       columns=columns)
    return made + ["samples.png"]


def style_pictures(model, folder: Path, name: str, n: int = 6) -> list[str]:
    """A style-based generator's pictures: style-mixing grids (coarse layers' styles from the rows' latents, fine
    from the columns'; two crossover points) and a truncation sweep (rows psi = 1 ... 0 for the same latents), all
    with the per-layer noise held fixed."""
    from pprogen import plots

    torch.manual_seed(0)
    device = next(model.parameters()).device
    z_rows, z_cols = torch.randn(n, model.z_dim, device=device), torch.randn(n, model.z_dim, device=device)
    with torch.no_grad():
        rows, cols = model.mix(z_rows, z_rows, 0), model.mix(z_cols, z_cols, 0)
        grids = []
        for crossover in sorted({2, model.num_ws // 2 + 1} & set(range(1, model.num_ws))):
            pairs = model.mix(z_rows.repeat_interleave(n, 0), z_cols.repeat(n, 1), crossover)
            grids.append((f"styled layers 1-{crossover} of {model.num_ws} from the row,\nthe rest from the column",
                          pairs.reshape(n, n, *pairs.shape[1:])))
        plots.save_style_mixing(rows, cols, grids, folder / "mixing.png",
                                title=f"{name}: style mixing (coarse from the left column, fine from the top row)")
        psis = (1.0, 0.8, 0.6, 0.4, 0.2, 0.0)
        z = torch.randn(8, model.z_dim, device=device)
        sweep = torch.cat([model.sample_at(z, psi) for psi in psis])
    plots.save_samples(sweep, model.x_shape, folder / "truncation.png", columns=8,
                       title=f"{name}: truncation, rows psi = {', '.join(f'{p:g}' for p in psis)} (same 8 latents)")
    return ["mixing.png", "truncation.png"]


def gan_pictures(run: Run, model, dataset: Dataset, device, path: Path, split: str = "valid") -> None:
    """Samples over the data (2-D), a sample grid (images) or source / translation / target rows."""
    from pprogen import plots

    torch.manual_seed(0)  # the same noise every epoch, so the grids show training progress
    caps = capabilities(model)
    if caps.translates:
        a, b = model.split(dataset.split(split)[:12].to(device))
        rows, labels = [a, model.sample(12, a)], ["A (source)", "G_ab(A)"]
        if dataset.pairing == "paired":
            rows, labels = rows + [b], labels + ["B (target)"]
        elif "ba" in model.generator:
            rows, labels = rows + [b, model.sample(12, b, "ba")], labels + ["B (source)", "G_ba(B)"]
        plots.save_translations(rows, labels, path)
        return
    what = "decoder means E[x | z]" if caps.stated_likelihood else "x = G(z)"
    title, columns, n = f"{run.config['model']}: {what}, z ~ N(0, I)", None, 64 if dataset.is_image else 2500
    if caps.conditional and dataset.is_image:  # labels 0..K-1 in turn: one class a column
        columns = model.num_classes
        n = columns * max(1, 64 // columns)
        title += f"; column j shows class j (0 to {columns - 1})"
    samples = model.sample(n)
    plots.save_samples(samples, dataset.image_shape or dataset.shape, path, title=title, columns=columns)
