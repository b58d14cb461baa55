"""A run's ``config.json``: the shared part of a new run's, a resumed run's (checked against the options given
and changed by ``--override``), and the data, model and guide it describes.

The options themselves, their defaults and checks are declared in :mod:`pprogen.engine.options`; which of them a
run reads is its trainer's business (:mod:`pprogen.engine.trainer`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pprogen.version import __version__
from pprogen.capabilities import capabilities
from pprogen.data import DataError, Dataset, load_dataset
from pprogen.engine import options as opts
from pprogen.inference import make_guide
from pprogen.registry import ModelCard, create_model
from pprogen.runs import Run

if TYPE_CHECKING:
    from pyro.nn import PyroModule

# settings a run is defined by: fixed when it starts, refused on --resume
RUN_DEFINING = ("data", "data_dir", "limit", "set", "guide", "seed", "plate_name", "out")


def base_config(options: Any, card: ModelCard, trainer: str, train: dict[str, Any]) -> dict[str, Any]:
    """The keys every new run's config has, from the options given (the trainer fills in its data and model)."""
    data_dir = opts.given(options, "data_dir")
    eval_samples = opts.given(options, "eval_samples")
    return {
        "pprogen_version": __version__,
        "model": card.name,
        "kind": card.kind,
        "model_args": {},
        "data": None,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
        "limit": opts.given(options, "limit"),
        "flatten": False,
        "guide": opts.given(options, "guide") or "default",
        "trainer": trainer,
        "train": train,
        "seed": 0 if opts.given(options, "seed") is None else opts.given(options, "seed"),
        "device": opts.given(options, "device") or "auto",
        "eval_samples": opts.EVAL_SAMPLES.defaults[trainer] if eval_samples is None else eval_samples,
        "plate_name": opts.given(options, "plate_name"),
    }


def load_data(config: dict[str, Any]) -> Dataset:
    """The run's data set as its config names it (``limit`` rows a split), flattened when the model takes rows."""
    dataset = load_dataset(config["data"], config.get("data_dir")).subset(config.get("limit"))
    return dataset.flat() if config.get("flatten") else dataset


def build(config: dict[str, Any], dataset: Dataset | None = None) -> tuple[Dataset, Any, Any]:
    """Data, model and guide exactly as a run's ``config.json`` describes them."""
    if dataset is None:
        dataset = load_dataset(config["data"], config.get("data_dir")).subset(config.get("limit"))
    if config.get("flatten"):
        dataset = dataset.flat()
    x_dim = config["model_args"].get("x_dim")
    if len(dataset.shape) > 1 and x_dim == math.prod(dataset.shape):  # rows the config forgot to flatten
        raise DataError(f"{config['model']} takes rows of {x_dim} values, but the config leaves the {config['data']!r} "
                        f"examples of shape {tuple(dataset.shape)} unflattened (\"flatten\": {config.get('flatten')}); "
                        "a run's config.json must say \"flatten\": true for it")
    model = create_model(config["model"], **config["model_args"])
    guide = make_guide(config["guide"], model)
    return dataset, model, guide


def condition_of(model: PyroModule, dataset: Dataset, split: str, limit: int | None = None,
                 device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """The per-datum keyword arguments a conditional model needs: the split's labels as ``y``."""
    if not capabilities(model).conditional:
        return {}
    labels = dataset.labels.get(split)
    if labels is None:
        raise DataError(f"{type(model).__name__.lower()} is conditioned on labels, but the {split!r} split of "
                        f"{dataset.name!r} has none; use a labelled data set (digits, digits_binary, mnist, ...)")
    return {"y": labels[:limit].to(device) if device is not None else labels[:limit]}


def resume_config(options: Any, run: Run, config: dict[str, Any], trainer, card: ModelCard,
                  epoch: int) -> dict[str, Any]:
    """The run's config for a resumed run: the options given must agree with it, except ``--epochs`` (train
    longer), the machine's (``--device``, ``--no-progress``) and ``--override KEY=VALUE`` changes, which are
    recorded in ``config.json`` with the epoch they take effect. Every value is checked before anything runs."""
    given_trainer = opts.given(options, "trainer")
    if given_trainer is not None and given_trainer != trainer.name:
        raise ValueError(f"--trainer is fixed when a run starts and {run.path.name} was trained by {trainer.name}; "
                         "drop it")
    trainer.check_resume(options, config, run)
    model = opts.given(options, "model")
    if model and model != config["model"]:
        raise ValueError(f"{run.path} is a {config['model']} run; resume it with `pprogen train --resume {run.path}` "
                         f"(no model name), or start a new {model} run without --resume")
    for key in RUN_DEFINING:
        if opts.given(options, key) is not None:
            raise ValueError(f"{opts.flag(key)} is fixed when a run starts and {run.path.name} has its own; drop "
                             f"{opts.flag(key)} to resume it, or start a new run")
    trainer.refuse_strays(options, card, resuming=True)
    overrides = opts.parse_pairs(opts.given(options, "override"), "--override")
    allowed = opts.overridable(trainer.name)
    for key in overrides:
        if key not in allowed:
            can = f"it can change {', '.join(allowed)}" if allowed else "it can change nothing but --epochs"
            raise ValueError(f"--override {key}=... is not something a resumed {trainer.name} run can change; {can}")
    train = config["train"]
    for key in [k for k in train if k != "epochs"] + ["eval_samples"]:
        option = opts.BY_KEY.get(key, opts.EVAL_SAMPLES)
        value = opts.given(options, option.dest)
        current = train.get(key) if key in train else config.get(key)
        if value is None or value == current or (key in overrides and overrides[key] == value):
            continue
        how = (f"or pass --override {key}={value} to change it from epoch {epoch + 1}" if key in allowed
               else "it cannot change on resume (start a new run to change it)")
        raise ValueError(f"{option.flag} {value} differs from the run's {current}; a resumed run keeps its settings: "
                         f"drop {option.flag}, {how}")
    if opts.given(options, "epochs") is not None:
        train["epochs"] = opts.given(options, "epochs")
    if opts.given(options, "device") is not None:
        config["device"] = opts.given(options, "device")
    for key, value in overrides.items():
        target = train if key in train or key != "eval_samples" else config
        config.setdefault("overrides", []).append(
            {"key": key, "value": value, "previous": target.get(key), "from_epoch": epoch + 1})
        target[key] = value
    opts.validate(config, "" if overrides else f"{run.path / 'config.json'}: ")
    return config


def finished(config: dict[str, Any], checkpoint: dict[str, Any]) -> str | None:
    """What to tell the user when a resumed run has nothing left to train, else None."""
    train, epoch = config["train"], checkpoint["epoch"]
    history = checkpoint.get("history", {})
    patience = train.get("patience")
    if history.get("stop_reason") == "early_stopping" and patience is not None and checkpoint.get("bad_epochs", 0) >= patience:
        return (f"already stopped early at epoch {epoch} (no better validation loss for {checkpoint.get('bad_epochs')} "
                f"epochs; its weights are those of epoch {history.get('best_epoch')}); to train on, resume with "
                f"--override patience=N for N > {checkpoint.get('bad_epochs')}")
    if epoch >= train["epochs"]:
        return (f"already finished: {epoch} of {train['epochs']} epochs trained; to train on, resume with "
                f"--epochs N for N > {epoch}")
    return None
