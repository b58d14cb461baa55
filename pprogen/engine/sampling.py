"""Drawing from a loaded run (``pprogen sample``, whose command is :func:`pprogen.engine.loaded.sample_run`): plain samples (with labels for conditional models, truncation
for style-based generators, translations for translation models), spherical interpolation and latent traversal
from prior draws or from encodings of data, and imputation of missing entries; with their captions. The results
are written as a picture (``.png``/``.pdf``) or an array (``.npy``/``.pt``)."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from pprogen.capabilities import Capabilities, capabilities
from pprogen.engine import budget
from pprogen.engine.config import condition_of
from pprogen.engine.scoring import some_split
from pprogen.runs import atomic_write

if TYPE_CHECKING:
    from pyro.nn import PyroModule

    from pprogen.data import Dataset

SUFFIXES = (".png", ".pdf", ".npy", ".pt")


class TrainedParts(Protocol):
    """What drawing needs of a trained run: :class:`pprogen.engine.LoadedRun` has it (this module does not import
    that one, which imports this)."""

    config: dict[str, Any]
    dataset: Dataset
    model: Any
    guide: Any
    device: torch.device


@dataclass
class SampleRequest:
    """What ``pprogen sample`` asks for; :meth:`check` refuses what the model cannot serve, in one line."""

    n: int | None = None
    out: str | None = None
    seed: int = 0
    interpolate: bool = False
    traverse: bool = False
    from_data: bool = False
    split: str = "test"
    limit: int | None = None
    steps: int | None = None
    span: float | None = None
    mean: bool = False
    draws: bool = False
    label: int | None = None
    psi: float | None = None
    impute: str | None = None
    particles: int | None = None
    data_dir: str | None = None

    @property
    def picture(self) -> bool:
        return self.interpolate or self.traverse

    def check_options(self) -> None:
        """The checks that need no model."""
        if self.n is not None and self.n < 1:
            raise ValueError(f"-n must be at least 1, got {self.n}")
        if self.particles is not None and not self.impute:
            raise ValueError("--particles sets --impute's importance resampling; add --impute FILE or drop it")
        if self.impute:
            stray = [f for f, v in (("--interpolate", self.interpolate), ("--traverse", self.traverse),
                                    ("--mean", self.mean), ("--draws", self.draws), ("--from-data", self.from_data))
                     if v]
            if stray:
                raise ValueError(f"{stray[0]} does not apply to --impute; drop it")
            if self.particles is not None and self.particles < 1:
                raise ValueError(f"--particles must be at least 1, got {self.particles}")
            return
        for flag, value in (("--steps", self.steps), ("--span", self.span)):
            if value is not None and not self.picture:
                raise ValueError(f"{flag} sets --interpolate or --traverse; add one of them or drop {flag}")
        if self.span is not None and not self.traverse:
            raise ValueError("--span sets --traverse; add --traverse or drop --span")
        if self.from_data and not self.picture:
            raise ValueError("--from-data starts --interpolate or --traverse at encodings of data; add one of them")
        if self.limit is not None and not (self.traverse and self.from_data):
            raise ValueError("--limit sets the rows --traverse --from-data measures KL on; drop it")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        if self.steps is not None and self.steps < 2:
            raise ValueError(f"--steps must be at least 2, got {self.steps}")
        if self.span is not None and not (self.span > 0 and math.isfinite(self.span)):
            raise ValueError(f"--span must be a positive finite number, got {self.span}")

    def check_model(self, model: PyroModule, caps: Capabilities) -> None:
        """The checks that need the model's capabilities."""
        name = type(model).__name__.lower()
        if self.mean and not (caps.latent_mean or hasattr(model, "sample") and "mean" in _params(model.sample)):
            raise ValueError(f"{name} has no likelihood mean to show (its samples are draws of x itself or x = f(z)); "
                             "drop --mean")
        if self.psi is not None:
            if not caps.style_mixing:
                raise ValueError(f"{name} has no truncation; --psi applies to style-based generators (stylegan)")
            if self.picture:
                raise ValueError("--psi truncates plain samples; drop --interpolate / --traverse")
            if not 0 <= self.psi <= 1:
                raise ValueError(f"--psi must lie in [0, 1], got {self.psi}")
        if self.label is not None:
            if not caps.conditional:
                raise ValueError(f"{name} is not conditioned on labels; drop --label")
            if not 0 <= self.label < model.num_classes:
                raise ValueError(f"--label {self.label} is out of range: {name} has classes 0 to "
                                 f"{model.num_classes - 1}")
        if self.label is not None and self.from_data:
            raise ValueError("--label picks the class of prior draws; with --from-data the data's own labels are used")
        if caps.reconstruction and not (self.picture and self.from_data):
            raise ValueError(f"{name} has no prior to sample from (an autoencoder); picture the codes of data "
                             "instead (--interpolate or --traverse with --from-data), or train a vae")


@dataclass
class Drawn:
    """Samples (on the CPU) with the caption of their picture, its columns, the shape of one example, and notes
    to tell the user (KL per dimension of a traversal)."""

    samples: torch.Tensor
    title: str
    columns: int | None
    shape: tuple[int, ...]
    notes: str = ""


def _params(fn) -> set[str]:
    return set(inspect.signature(fn).parameters)


def default_out(path: str | Path, request: SampleRequest) -> Path:
    """Where a picture goes when ``--out`` is not given: in the run folder, named after what it shows."""
    what = "imputed" if request.impute else "interpolation" if request.interpolate else (
        "traversal" if request.traverse else "samples-drawn")
    return Path(path) / f"{what}.png"


def write(out: Path, drawn: Drawn) -> None:
    """A picture of the samples (``.png``/``.pdf``) or the array (``.npy``/``.pt``), atomically."""
    if out.suffix.lower() in (".png", ".pdf"):
        from pprogen.plots import save_samples

        save_samples(drawn.samples, drawn.shape, out, title=drawn.title, columns=drawn.columns)
    else:
        write_rows(out, drawn.samples)


def write_rows(out: Path, rows: torch.Tensor) -> None:
    """An ``.npy`` or ``.pt`` array file, atomically."""
    if out.suffix.lower() == ".npy":
        import numpy as np

        def save(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, rows.numpy())

        atomic_write(out, save)
    else:
        atomic_write(out, lambda tmp: torch.save(rows, tmp))


def draw(loaded: TrainedParts, request: SampleRequest) -> Drawn:
    """What :func:`sample_run` draws, without writing it."""
    from pprogen import latent

    model, caps = loaded.model, capabilities(loaded.model)
    request.check_options()
    request.check_model(model, caps)
    if request.picture:
        latent.check_latent(model, request.mean, request.from_data, loaded.guide)
    n = request.n or 64
    rows = n * (request.steps or 10) if request.picture else n
    budget.check_rows(f"-n {n}", rows, _shape(loaded, caps), "ask for fewer with -n")
    torch.manual_seed(request.seed)
    classes = getattr(model, "num_classes", None) if caps.conditional else None
    mean = request.mean if request.mean or request.draws else bool(request.picture and caps.latent_mean)
    data, condition = _start(loaded, request, classes)
    if request.interpolate:
        return _interpolation(loaded, request, classes, mean, data, condition, caps)
    if request.traverse:
        return _traversal(loaded, request, classes, mean, data, condition, caps)
    return _plain(loaded, request, classes, mean, condition, caps)


def _start(loaded, request: SampleRequest, classes: int | None):
    """The data a picture starts at (``--from-data``) and the labels of a conditional model's rows."""
    if request.from_data:
        split = some_split(loaded.dataset, request.split)
        rows = 2 * (request.n or 8) if request.interpolate else (request.limit or 1000)
        data = loaded.dataset.split(split)[:rows].to(loaded.device)
        return data, condition_of(loaded.model, loaded.dataset, split, rows, loaded.device)
    if classes:
        n_rows = request.n or (8 if request.interpolate else 10 if request.traverse else classes * max(1, 64 // classes))
        labels = (torch.full((n_rows,), request.label) if request.label is not None else torch.arange(n_rows) % classes)
        return None, {"y": labels.to(loaded.device)}
    return None, None


def _what(request: SampleRequest, mean: bool, caps) -> str:
    if caps.reconstruction:
        return "decoder outputs"
    if mean:
        return "likelihood means E[x | z]"
    if request.picture and not caps.latent_mean:
        return "x = f(z)"
    return "draws x ~ p(x | z)" if caps.latent_mean else "samples"


def _given(request: SampleRequest, classes: int | None) -> str:
    return f", class {request.label}" if classes and request.label is not None else ""


def _shape(loaded, caps) -> tuple[int, ...]:
    return tuple(loaded.model.x_shape) if caps.translates else loaded.dataset.image_shape or loaded.dataset.shape


def _interpolation(loaded, request, classes, mean, data, condition, caps) -> Drawn:
    from pprogen import latent

    n, steps = request.n or 8, request.steps or 10
    if condition and not request.from_data:
        condition = {"y": condition["y"][:n]}
    samples = latent.interpolate(loaded.model, n, steps, mean=mean, guide=loaded.guide, data=data,
                                 condition=condition).cpu()
    start = "encodings of data points" if request.from_data else "prior draws"
    per_row = "; row labels 0, 1, ... in turn" if classes and request.label is None and not request.from_data else ""
    title = (f"{loaded.config['model']}: spherical interpolation between {start}{_given(request, classes)}{per_row} "
             f"({_what(request, mean, caps)})")
    return Drawn(samples, title, steps, _shape(loaded, caps))


def _traversal(loaded, request, classes, mean, data, condition, caps) -> Drawn:
    from pprogen import latent

    steps, span = request.steps or 9, 3.0 if request.span is None else request.span
    cond = {"y": condition["y"][:1]} if condition and not request.from_data else condition
    samples, dims, kl = latent.traverse(loaded.model, request.n or 10, steps, span, mean=mean, guide=loaded.guide,
                                        data=data, condition=cond)
    order = (f"rows: dimensions {dims.tolist()} by KL (largest first)" if kl is not None
             else f"rows: dimensions {dims.tolist()}")
    at = "the encoding of a data point" if request.from_data else "zero"
    title = (f"{loaded.config['model']}: each latent swept over [-{span:g}, {span:g}] at {at}"
             f"{_given(request, classes)}; {order} ({_what(request, mean, caps)})")
    notes = ("KL per dimension (nats, largest first): " + ", ".join(f"{int(d)}: {kl[d]:.3f}" for d in dims) + "\n"
             if kl is not None else "")
    return Drawn(samples.cpu(), title, steps, _shape(loaded, caps), notes)


def _plain(loaded, request, classes, mean, condition, caps) -> Drawn:
    model, name = loaded.model, loaded.config["model"]
    n = request.n or (classes * max(1, 64 // classes) if classes else 64)
    if caps.translates:  # translations of the test split's A images
        samples = model.sample(n, model.split(loaded.dataset.split("test").to(loaded.device))[0]).cpu()
        return Drawn(samples, f"{name}: translations of test images", None, _shape(loaded, caps))
    kw: dict[str, Any] = {"mean": True} if mean else {}
    if request.draws and "mean" in _params(model.sample):  # asked for draws: say so, whatever the model's default
        kw = {"mean": False}
    if condition:
        kw["y"] = condition["y"][:n]
    if request.psi is not None:
        kw["psi"] = request.psi
    samples = model.sample(n, **kw).cpu()
    if caps.adversarial and caps.stated_likelihood:  # a VAE-GAN shows its decoder's mean images
        what = ("draws x ~ p(x | z)" if request.draws else "decoder means E[x | z]") + ", z ~ N(0, I)"
    elif caps.adversarial:
        what = "x = G(z), z ~ N(0, I)" + (f", truncation psi = {request.psi:g}" if request.psi is not None else "")
    elif caps.latent_mean:
        what = f"{_what(request, mean, caps)}, z ~ p(z)"
    else:
        what = "samples x ~ p(x)"
    title, columns = f"{name}: {n} {what}{_given(request, classes)}", None
    if classes and request.label is None:
        title += f"; column j shows class j (0 to {classes - 1})"
        columns = classes
    return Drawn(samples, title, columns, _shape(loaded, caps))


def read_missing(path: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows with NaN where missing (``.npy``, ``.pt``, or ``.npz`` with ``x`` and an optional ``missing`` mask)."""
    from pprogen.data import read_arrays

    if not Path(path).is_file():
        raise ValueError(f"--impute file {path} does not exist")
    arrays = read_arrays(path)
    if "x" not in arrays:
        raise ValueError(f"--impute file {path} holds {sorted(arrays)}; name the data 'x' (and the mask 'missing')")
    missing = arrays.get("missing")
    return arrays["x"].float(), None if missing is None else torch.as_tensor(missing)


def _rows_to_complete(loaded, request: SampleRequest):
    """The rows to complete, shaped for the model and checked, with their mask and condition."""
    config, model, dataset = loaded.config, loaded.model, loaded.dataset
    x, missing = read_missing(request.impute)
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
        raise ValueError(f"{config['model']} models binary data; the observed entries of {request.impute} are not 0/1")
    caps, condition = capabilities(model), {}
    if request.label is not None and not caps.conditional:
        raise ValueError(f"{config['model']} is not conditioned on labels; drop --label")
    if caps.conditional:
        if request.label is None:
            raise ValueError(f"{config['model']} is conditioned on labels; give the rows' class with --label L")
        if not 0 <= request.label < model.num_classes:
            raise ValueError(f"--label {request.label} is out of range: {config['model']} has classes 0 to "
                             f"{model.num_classes - 1}")
        condition = {"y": torch.full((x.shape[0],), request.label, device=loaded.device)}
    return x, missing, condition, shape


def complete(loaded, request: SampleRequest, out: Path) -> str:
    """``--impute``: completions of the missing entries of the rows in ``request.impute``, written to ``out``;
    returns the line to tell the user."""
    from pprogen.impute import impute

    x, missing, condition, shape = _rows_to_complete(loaded, request)
    torch.manual_seed(request.seed)
    s = request.n or 8
    result = impute(loaded.model, loaded.guide, x.to(loaded.device),
                    None if missing is None else missing.to(loaded.device), s,
                    256 if request.particles is None else request.particles, condition)
    completions = result.completions.cpu()
    text = f"{result.method}; {completions.shape[0]} rows, {s} completions each"
    if result.ess is not None:
        text += f" (effective sample size: mean {result.ess.mean():.1f}, min {result.ess.min():.1f})"
    if out.suffix.lower() in (".png", ".pdf"):
        from pprogen.plots import save_samples

        rows = min(completions.shape[0], 16)
        shown = torch.where(result.missing[:rows, None].cpu(), torch.full_like(completions[:rows, :1], 0.5),
                            completions[:rows, :1])
        grid = torch.cat([shown, completions[:rows]], 1).reshape(rows * (s + 1), *shape)
        save_samples(grid, loaded.dataset.image_shape or shape, out, columns=s + 1,
                     title=f"{loaded.config['model']}: observed entries (missing in grey), then {s} completions; {text}")
    else:
        write_rows(out, completions)
    return f"wrote completions to {out}: {text}"
