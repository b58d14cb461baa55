"""Pictures: sample grids, reconstructions, 2-D scatter plots and training curves (matplotlib, Agg)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from pprogen.runs import atomic_write  # noqa: E402


def _save(fig, path: Path) -> None:
    suffix = Path(path).suffix.lstrip(".") or "png"
    atomic_write(Path(path), lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format=suffix))
    plt.close(fig)


def image_grid(images: torch.Tensor, nrow: int | None = None):
    """``(N, C, H, W)`` in [0, 1] -> one ``(H', W', C)`` array with a one-pixel border."""
    images = images.detach().float().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol = math.ceil(n / nrow)
    grid = torch.ones(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = images[i]
    return grid.permute(1, 2, 0).numpy()


def save_samples(samples: torch.Tensor, shape: Sequence[int], path: Path, title: str = "",
                 columns: int | None = None) -> None:
    """A grid for images (``columns`` images a row; about square by default), a scatter plot for 2-D data, a line
    plot per row otherwise."""
    samples = samples.detach().cpu().float()
    fig = plt.figure(figsize=(5, 5))
    ax = fig.add_subplot()
    if len(shape) == 3:
        grid = image_grid(samples.reshape((-1, *shape)), columns)
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    elif tuple(shape) == (2,):
        ax.scatter(samples[:, 0].numpy(), samples[:, 1].numpy(), s=2, alpha=0.5)
        ax.set_aspect("equal")
    else:
        ax.plot(samples.reshape(samples.shape[0], -1)[:16].T.numpy(), lw=0.8)
    if title:
        import textwrap

        ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=8)
    _save(fig, path)


def save_reconstructions(data: torch.Tensor, recon: torch.Tensor, shape: Sequence[int], path: Path) -> None:
    """Data (top row) over reconstructions (bottom row), for image data."""
    n = data.shape[0]
    both = torch.cat([data.reshape((n, *shape)), recon.reshape((n, *shape))])
    fig = plt.figure(figsize=(max(4, n * 0.6), 1.6))
    ax = fig.add_subplot()
    grid = image_grid(both.cpu(), nrow=n)
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    ax.set_title("data (top); reconstructions (bottom): likelihood means E[x | z] at z ~ q(z | x)", fontsize=8)
    _save(fig, path)


def save_curves(records: list[dict], path: Path, ylabel: str = "negative ELBO per datum (nats)",
                keys: Sequence[str] = ("train_loss", "valid_loss"), title: str = "per-epoch training curves") -> None:
    """One line per key of the per-epoch ``records`` (the epochs where it is set)."""
    fig = plt.figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for key in keys:
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), label=key.replace("_loss", "").replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def save_translations(rows: Sequence[torch.Tensor], labels: Sequence[str], path: Path) -> None:
    """Image rows of equal length (source, translation, target ...) one above the other."""
    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), 1, figsize=(max(4, n * 0.6), 1.3 * len(rows)))
    for ax, row, label in zip(axes, rows, labels):
        grid = image_grid(row.cpu(), nrow=n)
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    _save(fig, path)


def save_khat(khat: torch.Tensor, path: Path) -> None:
    """Pareto k-hat per data point with Vehtari's thresholds (ArviZ's ``plot_khat``)."""
    import arviz as az

    import warnings

    fig = plt.figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ prefers ELPDData; plain k-hats are what IS has
        az.plot_khat(khat.detach().cpu().numpy(), ax=ax, show_hlines=True, show_bins=True)
    ax.set_title("importance-sampling diagnostics: Pareto k-hat per data point")
    _save(fig, path)


def density_grid(log_prob, lims: tuple[float, float, float, float], n: int = 200, device=None):
    """exp(log_prob) on an ``n x n`` grid over ``(x0, x1, y0, y1)``: returns ``xs, ys, density`` (numpy)."""
    x0, x1, y0, y1 = lims
    xs, ys = torch.linspace(x0, x1, n), torch.linspace(y0, y1, n)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        lp = torch.cat([log_prob(chunk.to(device)).cpu() for chunk in grid.split(10000)])
    return xs.numpy(), ys.numpy(), lp.exp().reshape(n, n).numpy()


def data_limits(data: torch.Tensor, margin: float = 0.1) -> tuple[float, float, float, float]:
    lo, hi = data.min(0).values, data.max(0).values
    pad = (hi - lo) * margin
    return (lo[0] - pad[0]).item(), (hi[0] + pad[0]).item(), (lo[1] - pad[1]).item(), (hi[1] + pad[1]).item()


def save_density_2d(log_prob, data: torch.Tensor, path: Path, title: str = "", device=None) -> None:
    """The data (left) next to a model's density exp(log_prob) on a grid over the data's range (right);
    the grid goes to ``device`` (the model's)."""
    data = data.detach().cpu().float()
    lims = data_limits(data)
    xs, ys, density = density_grid(log_prob, lims, device=device)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    axes[0].hist2d(data[:, 0].numpy(), data[:, 1].numpy(), bins=150, range=[lims[:2], lims[2:]], cmap="viridis")
    axes[0].set_title("data")
    axes[1].pcolormesh(xs, ys, density, cmap="viridis", shading="auto")
    axes[1].set_title(title or "model density")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)


def save_ood(report, labels: Sequence[str], path: Path, title: str = "") -> None:
    """Histograms of -log p(x) per input for the in-distribution test data, the other set and the reference
    data, with the entropy estimate the typicality test measures distances from."""
    fig = plt.figure(figsize=(6.5, 3.8))
    ax = fig.add_subplot()
    parts = (report.log_prob_in, report.log_prob_out, report.log_prob_reference)
    values = [(-p.double()).cpu().numpy() for p in parts]
    lo = min(v.min() for v in values)
    hi = max(v.max() for v in values)
    bins = np.linspace(lo, hi, 60) if hi > lo else 10
    for v, label, colour in zip(values, labels, ("tab:blue", "tab:red", "tab:gray")):
        ax.hist(v, bins=bins, density=True, alpha=0.5, label=f"{label} (mean {v.mean():.1f})", color=colour)
    ax.axvline(report.entropy, color="k", linestyle="--", linewidth=1, label=f"entropy estimate {report.entropy:.1f}")
    ax.set_xlabel("-log p(x) (nats)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    ax.set_title(title or "negative log-likelihood per input")
    _save(fig, path)


def save_trace(netcdf: Path, path: Path, title: str = "") -> None:
    """ArviZ's trace plot (marginal densities and chains) of the posterior draws stored in ``netcdf``."""
    import warnings

    import arviz as az

    idata = az.from_netcdf(str(netcdf))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_trace(idata, compact=True, figsize=(9, 2.2 * len(idata.posterior.data_vars)))
    fig = axes.ravel()[0].figure
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def save_target_fit(energy, samples: torch.Tensor, path: Path, title: str = "", lim: float = 4.0) -> None:
    """A 2-D energy target's density exp(-U) next to a histogram of a fitted flow's samples, on [-lim, lim]^2."""
    xs = torch.linspace(-lim, lim, 300)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1)
    with torch.no_grad():
        density = torch.exp(-energy(grid.reshape(-1, 2)).reshape(300, 300))
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.6))
    axes[0].pcolormesh(xs.numpy(), xs.numpy(), density.numpy(), cmap="viridis", shading="auto")
    axes[0].set_title("target exp(-U(z))", fontsize=9)
    s = samples.detach().cpu().numpy()
    axes[1].hist2d(s[:, 0], s[:, 1], bins=150, range=[[-lim, lim], [-lim, lim]], cmap="viridis")
    axes[1].set_title(f"{len(s)} samples of the flow", fontsize=9)
    for ax in axes:
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def save_code_spaces(panels: Sequence[tuple[str, torch.Tensor, torch.Tensor]], labels: torch.Tensor,
                     image_shape: Sequence[int], path: Path, span: float = 2.5, steps: int = 9) -> None:
    """Two rows of pictures, one column per model: the 2-D codes of data coloured by class (with the 1 and 2
    standard-deviation circles of N(0, I)), and the decoder's outputs on a ``steps x steps`` grid over
    ``[-span, span]^2`` (where draws from N(0, I) fall). ``panels`` holds (title, codes (N, 2), grid images
    (steps * steps, ...)) per model; ``labels`` the classes of the N coded rows."""
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 8.4), squeeze=False)
    circle = np.linspace(0, 2 * np.pi, 200)
    for col, (title, codes, grid_images) in enumerate(panels):
        ax = axes[0, col]
        codes = codes.detach().cpu().float()
        points = ax.scatter(codes[:, 0].numpy(), codes[:, 1].numpy(), c=labels.cpu().numpy(), cmap="tab10", s=5,
                            vmin=-0.5, vmax=9.5)
        for r in (1, 2):
            ax.plot(r * np.cos(circle), r * np.sin(circle), "k--", lw=0.7)
        ax.plot([-span, span, span, -span, -span], [-span, -span, span, span, -span], "r-", lw=0.7)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        grid = image_grid(grid_images.reshape((-1, *image_shape)), steps)
        axes[1, col].imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
        axes[1, col].set_title(f"decoder on the red square [-{span:g}, {span:g}]^2", fontsize=9)
        axes[1, col].axis("off")
    fig.colorbar(points, ax=axes[0].tolist(), ticks=range(10), shrink=0.8, label="digit")
    _save(fig, path)


def save_style_mixing(coarse: torch.Tensor, fine: torch.Tensor, grids: Sequence[tuple[str, torch.Tensor]],
                      path: Path, title: str = "") -> None:
    """Style-mixing grids: for each ``(caption, images (R, C, ...))`` one panel whose top row is ``fine`` (C images),
    left column ``coarse`` (R images) and cell (i, j) the image with the coarse layers' styles of row i and the fine
    layers' of column j."""
    fig, axes = plt.subplots(1, len(grids), figsize=(4.5 * len(grids), 4.8), squeeze=False)
    for ax, (caption, images) in zip(axes[0], grids):
        r, c = images.shape[:2]
        blank = torch.zeros_like(fine[:1])
        top = torch.cat([blank, fine.detach().cpu()], 0)
        rows = [torch.cat([coarse[i: i + 1].detach().cpu(), images[i].detach().cpu()], 0) for i in range(r)]
        grid = image_grid(torch.cat([top, *rows], 0), c + 1)
        ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
        ax.set_title(caption, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)
