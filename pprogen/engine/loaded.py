"""A trained run, loaded: :func:`load` (``pprogen.load``) gives a :class:`LoadedRun` for a run folder or a shipped
``leaderboard/`` folder, with its model, guide, data set, config and device, and methods to evaluate and sample.
:func:`evaluate_run` is ``pprogen evaluate`` and :func:`sample_run` is ``pprogen sample``."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from pprogen import distributed
from pprogen.data import Dataset
from pprogen.engine.config import load_data
from pprogen.engine.sampling import SUFFIXES, SampleRequest, complete, default_out, draw, write
from pprogen.engine.scoring import EvaluationRequest
from pprogen.engine.trainer import trainer_class
from pprogen.inference.checks import resolve_device
from pprogen.runs import REQUIRED, Run, run_lock


@dataclass
class LoadedRun:
    """A trained run: ``run`` (its folder), ``config``, ``dataset`` (a shipped run without data: two blank rows
    shaped like its data), ``model`` and ``guide`` with their weights, in eval mode on ``device``. Unpacks as the
    tuple ``(run, config, dataset, model, guide, device)``."""

    run: Run
    config: dict[str, Any]
    dataset: Dataset
    model: Any
    guide: Any
    device: torch.device
    world: distributed.World = field(default_factory=distributed.World)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.run, self.config, self.dataset, self.model, self.guide, self.device))

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def trainer(self):
        """The trainer class that trained this run (:mod:`pprogen.engine.trainers`)."""
        return trainer_class(self.config)

    def evaluate(self, split: str = "test", method: str = "auto", save: bool = False, **settings: Any) -> dict[str, Any]:
        """The score of ``split`` as ``pprogen evaluate`` gives it (``settings``: the fields of
        :class:`~pprogen.engine.scoring.EvaluationRequest`: ``num_samples``, ``refine``, ``steps``, ``data``, ...);
        with ``save`` it is recorded in the run's ``summary.json``; :meth:`report` also gives the text the command
        line prints."""
        return self.report(split, method, save, **settings)[0]

    def report(self, split: str = "test", method: str = "auto", save: bool = False,
               **settings: Any) -> tuple[dict[str, Any], str]:
        """``(result, text)`` of :meth:`evaluate`."""
        request = EvaluationRequest(split=split, method=method, **settings)
        self.trainer.check_request(request)
        result, text, key = self.trainer.score(self, request)
        if save and key is not None and self.world.is_main:
            record(self.run, key, result)
        return result, text

    def sample(self, n: int = 64, **settings: Any) -> torch.Tensor:
        """``n`` samples as ``pprogen sample`` draws them (``settings``: the fields of
        :class:`~pprogen.engine.sampling.SampleRequest`), as a CPU tensor; see :func:`pprogen.engine.sampling.draw`."""
        return draw(self, SampleRequest(n=n, **settings)).samples


def record(run: Run, key: str, result: dict[str, Any]) -> None:
    """Add ``result`` to the run's ``summary.json`` under ``key`` (``a/b``: under ``summary[a][b]``)."""
    with run.lock("pprogen evaluate"):  # nests within the command's own lock
        summary = run.read_json("summary.json")
        head, _, rest = key.partition("/")
        if rest:
            summary.setdefault(head, {})[rest] = result
        else:
            summary[key] = result
        run.write_json("summary.json", summary)


def shapes_only(config: dict[str, Any]) -> Dataset | None:
    """A data set of two blank rows shaped like a shipped run's data (None for other runs)."""
    shapes = config.get("shipped", {}).get("data")
    if not shapes:
        return None
    shape, image = tuple(shapes["shape"]), shapes.get("image_shape")
    labels = {"train": torch.zeros(2, dtype=torch.long)} if shapes.get("num_classes") else {}
    return Dataset(name=config["data"], train=torch.zeros(2, *shape), valid=None, test=None, shape=shape,
                   binary=shapes["binary"], labels=labels, num_classes=shapes.get("num_classes"),
                   image_shape=tuple(image) if image else None)


def load(path: str | Path, device: torch.device | str | None = None, data_dir: str | None = None,
         need_data: bool = True, world: distributed.World | None = None) -> LoadedRun:
    """The run in ``path`` (a run folder or a shipped folder, read offline from the local path): its config,
    data, model and guide with their weights, on ``device`` (by default the run's). Without ``need_data`` a shipped
    run is built from its data's shapes alone, and its data set has no rows. Nothing named by the folder is
    imported or run: weights are read through safetensors."""
    run = Run.open(path)
    config = run.config_with(*REQUIRED)
    if data_dir is not None:
        config = {**config, "data_dir": str(data_dir)}
    device = resolve_device(config.get("device", "auto")) if device is None else torch.device(device)
    trainer = trainer_class(config)
    dataset = None if need_data else shapes_only(config)
    if dataset is None and config.get("data") is not None:
        dataset = load_data({**config, "flatten": False})
    dataset, model, guide = trainer.load(run, config, dataset, device)
    return LoadedRun(run, config, dataset, model, guide, device, world or distributed.World())


def load_run(path: str | Path, device: torch.device | None = None, data_dir: str | None = None,
             need_data: bool = True) -> LoadedRun:
    """:func:`load` (the name scripts written before ``pprogen.load`` use)."""
    return load(path, device, data_dir, need_data)


def evaluate_run(path: str | Path, split: str = "test", method: str = "auto", data_dir: str | None = None,
                 dist_timeout: float = distributed.DEFAULT_TIMEOUT, **settings: Any) -> tuple[dict[str, Any], str]:
    """``pprogen evaluate``: the request checked before the run is loaded (on each rank, its device under
    torchrun), scored by its trainer and recorded in ``summary.json``; returns ``(result, text)`` (empty text on
    the ranks that do not write)."""
    config = Run.open(path).config_with(*REQUIRED)
    request = EvaluationRequest(split=split, method=method, data_dir=data_dir, **settings)
    trainer = trainer_class(config)
    trainer.check_request(request)
    world, device = distributed.init(config.get("device", "auto"), dist_timeout)
    with run_lock(path, "pprogen evaluate") if world.is_main else nullcontext():  # one writer per run
        loaded = load(path, device, data_dir, need_data=request.data is None, world=world)
        loaded.run.read_json("summary.json")  # a damaged summary is reported before the evaluation runs, not after
        result, text, key = trainer.score(loaded, request)
        if world.is_main and key is not None:
            record(loaded.run, key, result)
    return result, text if world.is_main else ""


def sample_run(path: str | Path, **settings: Any) -> str:
    """``pprogen sample``: draws (or imputes) as ``settings`` (:class:`~pprogen.engine.sampling.SampleRequest`'s
    fields) ask, writes the picture or array (by default a picture in the run folder) and returns the line to tell
    the user."""
    request = SampleRequest(**settings)
    out = Path(request.out) if request.out else default_out(path, request)
    if out.suffix.lower() not in SUFFIXES:
        raise ValueError(f"--out must end in .png, .pdf, .npy or .pt, got {out.name!r}")
    request.check_options()
    loaded = load(path, data_dir=request.data_dir, need_data=request.from_data)
    if request.impute:
        return complete(loaded, request, out)
    drawn = draw(loaded, request)
    write(out, drawn)
    what = "images" if loaded.dataset.is_image else "rows"
    return drawn.notes + f"wrote {drawn.samples.shape[0]} {what} to {out}: {drawn.title}"
