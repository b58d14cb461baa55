"""The run engine: a run's settings, its trainer, and what is written about it — for the command line and Python.

``prepare_run(options)`` turns command-line-like options into a run's settings (a new run's ``config.json``, or
a resumed run's, checked against what was given), ``train_run(config, ...)`` trains it with the trainer the
model's kind calls for (SVI by :func:`~pprogen.inference.fit`, or the adversarial trainer) and writes the
evaluation, the pictures and ``summary.json``; ``load_run(path)`` gives a trained run's data, model and guide
back. Training options are declared once, in :data:`TRAIN_OPTIONS`.
"""

from __future__ import annotations

import ast
import inspect
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyro
import torch

from pprogen import __version__
from pprogen import distributed
from pprogen.capabilities import capabilities
from pprogen.data import NAMES as DATA_NAMES
from pprogen.data import DataError, Dataset, intensity_levels, load_dataset
from pprogen.inference import evaluate, make_elbo, make_guide
from pprogen.inference.checks import resolve_device
from pprogen.inference.loop import History
from pprogen.inference.metrics import evaluate_samples, translates
from pprogen.inference.train import NonFiniteLossError, Objective, Optim, Speed, Stopping, fit
from pprogen.registry import create_model, get_card
from pprogen.runs import REQUIRED, Run, RunError, atomic_write, compact_weights, seed_everything


class _Absent:
    def __repr__(self) -> str:
        return "-"


NO = _Absent()  # not an option of that kind of trainer


@dataclass(frozen=True)
class TrainOption:
    """A training option, declared once: its type, its default for SVI models and for GANs (``NO``: the
    trainer does not read it, and giving it is an error), whether a resumed SVI run may change it with
    ``--override``, and its help. The parser, the defaults written to config.json, the refusal of options
    of another trainer and the overrides a resumed run accepts all come from this table."""

    key: str
    type: Any
    svi: Any
    gan: Any
    help: str
    resumable: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


TRAIN_OPTIONS = (
    TrainOption("epochs", int, 200, 100, "epochs to train (on --resume: train on to this epoch)"),
    TrainOption("batch_size", int, 128, 64, "rows per step (per rank under torchrun)", resumable=True),
    TrainOption("lr", float, 1e-3, 2e-4, "learning rate (GANs: the generator's)", resumable=True),
    TrainOption("optimizer", str, "adam", NO, "adam, adamw, sgd, rmsprop, adagrad"),
    TrainOption("weight_decay", float, 0.0, NO, "weight decay (an L2 penalty in adam, sgd, rmsprop and adagrad; decoupled in "
                "adamw)"),
    TrainOption("schedule", str, "constant", "constant", "constant, cosine, exponential or plateau (GANs: constant "
                "or linear)"),
    TrainOption("lr_gamma", float, Optim.lr_gamma, NO, "the schedule's factor: exponential multiplies the learning rate by it "
                "every epoch, plateau when the validation loss stops falling"),
    TrainOption("clip_norm", float, None, NO, "clip the gradient norm", resumable=True),
    TrainOption("patience", int, 20, NO, "early-stopping patience in epochs", resumable=True),
    TrainOption("elbo", str, "analytic", NO, "ELBO estimator: analytic (closed-form KL terms where exact), trace, stl, meanfield, graph, enum, renyi, iwae, iwae_dreg",
                resumable=True),
    TrainOption("particles", int, 1, NO, "particles per ELBO estimate (vectorized)", resumable=True),
    TrainOption("beta", float, 1.0, NO, "KL weight (beta-VAE)", resumable=True),
    TrainOption("alpha", float, None, NO, "order of the renyi bound, in [0, 1)", resumable=True),
    TrainOption("kl_warmup", int, 0, NO, "epochs over which the KL weight ramps up to --beta", resumable=True),
    TrainOption("lr_d", float, NO, 2e-4, "GANs: the discriminator's learning rate (--lr is the generator's)"),
    TrainOption("betas", None, NO, [0.5, 0.999], "GANs: Adam's betas (no flag)"),
    TrainOption("loss", str, NO, "nonsaturating", "GANs: minimax, nonsaturating, wgan_gp, hinge or lsgan"),
    TrainOption("critic_steps", int, NO, 1, "GANs: discriminator updates per generator update"),
    TrainOption("gp_weight", float, NO, None, "GANs: gradient-penalty weight (default 10 for wgan_gp, else 0)"),
    TrainOption("r1_weight", float, NO, 0.0, "GANs: R1 penalty weight gamma on real data"),
    TrainOption("spectral_norm", bool, NO, False, "GANs: spectral norm in the discriminator"),
    TrainOption("ema", float, 0.0, 0.999, "decay of a moving average of the weights (Polyak averaging), which is "
                "evaluated, early-stopped on and saved (0: off); GANs: of the generator's, used for sampling"),
    TrainOption("autocast", str, None, None, "train under bfloat16 autocast (evaluation stays float32)"),
    TrainOption("compile", bool, False, False, "compile the networks with torch.compile (pays off on some models "
                "only: README)"),
    TrainOption("fast_path", bool, True, NO, "replay each settled step from a recorded graph of its loss, checked bit "
                "for bit against the program (--no-fast-path: run the Pyro program every step)", resumable=True),
)
TRAIN_DEFAULTS = {o.key: o.svi for o in TRAIN_OPTIONS if o.svi is not NO}
TRAINERS = ("svi", "adversarial", "em", "nuts")
NUTS_OPTIONS = {"draws": ("num_samples", 500), "warmup": ("warmup_steps", 300), "chains": ("num_chains", 1)}


def _trainer_settings(args, card) -> tuple[str, dict[str, Any] | None]:
    """The trainer ``--trainer`` names (by default the model kind's: SVI, or adversarial for GANs) and, for EM and
    NUTS, their settings; the options those trainers do not read are refused in one line."""
    default = "adversarial" if card.kind == "gan" else "svi"
    trainer = _given(args, "trainer") or default
    if trainer not in TRAINERS:
        raise ValueError(f"unknown trainer {trainer!r}; choose {', '.join(TRAINERS)}")
    if (trainer == "adversarial") != (card.kind == "gan"):
        raise ValueError(f"--trainer {trainer} does not train {args.model} (a {card.kind} model); "
                         f"{'GANs train adversarially' if card.kind == 'gan' else 'only GANs train adversarially'}")
    nuts_given = [f"--{k}" for k in NUTS_OPTIONS if _given(args, k) is not None]
    if nuts_given and trainer != "nuts":
        raise ValueError(f"{', '.join(nuts_given)} set --trainer nuts; add --trainer nuts or drop them")
    if trainer not in ("em", "nuts"):
        return trainer, None
    reads = ("epochs",) if trainer == "em" else ()
    stray = sorted(o.flag for o in TRAIN_OPTIONS if o.key not in reads and _is_given(_given(args, o.key)))
    stray += [_flag(k) for k in SVI_ONLY if _is_given(_given(args, k))]
    if stray:
        what = "EM iterations: --epochs" if trainer == "em" else "--draws, --warmup and --chains"
        raise ValueError(f"{', '.join(stray)} {'does' if len(stray) == 1 else 'do'} not apply to --trainer {trainer} "
                         f"(it reads {what}); drop {'it' if len(stray) == 1 else 'them'}")
    if trainer == "em":
        epochs = 100 if args.epochs is None else args.epochs
        if epochs < 1:
            raise ValueError(f"--epochs (EM iterations) must be at least 1, got {epochs}")
        return trainer, {"epochs": epochs}
    settings = {}
    for flag, (key, default_value) in NUTS_OPTIONS.items():
        value = default_value if _given(args, flag) is None else _given(args, flag)
        if value < (0 if flag == "warmup" else 1):
            raise ValueError(f"--{flag} must be at least {0 if flag == 'warmup' else 1}, got {value}")
        settings[key] = value
    return trainer, settings
GAN_TRAIN_DEFAULTS = {o.key: o.gan for o in TRAIN_OPTIONS if o.gan is not NO}


def _parse_value(text: str) -> Any:
    """A --set value: JSON (``true``, ``[500]``, ``null``), else a Python literal (``False``, ``(16, 16)``, ``None``),
    else the text itself (``relu``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _model_args(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects KEY=VALUE (e.g. --set z_dim=20), got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = _parse_value(value)
    return out


def build(config: dict[str, Any], dataset: Dataset | None = None) -> tuple[Dataset, Any, Any]:
    """Data, model and guide exactly as a run's ``config.json`` describes them."""
    if dataset is None:
        dataset = load_dataset(config["data"], config.get("data_dir")).subset(config.get("limit"))
    if config.get("flatten"):
        dataset = dataset.flat()
    model = create_model(config["model"], **config["model_args"])
    guide = make_guide(config["guide"], model)
    return dataset, model, guide


SVI_ONLY = ("guide", "plate_name")  # options of the SVI trainer outside config["train"]
RUN_DEFINING = ("data", "data_dir", "limit", "set", "guide", "seed", "plate_name", "out")
OVERRIDABLE = {
    "svi": tuple(o.key for o in TRAIN_OPTIONS if o.resumable and o.svi is not NO) + ("eval_samples",),
    "gan": ("eval_samples",),  # the adversarial trainer restores its optimizers' settings from the checkpoint
}


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _given(args, key: str) -> Any:
    return getattr(args, key, None)


def _refuse_options_of_other_kinds(options, name: str, kind: str) -> None:
    """A training option that the model's trainer does not read is an error, not silently ignored."""
    trainer = "gan" if kind == "gan" else "svi"
    stray = [o.flag for o in TRAIN_OPTIONS if getattr(o, trainer) is NO and _is_given(_given(options, o.key))]
    stray += [_flag(k) for k in SVI_ONLY if trainer == "gan" and _is_given(_given(options, k))]
    if kind == "autoencoder":  # a flat prior and a point-mass guide: no KL term to weight or anneal
        stray += [_flag(k) for k in ("beta", "kl_warmup") if _is_given(_given(options, k))]
    stray.sort()
    if stray:
        how = "the adversarial trainer" if trainer == "gan" else "SVI"
        article = "an" if kind[0] in "aeiou" else "a"
        raise ValueError(f"{', '.join(stray)} {'does' if len(stray) == 1 else 'do'} not apply to {name} "
                         f"({article} {kind} model, trained by {how}); drop {'it' if len(stray) == 1 else 'them'}")


def _refuse_a_factor_no_schedule_reads(args, train: dict[str, Any]) -> None:
    """``--lr-gamma`` is read by the exponential and plateau schedules only: with another it would change nothing."""
    if _given(args, "lr_gamma") is not None and train["schedule"] not in ("exponential", "plateau"):
        raise ValueError(f"--lr-gamma is the exponential or plateau schedule's factor and the {train['schedule']} "
                         "schedule ignores it; add --schedule exponential (or plateau), or drop --lr-gamma")


def _is_given(value: Any) -> bool:
    """An option given on the command line: not left at None / False (a flag) / "default" (--guide)."""
    return not (value is None or value is False or value == "default")


def _resume_config(args, run: Run, epoch: int) -> dict[str, Any]:
    """The run's config for a resumed run: the options given on the command line must agree with it, except
    ``--epochs`` (train longer), the machine's (``--device``, ``--no-progress``) and ``--override KEY=VALUE``
    changes, which are recorded in ``config.json`` with the epoch they take effect."""
    config = run.config_with(*REQUIRED)
    kind = "gan" if config.get("kind") == "gan" else "svi"
    trainer = config.get("trainer", "svi")
    if _given(args, "trainer") is not None and _given(args, "trainer") != config.get("trainer", _given(args, "trainer")):
        raise ValueError(f"--trainer is fixed when a run starts and {run.path.name} was trained by {trainer}; drop it")
    if _given(args, "target") is not None:
        raise ValueError(f"--target is fixed when a run starts; drop it to resume {run.path.name}")
    if trainer == "em":
        stray = [o.flag for o in TRAIN_OPTIONS if o.key != "epochs" and _is_given(_given(args, o.key))]
        if stray or args.override:
            raise ValueError(f"{(stray or ['--override'])[0]} does not apply to an EM run; resume it with --epochs N")
    if args.model and args.model != config["model"]:
        raise ValueError(f"{run.path} is a {config['model']} run; resume it with `pprogen train --resume {run.path}` "
                         f"(no model name), or start a new {args.model} run without --resume")
    for key in RUN_DEFINING:
        if _given(args, key) is not None:
            raise ValueError(f"{_flag(key)} is fixed when a run starts and {run.path.name} has its own; drop "
                             f"{_flag(key)} to resume it, or start a new run")
    overrides = dict(_model_args(args.override)) if args.override else {}
    for key in overrides:
        if key not in OVERRIDABLE[kind]:
            raise ValueError(f"--override {key}=... is not something a resumed {kind} run can change; it can change "
                             f"{', '.join(OVERRIDABLE[kind])}")
    train = config["train"]
    _refuse_options_of_other_kinds(args, config["model"], config.get("kind"))
    for key in [k for k in train if k != "epochs"] + ["eval_samples"]:
        value = _given(args, key)
        current = train.get(key) if key in train else config.get(key)
        if value is None or value == current or (key in overrides and overrides[key] == value):
            continue
        how = (f"or pass --override {key}={value} to change it from epoch {epoch + 1}" if key in OVERRIDABLE[kind]
               else "it cannot change on resume (start a new run to change it)")
        raise ValueError(f"{_flag(key)} {value} differs from the run's {current}; a resumed run keeps its settings: "
                         f"drop {_flag(key)}, {how}")
    if args.epochs is not None:
        train["epochs"] = args.epochs
    if args.device is not None:
        config["device"] = args.device
    for key, value in overrides.items():
        target = train if key in train or key != "eval_samples" else config
        config.setdefault("overrides", []).append(
            {"key": key, "value": value, "previous": target.get(key), "from_epoch": epoch + 1})
        target[key] = value
    return config


TARGET_OPTIONS = ("epochs", "batch_size", "lr", "optimizer", "weight_decay", "schedule", "lr_gamma", "clip_norm")
TARGET_DEFAULTS = {"epochs": 500, "batch_size": 256, "lr": 1e-2, "optimizer": "adam", "weight_decay": 0.0,
                   "schedule": "constant", "lr_gamma": Optim.lr_gamma, "clip_norm": 10.0}


def _target_config(args, card) -> dict[str, Any]:
    """A flow fitted to an energy target by reverse KL: ``--target`` (or the card's default target), checked."""
    from pprogen.models.flows import load_energy

    if card.kind != "flow":
        raise ValueError(f"--target fits flows by reverse KL; {args.model} is a {card.kind} model: train it on data")
    if _given(args, "data") is not None or _given(args, "limit") is not None:
        why = "has no closed-form inverse: it " if card.default_target else ""
        raise ValueError(f"{args.model} {why}fits an energy target by reverse KL (--target) and reads no data; drop "
                         "--data / --limit")
    if _given(args, "trainer") not in (None, "svi"):
        raise ValueError(f"--trainer {_given(args, 'trainer')} does not fit an energy target; drop it")
    stray = sorted(o.flag for o in TRAIN_OPTIONS if o.key not in TARGET_OPTIONS and _is_given(_given(args, o.key)))
    stray += [_flag(k) for k in SVI_ONLY if _is_given(_given(args, k))]
    if stray:
        raise ValueError(f"{', '.join(stray)} {'does' if len(stray) == 1 else 'do'} not apply to a reverse-KL fit (it "
                         "reads --epochs (optimizer steps), --batch-size (draws a step), --lr, --optimizer, "
                         "--weight-decay, --schedule, --lr-gamma, --clip-norm)")
    model_args = _model_args(args.set)
    model_args.setdefault("x_dim", 2)
    spec = args.target or card.default_target
    if isinstance(spec, str) and ":" in spec and spec.rsplit(":", 1)[0].endswith(".py"):
        path, fn = spec.rsplit(":", 1)
        spec = f"{Path(path).resolve()}:{fn}"  # the run resumes from anywhere
    load_energy(spec, model_args["x_dim"])  # a bad target is refused before anything is written
    train = {k: getattr(args, k, None) if getattr(args, k, None) is not None else v for k, v in TARGET_DEFAULTS.items()}
    if train["epochs"] < 1 or train["batch_size"] < 1:
        raise ValueError("--epochs (optimizer steps) and --batch-size (draws a step) must be at least 1")
    _refuse_a_factor_no_schedule_reads(args, train)
    return {"pprogen_version": __version__, "model": args.model, "kind": "flow", "model_args": model_args,
            "data": None, "target": spec, "trainer": "reverse_kl", "guide": "default", "train": train,
            "seed": 0 if args.seed is None else args.seed, "device": args.device or "auto",
            "eval_samples": 20000 if args.eval_samples is None else args.eval_samples, "flatten": False,
            "limit": None, "data_dir": None, "plate_name": None}


def _config_from_args(args) -> tuple[dict[str, Any], Dataset]:
    card = get_card(args.model)
    if _given(args, "target") is not None or card.default_target:
        return _target_config(args, card), None
    data_name = args.data or card.default_data
    dataset = load_dataset(data_name, args.data_dir).subset(args.limit)
    if data_name not in DATA_NAMES and Path(data_name).exists():  # a user file: keep an absolute path so the run resumes from anywhere
        data_name = str(Path(data_name).resolve())
    params = inspect.signature(card.factory).parameters
    model_args = _model_args(args.set)
    given = set(model_args)
    flatten = False
    if "x_dim" in params and "x_dim" not in model_args:
        model_args["x_dim"] = dataset.dim
        flatten = len(dataset.shape) > 1
    elif "x_shape" in params and "x_shape" not in model_args:
        model_args["x_shape"] = list(dataset.shape)
    if "num_classes" in params and "num_classes" not in model_args and dataset.num_classes:
        model_args["num_classes"] = dataset.num_classes
    if dataset.pairing and "x_shape" in params and "x_shape" not in given:  # one domain's image
        model_args["x_shape"] = [dataset.shape[0] // 2, *dataset.shape[1:]]
    if "bounded" in params and "bounded" not in model_args and dataset.is_image:
        model_args["bounded"] = True  # generated pixels in [0, 1]
    if "num_levels" in params and "num_levels" not in model_args and dataset.is_image:
        levels = intensity_levels(dataset.train)  # flows dequantize images on their own grid of levels
        if levels is None:
            raise DataError(
                f"{args.model} dequantizes images, but the pixels of {data_name!r} are not on a grid of evenly "
                "spaced levels in [0, 1]; pass --set num_levels=L for data with L levels"
            )
        model_args["num_levels"] = levels
    trainer, train = _trainer_settings(args, card)
    if train is None:
        defaults = {**(GAN_TRAIN_DEFAULTS if card.kind == "gan" else TRAIN_DEFAULTS), **card.train_defaults}
        _refuse_options_of_other_kinds(args, args.model, card.kind)
        train = {k: getattr(args, k, None) if getattr(args, k, None) is not None else v for k, v in defaults.items()}
        if "lr_gamma" in train:
            _refuse_a_factor_no_schedule_reads(args, train)
    config = {
        "pprogen_version": __version__,
        "model": args.model,
        "kind": card.kind,
        "model_args": model_args,
        "data": data_name,
        "data_dir": str(Path(args.data_dir).resolve()) if args.data_dir else None,
        "limit": args.limit,
        "flatten": flatten,
        "guide": args.guide or "default",
        "trainer": trainer,
        "train": train,
        "seed": 0 if args.seed is None else args.seed,
        "device": args.device or "auto",
        "eval_samples": 1000 if args.eval_samples is None else args.eval_samples,
        "plate_name": getattr(args, "plate_name", None),
    }
    return config, dataset


def _condition(model, dataset: Dataset, split: str, limit: int | None = None, device=None) -> dict[str, torch.Tensor]:
    """The per-datum keyword arguments a conditional model needs: the split's labels as ``y``."""
    if not capabilities(model).conditional:
        return {}
    labels = dataset.labels.get(split)
    if labels is None:
        raise DataError(f"{type(model).__name__.lower()} is conditioned on labels, but the {split!r} split of "
                        f"{dataset.name!r} has none; use a labelled data set (digits, digits_binary, mnist, ...)")
    return {"y": labels[:limit].to(device) if device is not None else labels[:limit]}


def evaluate_split(model, guide, dataset: Dataset, split: str, num_samples: int, device, run: Run | None = None,
              limit: int | None = None, world: distributed.World | None = None, method: str = "auto",
              **annealing) -> dict[str, Any]:
    """The split's score by :func:`pprogen.inference.evaluate`, as the dict summary.json holds; the k-hat
    picture of an importance-sampled score is saved in the run folder."""
    tag = "refined-" if annealing.get("refine") else ""  # its k-hat picture beside the guide's own
    return _summarize(_evaluation(model, guide, dataset, split, num_samples, device, run, limit, world, method,
                                  **annealing), split, run, world, method, tag)


def _evaluation(model, guide, dataset: Dataset, split: str, num_samples: int, device, run: Run | None = None,
                limit: int | None = None, world: distributed.World | None = None, method: str = "auto", **annealing):
    """:func:`pprogen.inference.evaluate` on the first ``limit`` rows of ``dataset``'s ``split``."""
    return evaluate(
        model, guide, dataset.split(split)[:limit].to(device), method=method, num_samples=num_samples,
        condition=_condition(model, dataset, split, limit, device), world=world or distributed.World(),
        plate_name=run.config.get("plate_name") if run is not None else None,
        dim=dataset.dim if dataset.binary else None, **annealing,
    )


def _summarize(evaluation, split: str, run: Run | None, world, method: str, tag: str = "") -> dict[str, Any]:
    world = world or distributed.World()
    result = dict(evaluation.summary)
    khat = getattr(evaluation.result, "khat", None)
    if run is not None and khat is not None and world.is_main:
        from pprogen.plots import save_khat

        result["khat_plot"] = f"khat-{tag}{split}.png"
        save_khat(khat, run.path / result["khat_plot"])
    if method in ("ais", "bdmc") and run is not None:
        result["inference_data"] = f"{method}-{split}.nc"
        atomic_write(run.path / result["inference_data"], evaluation.to_inference_data().to_netcdf)
    return result


def other_dataset(config: dict[str, Any], dataset: Dataset, name: str, data_dir: str | None = None) -> Dataset:
    """Another data set (a name or a file) prepared like the run's data (flattened when the run's was) and
    checked to be data the run's model scores: the same shape per example, binary when the model's data was,
    pixels on the model's grid of levels when it dequantizes. Refused in one line otherwise."""
    other = load_dataset(name, data_dir)
    if config.get("flatten"):
        other = other.flat()
    if tuple(other.shape) != tuple(dataset.shape):
        raise DataError(f"data set {other.name!r} has examples of shape {tuple(other.shape)}, but {config['model']} "
                        f"was trained on {config['data']!r} with examples of shape {tuple(dataset.shape)}; give data of "
                        "that shape")
    if dataset.binary and not other.binary:
        raise DataError(f"{config['model']} was trained on binary data ({config['data']!r}) and scores 0/1 values, "
                        f"but {other.name!r} is not binary; binarize it first (for example threshold it at 0.5)")
    levels = config["model_args"].get("num_levels")
    if levels:
        found = intensity_levels(torch.cat([t for t in (other.train, other.valid, other.test) if t is not None]))
        if found is None or (levels - 1) % (found - 1):
            raise DataError(f"{config['model']} dequantizes pixels on {levels} levels, but the pixels of "
                            f"{other.name!r} are {'not on such a grid' if found is None else f'on {found} levels'}; "
                            f"quantize them to {levels} levels first")
    return other


def _some_split(dataset: Dataset, split: str) -> str:
    """``split`` when ``dataset`` has it, else its first of test, valid, train."""
    if getattr(dataset, split) is not None:
        return split
    return next(s for s in ("test", "valid", "train") if getattr(dataset, s) is not None)


def reference_split(dataset: Dataset, split: str) -> str:
    """The held-out split that estimates the model's entropy for a typicality test of ``split``: the other of
    valid and test when the data has it, else train."""
    for candidate in {"test": ("valid", "train"), "valid": ("test", "train"), "train": ("valid", "test")}[split]:
        if getattr(dataset, candidate) is not None:
            return candidate
    raise DataError(f"data set {dataset.name!r} has only its {split!r} split; the typicality test needs a second, "
                    "held-out split of in-distribution data to estimate the entropy")


def ood_split(model, guide, dataset: Dataset, other: Dataset, split: str, num_samples: int, device,
              run: Run | None = None, limit: int | None = None, world=None, batch: int = 1):
    """Out-of-distribution scores of ``other`` against ``dataset``'s ``split`` (in-distribution test data): the
    per-input log-likelihoods of both and of a held-out in-distribution split (the entropy estimate), by
    :func:`pprogen.inference.evaluate`. Returns ``(summary dict, OODReport)``."""
    from pprogen.inference.ood import ood_report

    caps = capabilities(model)
    if caps.stated_likelihood:
        raise ValueError("a VAE-GAN is trained adversarially, not on its stated likelihood: outlier scores are offered "
                         "for models trained on their likelihood")
    if caps.adversarial or caps.reconstruction:
        kind = "a GAN" if caps.adversarial else "an autoencoder"
        raise ValueError(f"{kind} has no likelihood: it cannot score inputs as in or out of distribution")
    reference, other_split = reference_split(dataset, split), _some_split(other, split)
    parts = [(dataset, split), (other, other_split), (dataset, reference)]
    evaluations = [_evaluation(model, guide, d, s, num_samples, device, run, limit, world) for d, s in parts]
    report = ood_report(*(e.log_prob for e in evaluations), batch=batch)
    result = {**report.summary(), "method": evaluations[0].description,
              "in": f"{dataset.name}/{split}", "out": f"{other.name}/{other_split}",
              "reference": f"{dataset.name}/{reference}"}
    if evaluations[0].method == "is":
        result["num_samples"] = num_samples
    return result, report


def format_ood(result: dict[str, Any]) -> str:
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


def disentanglement(model, guide, dataset: Dataset, device) -> dict[str, Any] | None:
    """MIG and the FactorVAE score (:mod:`pprogen.inference.disentanglement`) of the guide's posterior means of
    every image of a data set with known factors (``sprites``); None for other data and for models without a
    latent space and a guide."""
    if not dataset.factors or guide is None or getattr(model, "latent_site", None) is None:
        return None
    from pprogen.inference.disentanglement import factor_vae_score, mig
    from pprogen.latent import posterior_moments

    splits = [s for s in ("train", "valid", "test") if getattr(dataset, s) is not None and s in dataset.factors]
    codes = []
    with torch.no_grad():
        for split in splits:
            x = dataset.split(split).to(device)
            condition = _condition(model, dataset, split, None, device)
            codes.append(torch.cat([posterior_moments(model, guide, x[i:i + 1000],
                                                      {k: v[i:i + 1000] for k, v in condition.items()})[0]
                                    for i in range(0, x.shape[0], 1000)]).cpu())
    codes = torch.cat(codes).reshape(sum(c.shape[0] for c in codes), -1)
    factors = torch.cat([dataset.factors[s] for s in splits])
    gap, per_factor = mig(codes, factors)
    return {"mig": gap, "mig_per_factor": dict(zip(dataset.factor_names, per_factor.tolist())),
            "factor_vae_score": factor_vae_score(codes, factors), "num_data": codes.shape[0],
            "codes": f"the guide's posterior means at {model.latent_site!r}"}


def format_disentanglement(result: dict[str, Any]) -> str:
    parts = ", ".join(f"{k} {v:.2f}" for k, v in result["mig_per_factor"].items())
    return (f"disentanglement ({result['codes']}, {result['num_data']} images): MIG {result['mig']:.3f} ({parts}), "
            f"FactorVAE score {result['factor_vae_score']:.3f}")


def _pictures(run: Run, model, guide, dataset: Dataset, device,
              curve_label: str = "negative ELBO per datum (nats)") -> list[str]:
    from pprogen import plots

    made = []
    caps = capabilities(model)
    if caps.fitted_network:  # a Bayesian network: its learned tables say more than samples
        network = model.fitted_network(guide)
        run.write_json("network.json", network.to_spec())
        atomic_write(run.path / "network.txt", lambda tmp: Path(tmp).write_text(network.describe() + "\n"))
        made += ["network.json", "network.txt"]
    elif hasattr(model, "sample"):
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
        made.append("samples.png")
    if hasattr(model, "reconstruct") and dataset.is_image:
        split = "valid" if dataset.valid is not None else "train"
        x = dataset.split(split)[:12].to(device)
        recon = model.reconstruct(x, guide, **_condition(model, dataset, split, 12, device))
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


def _alpha(train: dict[str, Any]) -> dict[str, Any]:
    return {} if train.get("alpha") is None else {"alpha": train["alpha"]}


def _materialize(guide, x: torch.Tensor, **condition) -> None:
    """Run a lazily built guide (amortized, auto_*) once so that its parameters exist."""
    if isinstance(guide, torch.nn.Module):
        with torch.no_grad(), pyro.poutine.block():
            guide(x, **condition)


def _finished(config: dict[str, Any], checkpoint: dict[str, Any]) -> str | None:
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


class _SVISession:
    """Training by SVI (:func:`~pprogen.inference.fit`): the model, its guide and the estimator, checked."""

    banner = ""

    def __init__(self, config: dict[str, Any], dataset: Dataset | None, device, world, progress: bool,
                 resumed: bool) -> None:
        train = self.train_settings = config["train"]
        self.estimator = make_elbo(train["elbo"], num_particles=train["particles"], beta=train["beta"], **_alpha(train))
        seed_everything(config["seed"])  # the initial weights too come from --seed
        self.config, self.device, self.world, self.progress = config, device, world, progress
        self.dataset, self.model, self.guide = build(config, dataset)
        # the settings, the data and the model's fit to it are checked once, by fit, before the run's first write
        self.condition = _condition(self.model, self.dataset, "train")
        self.valid_condition = _condition(self.model, self.dataset, "valid") if self.dataset.valid is not None else None
        if not resumed and hasattr(self.model, "init_from_data"):  # mixtures: components start at data points
            self.model.init_from_data(self.dataset.train)

    def train(self, run: Run | None, resume):
        train, dataset = self.train_settings, self.dataset
        return fit(
            self.model, self.guide, dataset.train, valid_data=dataset.valid, epochs=train["epochs"],
            batch_size=train["batch_size"],
            optim=Optim(train["optimizer"], train["lr"], train.get("weight_decay", 0.0), train["schedule"],
                        train.get("lr_gamma", Optim.lr_gamma), clip_norm=train["clip_norm"], ema=train.get("ema", 0.0)),
            objective=Objective(self.estimator, train["particles"], train["beta"], train.get("kl_warmup", 0),
                                train.get("alpha")),
            stopping=Stopping(patience=train["patience"] if dataset.valid is not None else None),
            speed=Speed(train.get("autocast"), train.get("compile", False), train.get("fast_path", True)),
            device=self.device, seed=self.config["seed"], progress=self.progress, run=run, resume=resume,
            condition=self.condition, valid_condition=self.valid_condition, world=self.world,
            plate_name=self.config.get("plate_name"),
        )

    def history_summary(self, history) -> dict[str, Any]:
        return {"best_epoch": history.best_epoch,
                "best_valid_loss": history.best_valid_loss if history.best_epoch else None}

    def evaluate(self, split: str, run: Run | None) -> dict[str, Any]:
        result = evaluate_split(self.model, self.guide, self.dataset, split, self.config.get("eval_samples", 1000),
                                self.device, run, world=self.world)
        scores = disentanglement(self.model, self.guide, self.dataset, self.device) if self.world.is_main else None
        if scores is not None:
            result["disentanglement"] = scores
        return result

    def pictures(self, run: Run, split: str) -> list[str]:
        return _pictures(run, self.model, self.guide, self.dataset, self.device)

    def format(self, split: str, result: dict[str, Any]) -> str:
        text = _format_eval(split, result)
        if "disentanglement" in result:
            text += "\n" + format_disentanglement(result["disentanglement"])
        return text


def _classic_setup(session, config: dict[str, Any], dataset: Dataset | None, device, world, trainer: str,
                   refusal: str):
    """The shared start of the EM and NUTS sessions: one process, the seed, the run's data and model, and the
    model's capability for ``trainer`` (``refusal`` otherwise). Returns ``build``'s (dataset, model, guide)."""
    if world.active:
        raise ValueError(f"--trainer {trainer} runs in one process; run it without torchrun")
    seed_everything(config["seed"])
    session.config, session.device, session.world, session.train_settings = config, device, world, config["train"]
    built = build(config, dataset)
    if not getattr(capabilities(built[1]), trainer):
        raise ValueError(refusal)
    return built


class _EMSession:
    """Closed-form expectation-maximization (the model's ``fit_em``): one EM iteration an epoch, from components
    started at data points; stops when an iteration raises the training log-likelihood by less than 1e-7 of it."""

    banner = ", EM"

    def __init__(self, config: dict[str, Any], dataset: Dataset | None, device, world, progress: bool,
                 resumed: bool) -> None:
        self.dataset, self.model, self.guide = _classic_setup(
            self, config, dataset, device, world, "em", f"{config['model']} has no closed-form EM; --trainer em fits "
            "gmm and mixture_of_bernoullis (train this model with --trainer svi)")
        if _condition(self.model, self.dataset, "train"):
            raise ValueError(f"--trainer em does not fit conditional models such as {config['model']}")
        self.model.to(device)
        if not resumed:
            self.model.init_from_data(self.dataset.train.to(device))

    def train(self, run: Run | None, resume):
        from pprogen.inference.train import _save_weights
        from pprogen.runs import rng_state, set_rng_state

        model, history, start = self.model, History(), 0
        if resume:
            state = resume if isinstance(resume, dict) else run.load_checkpoint()
            if "em_model" not in state:
                raise RunError(f"{run.path} was not trained by EM; resume it without --trainer")
            model.load_state_dict(state["em_model"])
            history = History(**state["history"])
            set_rng_state(state["rng"])
            start = state["epoch"]
        x = self.dataset.train.to(self.device)
        valid = self.dataset.valid.to(self.device) if self.dataset.valid is not None else None

        def save(epoch: int) -> None:
            if run is not None:
                run.save_checkpoint({"epoch": epoch, "em_model": model.state_dict(), "history": history.state(),
                                     "rng": rng_state()})
                run.write_metrics(history.records)
                _save_weights(run, model, self.guide)

        previous = history.records[-1]["train_loss"] if history.records else None
        history.stop_reason = "finished"
        for it in range(start, self.train_settings["epochs"]):
            started = time.perf_counter()
            with torch.no_grad():
                model.fit_em(x, 1)
                train_nll = -model.log_prob(x).double().mean().item()
                valid_nll = -model.log_prob(valid).double().mean().item() if valid is not None else None
            history.records.append({"epoch": it + 1, "train_loss": train_nll, "valid_loss": valid_nll,
                                    "seconds": time.perf_counter() - started})
            if valid_nll is not None and valid_nll < history.best_valid_loss:
                history.best_epoch, history.best_valid_loss = it + 1, valid_nll
            if not math.isfinite(train_nll):
                history.stop_reason = "non_finite"
                save(it + 1)
                raise NonFiniteLossError(f"EM iteration {it + 1} gave a non-finite log-likelihood; check the data",
                                         history)
            converged = previous is not None and previous - train_nll < 1e-7 * abs(train_nll)
            previous = train_nll
            if converged:
                history.stop_reason = "converged"
            if (it + 1) % 10 == 0 or converged or it + 1 == self.train_settings["epochs"]:
                save(it + 1)
            if converged:
                break
        return history

    def history_summary(self, history) -> dict[str, Any]:
        return {"em_iterations": len(history.records)}

    def evaluate(self, split: str, run: Run | None) -> dict[str, Any]:
        return evaluate_split(self.model, self.guide, self.dataset, split, self.config.get("eval_samples", 1000),
                              self.device, run, world=self.world)

    def pictures(self, run: Run, split: str) -> list[str]:
        return _pictures(run, self.model, self.guide, self.dataset, self.device,
                         curve_label="negative log-likelihood per datum (nats), one EM iteration an epoch")

    def format(self, split: str, result: dict[str, Any]) -> str:
        return _format_eval(split, result)


class _NUTSSession:
    """NUTS over a model's global latents (its ``posterior``): the draws are kept (``posterior.safetensors``, as
    the guide :class:`~pprogen.inference.guides.PosteriorDraws` replays them), with ArviZ's summary
    (``posterior_summary.csv``), the chains (``posterior.nc``) and their trace picture (``trace.png``)."""

    banner = ", NUTS"

    def __init__(self, config: dict[str, Any], dataset: Dataset | None, device, world, progress: bool,
                 resumed: bool) -> None:
        self.dataset, self.model, _ = _classic_setup(
            self, config, dataset, device, world, "nuts", f"{config['model']} has no NUTS posterior over global "
            "latents; --trainer nuts samples bayesian_gmm (train this model with --trainer svi)")
        self.model.to(device)
        self.guide = None
        self.summary: dict[str, Any] = {}

    def train(self, run: Run | None, resume):
        import arviz as az
        from safetensors.torch import save_file

        from pprogen.inference.guides import PosteriorDraws

        s = self.train_settings
        started = time.perf_counter()
        idata, mcmc = self.model.posterior(self.dataset.train.to(self.device), num_samples=s["num_samples"],
                                           warmup_steps=s["warmup_steps"], num_chains=s["num_chains"],
                                           seed=self.config["seed"])
        draws = {k: v.detach().cpu().contiguous() for k, v in mcmc.get_samples().items()}
        self.guide = PosteriorDraws(draws).to(self.device)
        table = az.summary(idata, var_names=sorted(draws))
        divergences = int(idata.sample_stats["diverging"].values.sum()) if "diverging" in idata.sample_stats else 0
        def finite(value) -> float | None:  # r_hat needs two chains: NaN (JSON null) with one
            return float(value) if math.isfinite(float(value)) else None

        self.summary = {"draws": next(iter(draws.values())).shape[0], "chains": s["num_chains"],
                        "divergences": divergences, "r_hat_max": finite(table["r_hat"].max()),
                        "ess_bulk_min": finite(table["ess_bulk"].min())}
        self.table = table
        history = History(records=[{"epoch": 1, "train_loss": None, "valid_loss": None,
                                    "seconds": time.perf_counter() - started}])
        if run is not None:
            run.materialize()
            atomic_write(run.path / "posterior.safetensors", lambda tmp: save_file(draws, tmp))
            run.save_weights("model", self.model)  # its constants (the priors' settings)
            atomic_write(run.path / "posterior_summary.csv", lambda tmp: table.to_csv(tmp))
            atomic_write(run.path / "posterior.nc", idata.to_netcdf)
            run.write_metrics(history.records)
        return history

    def history_summary(self, history) -> dict[str, Any]:
        return dict(self.summary)

    def evaluate(self, split: str, run: Run | None) -> dict[str, Any]:
        return evaluate_split(self.model, self.guide, self.dataset, split, self.config.get("eval_samples", 1000),
                              self.device, run, world=self.world)

    def pictures(self, run: Run, split: str) -> list[str]:
        from pprogen import plots

        plots.save_trace(run.path / "posterior.nc", run.path / "trace.png",
                         title=f"{self.config['model']}: NUTS chains ({self.summary['draws']} draws)")
        samples = self.model.sample(2500 if tuple(self.dataset.shape) == (2,) else 64, guide=self.guide)
        plots.save_samples(samples, self.dataset.image_shape or self.dataset.shape, run.path / "samples.png",
                           title=f"{self.config['model']}: posterior predictive draws (one NUTS draw of the globals)")
        return ["trace.png", "samples.png"]

    def format(self, split: str, result: dict[str, Any]) -> str:
        s = self.summary
        r_hat = "n/a with one chain" if s["r_hat_max"] is None else f"{s['r_hat_max']:.3f}"
        ess = "n/a" if s["ess_bulk_min"] is None else f"{s['ess_bulk_min']:.0f}"
        return (f"NUTS: {s['draws']} draws, {s['divergences']} divergent transitions, max r_hat {r_hat}, "
                f"min bulk ESS {ess} (ArviZ summary in posterior_summary.csv)\n"
                + _format_eval(split, result))


def target_dataset(dim: int) -> Dataset:
    """A placeholder data set for a reverse-KL fit: its rows only set how many draws of the flow a step takes."""
    return Dataset("target", torch.zeros(2, dim), None, None, (dim,), False)


def reverse_kl_evaluation(model, target_spec: str, num_samples: int) -> dict[str, Any]:
    """A flow fitted to p(z) ∝ exp(-U(z)): the ELBO E_q[-U(z) - log q(z)] from ``num_samples`` draws (with its
    standard error), log Z by quadrature on [-6, 6]^2 for 2-D targets, and KL(q || p) = log Z - ELBO."""
    from pprogen.models.flows import load_energy

    dim = model.x_shape[0]
    energy = load_energy(target_spec, dim)
    with torch.no_grad():
        z, log_q = model.sample_with_log_prob(num_samples)
        lw = (-energy(z) - log_q).double()
    result = {"method": "reverse KL to an energy target", "target": target_spec, "num_samples": num_samples,
              "elbo": lw.mean().item(), "elbo_stderr": (lw.std() / num_samples ** 0.5).item(),
              "log_z_importance": (torch.logsumexp(lw, 0) - math.log(num_samples)).item()}
    if dim == 2:
        xs = torch.linspace(-6, 6, 1201, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
        with torch.no_grad():
            u = torch.cat([energy(chunk.float()).double() for chunk in grid.split(200000)])
        result["log_z_quadrature"] = (torch.logsumexp(-u, 0) + 2 * math.log(xs[1] - xs[0])).item()
        result["kl"] = result["log_z_quadrature"] - result["elbo"]
    return result


def format_reverse_kl(result: dict[str, Any]) -> str:
    text = (f"target {result['target']}: ELBO {result['elbo']:.4f} ± {result['elbo_stderr']:.4f} nats "
            f"({result['num_samples']} draws of the flow)")
    if "kl" in result:
        text += f"; log Z {result['log_z_quadrature']:.4f} by quadrature, KL(q || p) = {result['kl']:.4f} nats"
    return text + f"; importance-sampled log Z {result['log_z_importance']:.4f}"


class _TargetSession:
    """A flow fitted by reverse KL to an energy target p(z) ∝ exp(-U(z)) (``--target``): the target is a Pyro model
    (:class:`~pprogen.models.flows.EnergyTarget`), the flow its guide, and :func:`~pprogen.inference.fit` maximizes
    the ELBO = log Z - KL(q || p); one epoch is one optimizer step on ``batch_size`` draws."""

    banner = ", reverse KL to an energy target"

    def __init__(self, config: dict[str, Any], dataset: Dataset | None, device, world, progress: bool,
                 resumed: bool) -> None:
        from pprogen.models.flows import EnergyTarget, load_energy

        if world.active:
            raise ValueError("a reverse-KL fit runs in one process; run it without torchrun")
        seed_everything(config["seed"])
        self.config, self.device, self.world, self.progress = config, device, world, progress
        self.train_settings = config["train"]
        self.model = create_model(config["model"], **config["model_args"])
        dim = self.model.x_shape[0]
        self.target = EnergyTarget(load_energy(config["target"], dim), dim)
        self.guide = self.model.as_guide("z")
        self.dataset = target_dataset(dim)

    def train(self, run: Run | None, resume):
        t = self.train_settings
        draws = torch.zeros(t["batch_size"], self.model.x_shape[0])
        return fit(self.target, self.guide, draws, epochs=t["epochs"], batch_size=t["batch_size"],
                   optim=Optim(t["optimizer"], t["lr"], t["weight_decay"], t["schedule"], t.get("lr_gamma", Optim.lr_gamma),
                               clip_norm=t["clip_norm"], ema=t.get("ema", 0.0)),
                   stopping=Stopping(patience=None), device=self.device, seed=self.config["seed"],
                   progress=self.progress, run=run, resume=resume, world=self.world)

    def history_summary(self, history) -> dict[str, Any]:
        return {"steps": len(history.records)}

    def evaluate(self, split: str, run: Run | None) -> dict[str, Any]:
        return reverse_kl_evaluation(self.model, self.config["target"], self.config.get("eval_samples", 20000))

    def pictures(self, run: Run, split: str) -> list[str]:
        from pprogen import plots
        from pprogen.models.flows import load_energy

        made = []
        if self.model.x_shape[0] == 2:
            with torch.no_grad():
                samples = self.model.sample(100000)
            plots.save_target_fit(load_energy(self.config["target"], 2), samples, run.path / "density.png",
                                  title=f"{self.config['model']} fitted to {Path(str(self.config['target'])).name} "
                                        "by reverse KL")
            made.append("density.png")
        plots.save_curves(run.read_metrics(), run.path / "curves.png", keys=("train_loss",),
                          ylabel="negative ELBO per draw (nats) = KL(q || p) - log Z",
                          title=f"{self.config['model']}: reverse-KL fit, one optimizer step an epoch")
        return made + ["curves.png"]

    def format(self, split: str, result: dict[str, Any]) -> str:
        return format_reverse_kl(result)


class _AdversarialSession:
    """Training by :class:`~pprogen.inference.AdversarialTrainer`: a grid of samples each epoch (and the
    modes found, on the 2-D mixtures), sample metrics at the end."""

    def __init__(self, config: dict[str, Any], dataset: Dataset | None, device, world, progress: bool,
                 resumed: bool) -> None:
        from pprogen.data import MODES

        train = self.train_settings = config["train"]
        seed_everything(config["seed"])
        if dataset is None:
            dataset = load_dataset(config["data"], config.get("data_dir")).subset(config.get("limit"))
        self.dataset = dataset.flat() if config.get("flatten") else dataset
        self.model = create_model(config["model"], **config["model_args"])
        self.trainer = _gan_trainer(self.model, train, device, config["seed"], progress, world)  # checks the settings
        self.condition = _condition(self.model, self.dataset, "train")  # the data: checked by the trainer's fit
        self.config, self.device, self.world = config, device, world
        self.modes = MODES.get(self.dataset.name) if not self.dataset.is_image else None
        self.banner = f", {train['loss']} loss"

    def train(self, run: Run | None, resume):
        from pprogen.inference.metrics import mode_metrics

        def each_epoch(epoch: int, record: dict) -> None:
            run.materialize()  # the folder and config.json before the first picture
            if self.modes is not None:
                with torch.no_grad():
                    found = mode_metrics(self.model.sample(2500), *self.modes)
                record.update(modes=found["modes"], high_quality=found["high_quality"])
            _gan_pictures(run, self.model, self.dataset, self.device, run.path / "grids" / f"epoch-{epoch:03d}.png")

        return self.trainer.fit(self.dataset, epochs=self.train_settings["epochs"], condition=self.condition, run=run,
                                resume=resume, callback=each_epoch if run is not None else None)

    def history_summary(self, history) -> dict[str, Any]:
        return {}

    def evaluate(self, split: str, run: Run | None) -> dict[str, Any]:
        if not self.world.is_main:  # the sample-based metrics run on rank 0 alone
            return {}
        return gan_evaluation(self.model, self.dataset, split, self.config.get("eval_samples", 2500), self.device, run)

    def pictures(self, run: Run, split: str) -> list[str]:
        from pprogen import plots

        _gan_pictures(run, self.model, self.dataset, self.device, run.path / "samples.png", split)
        plots.save_curves(run.read_metrics(), run.path / "curves.png", ylabel="loss per step",
                          keys=("d_loss", "g_adv", "cycle", "l1", "high_quality", "feature_nll", "kl"))
        made = ["samples.png", "curves.png", "grids"]
        if capabilities(self.model).style_mixing:
            made += style_pictures(self.model, run.path, run.config["model"])
        return made

    def format(self, split: str, result: dict[str, Any]) -> str:
        return _format_gan_eval(result)


def gan_evaluation(model, dataset: Dataset, split: str, num_samples: int, device, run: Run | None = None,
                   limit: int | None = None, num_particles: int = 1000) -> dict[str, Any]:
    """A GAN's sample metrics on ``split`` from ``num_samples`` samples; a model that also states a likelihood
    (VAE-GAN) adds its importance-sampled NLL with its own guide (``num_particles`` per row)."""
    result = evaluate_samples(model, dataset.subset(limit), split, num_samples, device)
    if capabilities(model).stated_likelihood:
        was = model.training
        model.eval()
        try:
            scored = evaluate_split(model, model.default_guide(), dataset, split, num_particles, device, run, limit)
        finally:
            model.train(was)
        result["likelihood"] = scored
    return result


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


def _ranks(world: distributed.World) -> str:
    return f", {world.size} ranks" if world.active else ""


def _gan_trainer(model, train: dict[str, Any], device, seed: int, progress: bool, world=None):
    from pprogen.inference.adversarial import AdversarialTrainer

    return AdversarialTrainer(
        model, loss=train["loss"], critic_steps=train["critic_steps"], lr_g=train["lr"], lr_d=train["lr_d"],
        betas=tuple(train["betas"]), gp_weight=train["gp_weight"], r1_weight=train["r1_weight"],
        spectral_norm=train["spectral_norm"], ema=train["ema"], schedule=train["schedule"],
        batch_size=train["batch_size"], device=device, seed=seed, progress=progress, world=world,
        autocast=train.get("autocast"), compile=train.get("compile", False),
    )


def _gan_pictures(run: Run, model, dataset: Dataset, device, path: Path, split: str = "valid") -> None:
    """Samples over the data (2-D), a sample grid (images) or source / translation / target rows."""
    from pprogen import plots

    torch.manual_seed(0)  # the same noise every epoch, so the grids show training progress
    if translates(model):
        a, b = model.split(dataset.split(split)[:12].to(device))
        rows, labels = [a, model.sample(12, a)], ["A (source)", "G_ab(A)"]
        if dataset.pairing == "paired":
            rows, labels = rows + [b], labels + ["B (target)"]
        elif "ba" in model.generator:
            rows, labels = rows + [b, model.sample(12, b, "ba")], labels + ["B (source)", "G_ba(B)"]
        plots.save_translations(rows, labels, path)
        return
    what = "decoder means E[x | z]" if capabilities(model).stated_likelihood else "x = G(z)"
    title, columns, n = f"{run.config['model']}: {what}, z ~ N(0, I)", None, 64 if dataset.is_image else 2500
    if capabilities(model).conditional and dataset.is_image:  # labels 0..K-1 in turn: one class a column
        columns = model.num_classes
        n = columns * max(1, 64 // columns)
        title += f"; column j shows class j (0 to {columns - 1})"
    samples = model.sample(n)
    plots.save_samples(samples, dataset.image_shape or dataset.shape, path, title=title, columns=columns)


def load_run(path: str, device: torch.device | None = None, data_dir: str | None = None, need_data: bool = True):
    """The run folder, its config, data, model and guide with their weights, on ``device`` (by default the
    run's own ``--device``). ``data_dir`` replaces the folder the run read its data from; without ``need_data``
    a shipped run (see :func:`ship_run`) is built from the data's shapes alone, and its data set has no rows."""
    run = Run.open(path)
    config = run.config_with(*REQUIRED)
    if data_dir is not None:
        config = {**config, "data_dir": str(data_dir)}
    device = resolve_device(config.get("device", "auto")) if device is None else device
    if config.get("trainer") == "reverse_kl":  # a flow fitted to an energy target: no data, the flow is the guide
        model = create_model(config["model"], **config["model_args"])
        guide = model.as_guide("z")
        run.load_weights("guide", guide)
        return run, config, target_dataset(model.x_shape[0]), model.to(device).eval(), guide, device
    dataset = None if need_data else _shapes_only(config)
    if dataset is None:
        dataset = load_dataset(config["data"], config.get("data_dir")).subset(config.get("limit"))
    if config.get("kind") == "gan":
        from pprogen.nn import apply_spectral_norm

        dataset = dataset.flat() if config.get("flatten") else dataset
        model = create_model(config["model"], **config["model_args"])
        if config["train"].get("spectral_norm"):
            apply_spectral_norm(model.discriminator)
        run.load_weights("model", model)
        model = model.to(device).eval()
        guide = model.default_guide() if capabilities(model).stated_likelihood else None  # VAE-GAN: its encoder
        return run, config, dataset, model, guide, device
    dataset, model, guide = build(config, dataset)
    if config.get("trainer") == "nuts":  # the guide replays the run's NUTS draws
        from safetensors.torch import load_file

        from pprogen.inference.guides import PosteriorDraws

        path = run.path / "posterior.safetensors"
        if not path.is_file():
            raise RunError(f"{path} is missing: the NUTS run did not finish; start it again")
        guide = PosteriorDraws(load_file(path))
    else:
        _materialize(guide, dataset.train[:2], **_condition(model, dataset, "train", 2))
        run.load_weights("guide", guide)
    run.load_weights("model", model)
    for part in (model, guide):
        if isinstance(part, torch.nn.Module):
            part.to(device).eval()
    return run, config, dataset, model, guide, device


def _shapes_only(config: dict[str, Any]) -> Dataset | None:
    """A data set of two blank rows shaped like a shipped run's data (None for other runs)."""
    shapes = config.get("shipped", {}).get("data")
    if not shapes:
        return None
    shape, image = tuple(shapes["shape"]), shapes.get("image_shape")
    labels = {"train": torch.zeros(2, dtype=torch.long)} if shapes.get("num_classes") else {}
    return Dataset(config["data"], torch.zeros(2, *shape), None, None, shape, shapes["binary"], labels,
                   shapes.get("num_classes"), tuple(image) if image else None)


def ship_run(path: str, out: str, half: bool = True, data_dir: str | None = None, int8: bool = False) -> dict[str, Any]:
    """A small copy of a trained run that others evaluate and sample without training: ``config.json`` (without
    the machine's data folder, with the data's shapes, so ``pprogen sample`` needs no data), the model's and
    guide's weights (float16 with ``half``, where no value overflows; with ``int8`` matrices and kernels as int8
    with a float32 scale per block of 256 entries, about half float16's size: score the copy before trusting it;
    buffers that the config rebuilds exactly, such as masks and orderings, left out with their digests, checked
    when the folder is read), and the run's
    training summary. ``out`` must not exist; it appears whole or not at all. Returns the sizes written."""
    import shutil

    target = Path(out)
    if target.exists():
        raise RunError(f"{target} exists; remove it or choose another folder to ship {path} to")
    trainer = Run.open(path).config_with(*REQUIRED).get("trainer")
    if trainer == "nuts":
        raise RunError(f"{path} holds NUTS draws (posterior.safetensors), not weights; copy the run folder instead")
    if trainer == "reverse_kl":
        raise RunError(f"{path} is a flow fitted to an energy target, not a likelihood of data; copy the run folder")
    run, config, dataset, model, guide, _ = load_run(path, torch.device("cpu"), data_dir)
    if config.get("kind") in ("gan", "autoencoder") or translates(model):
        if capabilities(model).stated_likelihood:
            raise RunError(f"{path} is a run of {config['model']}, which is trained adversarially, not on its stated "
                           "likelihood; only models trained on their likelihood ship this way (copy the run folder)")
        raise RunError(f"{path} is a run of {config['model']}, which has no likelihood; only models with a likelihood "
                       "ship this way (copy the run folder instead)")
    with torch.random.fork_rng():  # masks and orderings are drawn from their own seeds; the stream is kept
        _, fresh_model, fresh_guide = build(config, dataset)
        _materialize(fresh_guide, dataset.train[:2], **_condition(fresh_model, dataset, "train", 2))
    shipped = {k: v for k, v in config.items() if k != "data_dir"}
    shipped["shipped"] = {"dtype": "int8" if int8 else "float16" if half else "float32", "data": {
        "shape": list(dataset.shape), "image_shape": list(dataset.image_shape) if dataset.image_shape else None,
        "binary": dataset.binary, "num_classes": dataset.num_classes}}
    summary = {k: v for k, v in run.read_json("summary.json").items() if not k.endswith(("_evaluation", "_ais", "_bdmc")) and k not in ("evaluations", "ood")}
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.{time.time_ns()}.partial"
    staging.mkdir()
    try:
        copy = Run.create(shipped, staging)
        sizes = {}
        for name, part, fresh in (("model", model, fresh_model), ("guide", guide, fresh_guide)):
            if isinstance(part, torch.nn.Module) and part.state_dict():
                copy.save_weights(name, part, *compact_weights(part, fresh, half, int8))
                sizes[name] = (staging / f"{name}.safetensors").stat().st_size
        copy.write_json("summary.json", summary)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sizes


def _format_eval(split: str, result: dict[str, Any]) -> str:
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
    return text


def _format_gan_eval(result: dict[str, Any]) -> str:
    parts = []
    if "modes" in result:
        parts.append(f"modes {result['modes']}/{result['num_modes']}, high quality {100 * result['high_quality']:.1f}%, "
                     f"reverse KL {result['reverse_kl']:.4f}")
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
        text += "\n" + _format_eval(result["split"], result["likelihood"])
    return text


def prepare_run(options) -> tuple[dict[str, Any], Dataset | None, Run | None, dict[str, Any] | None, str | None]:
    """``(config, dataset, run, checkpoint, finished)`` from the ``pprogen train`` options (an argparse
    namespace or any object with those attributes): a new run's settings, or with ``options.resume`` the
    run's own, checked against the options given; ``finished`` says why a resumed run has nothing to train."""
    if options.resume:
        run = Run.open(options.resume)
        if run.config_with(*REQUIRED).get("trainer") == "nuts":
            raise ValueError(f"{run.path.name} holds NUTS draws, which do not resume; start a new run with more "
                             "--draws")
        checkpoint = run.load_checkpoint()  # a damaged checkpoint is reported before anything is written
        config = _resume_config(options, run, checkpoint["epoch"])
        return config, None, run, checkpoint, _finished(config, checkpoint)
    if options.override:
        raise ValueError("--override changes a setting of a resumed run; for a new run give the option itself "
                         "(e.g. --lr 0.01)")
    config, dataset = _config_from_args(options)
    return config, dataset, None, None, None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training, with the one line to tell the user (None on the ranks that do not write)."""

    def __init__(self, message: str | None) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Trained:
    """What :func:`train_run` did: the run folder (None on ranks that do not write), the session (model,
    guide, data), the history, the seconds it trained, ``summary.json``'s content and the pictures written."""

    run: Run | None
    session: Any
    history: History
    seconds: float
    summary: dict[str, Any]
    split: str
    pictures: list[str]


def train_run(config: dict[str, Any], dataset: Dataset | None = None, run: Run | None = None,
              checkpoint: dict[str, Any] | None = None, out: str | Path | None = None, progress: bool = True,
              dist_timeout: float = distributed.DEFAULT_TIMEOUT, announce=print) -> Trained:
    """Train the run ``config`` describes, with the trainer its model's kind calls for, set up and checked
    before anything is written; a resumed ``run`` continues from ``checkpoint``. Then the evaluation, the
    pictures and ``summary.json``. ``announce`` gets the one line that says what trains where."""
    world, device = distributed.init(config["device"], dist_timeout)
    resumed = run is not None
    sessions = {"svi": _SVISession, "adversarial": _AdversarialSession, "em": _EMSession, "nuts": _NUTSSession,
                "reverse_kl": _TargetSession}
    trainer = config.get("trainer") or ("adversarial" if config.get("kind") == "gan" else "svi")
    session = sessions[trainer](config, dataset, device, world, progress=progress, resumed=resumed)
    if world.is_main:  # only rank 0 writes
        if run is None:  # written at the first write: a trainer that refuses the data leaves nothing on disk
            run = Run.create(config, out, lazy=True)
        else:
            run.stage_config(config)  # written at the first write, after the trainer's checks
        if config.get("trainer") == "reverse_kl":
            announce(f"training {config['model']} on energy target {config['target']} ({config['train']['batch_size']} "
                     f"draws a step{session.banner}) -> {run.path}")
        else:
            announce(f"training {config['model']} on {config['data']} ({session.dataset.train.shape[0]} examples"
                     f"{_ranks(world)}{session.banner}) -> {run.path}")
    else:
        run = None
    started = time.perf_counter()
    try:
        history = session.train(run, checkpoint if resumed and not world.active else resumed)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted(run) if world.is_main else None) from None
    seconds = time.perf_counter() - started
    session.model.eval()
    split = "valid" if session.dataset.valid is not None else "train"
    # a resumed run's training time is its earlier epochs' (their records keep their seconds) plus this session's
    start = checkpoint.get("epoch", 0) if resumed and isinstance(checkpoint, dict) else 0
    earlier = sum(r.get("seconds", 0.0) for r in history.records[:start])
    resumed_at = {"resumed_at_epoch": start, "session_train_seconds": round(seconds, 2)} if start else {}
    summary: dict[str, Any] = {"epochs_run": len(history.records), **session.history_summary(history),
                               "stop_reason": history.stop_reason, "train_seconds": round(earlier + seconds, 2),
                               **resumed_at,
                               **({"fast_path": history.fast_path} if history.fast_path else {}),
                               "device": str(device)}
    result = session.evaluate(split, run)
    pictures: list[str] = []
    if world.is_main:
        summary[f"{split}_evaluation"] = result
        run.write_json("summary.json", summary)
        pictures = session.pictures(run, split)
    return Trained(run, session, history, seconds, summary, split, pictures)


def _interrupted(run: Run | None) -> str:
    """The one line for Ctrl-C: what is saved and how to go on (the checkpoint of the last complete epoch is
    intact: every file is written atomically)."""
    if run is None or not run.exists:
        return "pprogen: interrupted before the first epoch ended; nothing was written: start the run again"
    records = run.read_metrics()
    if records and (run.path / "checkpoint.pt").is_file():
        return (f"pprogen: interrupted; epoch {records[-1]['epoch']} is saved in {run.path}: continue with "
                f"`pprogen train --resume {run.path}`")
    return (f"pprogen: interrupted before the first epoch ended; nothing to resume in {run.path if run else 'the run'} "
            "(it holds the config only): start the run again")
