"""Shipping a trained run: a small folder of config and weights that others evaluate and sample without training
(``pprogen ship``; the ``leaderboard/`` folders are made this way)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from pprogen.capabilities import capabilities
from pprogen.engine.config import build, condition_of
from pprogen.engine.loaded import load
from pprogen.engine.trainer import materialize, trainer_class
from pprogen.runs import REQUIRED, Run, RunError, compact_weights, run_lock


def ship_run(path: str, out: str, half: bool = True, data_dir: str | None = None, int8: bool = False) -> dict[str, Any]:
    """A small copy of a trained run that others evaluate and sample without training: ``config.json`` (without
    the machine's data folder, with the data's shapes, so ``pprogen sample`` needs no data), the model's and
    guide's weights (float16 with ``half``, where no value overflows; with ``int8`` matrices and kernels as int8
    with a float32 scale per block of 256 entries, about half float16's size: score the copy before trusting it;
    buffers that the config rebuilds exactly, such as masks and orderings, left out with their digests, checked
    when the folder is read), and the run's training summary. ``out`` must not exist; it appears whole or not at
    all. Returns the sizes written."""
    target = Path(out)
    if target.exists():
        raise RunError(f"{target} exists; remove it or choose another folder to ship {path} to")
    config = Run.open(path).config_with(*REQUIRED)
    trainer = trainer_class(config)
    if not trainer.ships_weights:  # refused before the run is loaded
        raise RunError(trainer.ship_refusal(path, config, None))
    with run_lock(path, "pprogen ship"):  # not a run mid-training: its weights and summary from one moment
        return _ship(path, target, trainer, data_dir, half, int8)


def _ship(path: str, target: Path, trainer, data_dir: str | None, half: bool, int8: bool) -> dict[str, int]:
    loaded = load(path, torch.device("cpu"), data_dir)
    run, config, dataset, model, guide = loaded.run, loaded.config, loaded.dataset, loaded.model, loaded.guide
    refusal = trainer.ship_refusal(path, config, model) or _no_likelihood(path, config, model)
    if refusal:
        raise RunError(refusal)
    with torch.random.fork_rng():  # masks and orderings are drawn from their own seeds; the stream is kept
        _, fresh_model, fresh_guide = build(config, dataset)
        materialize(fresh_guide, dataset.train[:2], **condition_of(fresh_model, dataset, "train", 2))
    shipped = {k: v for k, v in config.items() if k != "data_dir"}
    shipped["shipped"] = {"dtype": "int8" if int8 else "float16" if half else "float32", "data": {
        "shape": list(dataset.shape), "image_shape": list(dataset.image_shape) if dataset.image_shape else None,
        "binary": dataset.binary, "num_classes": dataset.num_classes}}
    summary = {k: v for k, v in run.read_json("summary.json").items()
               if not k.endswith(("_evaluation", "_ais", "_bdmc")) and k not in ("evaluations", "ood")}
    parts = (("model", model, fresh_model), ("guide", guide, fresh_guide))
    return _write_folder(target, shipped, summary, parts, half, int8)


def _no_likelihood(path: str, config: dict[str, Any], model) -> str | None:
    """Models without a likelihood (autoencoders, translation models) do not ship as config and weights."""
    caps = capabilities(model)
    if caps.reconstruction or caps.translates:
        return (f"{path} is a run of {config['model']}, which has no likelihood; only models with a likelihood "
                "ship this way (copy the run folder instead)")
    return None


def _write_folder(target: Path, shipped: dict[str, Any], summary: dict[str, Any], parts, half: bool,
                  int8: bool) -> dict[str, int]:
    """The folder staged beside ``target`` and renamed into place: whole or not at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.{time.time_ns()}.partial"
    staging.mkdir()
    try:
        copy = Run.create(shipped, staging)
        sizes = {}
        for name, part, fresh in parts:
            if isinstance(part, torch.nn.Module) and part.state_dict():
                copy.save_weights(name, part, *compact_weights(part, fresh, half, int8))
                sizes[name] = (staging / f"{name}.safetensors").stat().st_size
        copy.write_json("summary.json", summary)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sizes
