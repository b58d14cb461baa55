"""The trainer protocol and the registry of trainers.

A trainer is one class in one file of :mod:`pprogen.engine.trainers`, registered with :func:`register_trainer`.
Its ``name`` is the value of ``config["trainer"]`` (and of ``--trainer`` where ``by_flag``); the options it reads are
those of :mod:`pprogen.engine.options` that give it a default. The class says which models it trains
(:meth:`Trainer.refusal`), turns the command line's options into a new run's ``config.json``
(:meth:`Trainer.configure`), builds and checks everything before the first write (``__init__``), trains with resume
(:meth:`Trainer.train`), evaluates, draws its pictures and formats its results; its class methods load a trained
run (:meth:`Trainer.load`), say whether it ships (:meth:`Trainer.ship_refusal`) and score a loaded run
(:meth:`Trainer.score`). :func:`trainer_class` picks the class for a config and :func:`select` for the command
line: nothing outside the trainer files branches on a trainer's or a model's kind.
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from pprogen.data import NAMES as DATA_NAMES
from pprogen.data import DataError, Dataset, intensity_levels, load_dataset
from pprogen.engine import options as opts
from pprogen.engine.config import base_config, build, condition_of
from pprogen.engine.scoring import evaluate_split
from pprogen.engine.report import format_eval
from pprogen.capabilities import capabilities
from pprogen.registry import ModelCard
from pprogen.runs import Run, seed_everything

if TYPE_CHECKING:
    from pprogen.inference.loop import History

TRAINERS: dict[str, type["Trainer"]] = {}


def register_trainer(cls: type["Trainer"]) -> type["Trainer"]:
    """Class decorator: add a trainer to the registry under ``cls.name`` (a duplicate name raises). The options
    its class lists in ``reads`` (declared options, with this trainer's defaults) become options it reads."""
    if not cls.name or cls.name in TRAINERS:
        raise ValueError(f"a trainer needs a name of its own; {cls.name!r} is already registered or empty")
    unknown = sorted(set(cls.reads) - set(opts.BY_KEY))
    if unknown:
        raise ValueError(f"trainer {cls.name!r} reads {', '.join(unknown)}, which no option declares; declare each "
                         "setting once in pprogen.engine.options")
    for key, default in cls.reads.items():
        opts.BY_KEY[key].defaults.setdefault(cls.name, default)
    TRAINERS[cls.name] = cls
    return cls


def unregister_trainer(name: str) -> type["Trainer"]:
    """Remove a trainer (and its reading of the options) from the registry; returns its class."""
    cls = TRAINERS.pop(name)
    for option in opts.OPTIONS:
        option.defaults.pop(name, None)
    return cls


def flag_choices() -> tuple[str, ...]:
    """The trainers ``--trainer`` may name."""
    return tuple(name for name, cls in TRAINERS.items() if cls.by_flag)


def trainer_class(config: dict[str, Any]) -> type["Trainer"]:
    """The trainer of a run's config (configs written before ``trainer`` was recorded: the model kind's)."""
    name = config.get("trainer")
    if name is None:
        name = next(n for n, cls in TRAINERS.items() if cls.default_for_kind(config.get("kind")))
    if name not in TRAINERS:
        raise ValueError(f"the run's config names trainer {name!r}, which pprogen does not have; choose one of "
                         f"{', '.join(TRAINERS)}")
    return TRAINERS[name]


def select(options: Any, card: ModelCard) -> type["Trainer"]:
    """The trainer for a new run: one that the options themselves call for (``--target``), else ``--trainer``,
    else the model kind's default; refused in one line when it does not train that model."""
    for cls in TRAINERS.values():
        if cls.claims(options, card):
            return cls
    name = opts.given(options, "trainer")
    if name is None:
        name = next(n for n, cls in TRAINERS.items() if cls.default_for_kind(card.kind))
    if name not in TRAINERS or not TRAINERS[name].by_flag:
        raise ValueError(f"unknown trainer {name!r}; choose {', '.join(flag_choices())}")
    cls = TRAINERS[name]
    refusal = cls.refusal(card)
    if refusal:
        raise ValueError(refusal)
    return cls


class Trainer:
    """The base of every trainer: shared construction of a config from data, loading and scoring by likelihood.

    Subclasses set ``name``, ``reads`` (how a refusal describes what it reads) and implement ``__init__(config,
    dataset, device, world, progress, resumed)`` (build and check everything; write nothing), ``train(run,
    resume)`` (returns a :class:`~pprogen.inference.loop.History`), ``history_summary``, ``evaluate``,
    ``pictures`` and ``format``."""

    name: ClassVar[str] = ""
    by_flag: ClassVar[bool] = True  # --trainer NAME chooses it
    opt_in: ClassVar[bool] = False  # no kind trains with it unless --trainer names it (EM, NUTS)
    resumable: ClassVar[bool] = True
    ships_weights: ClassVar[bool] = True  # its runs ship as config and weights (pprogen ship)
    card_defaults: ClassVar[bool] = True  # a model card's training defaults apply to its runs
    subject: ClassVar[str | None] = None  # how a refusal names a fit by this trainer (default: --trainer NAME)
    reads_note: ClassVar[str] = ""  # what a refusal adds about the options it reads
    banner: str = ""
    reads: ClassVar[dict[str, Any]] = {}  # declared options a trainer added later reads, with its defaults

    # ---- which models, which options
    @classmethod
    def default_for_kind(cls, kind: str | None) -> bool:
        """Whether this trainer is the one a model of ``kind`` trains with when no trainer is named."""
        return False

    @classmethod
    def claims(cls, options: Any, card: ModelCard) -> bool:
        """Whether the options given call for this trainer whatever ``--trainer`` says (a reverse-KL target)."""
        return False

    @classmethod
    def refusal(cls, card: ModelCard) -> str | None:
        """Why this trainer does not train the model of ``card`` (None: it may; the model's own capabilities are
        checked again when it is built)."""
        return None

    @classmethod
    def stray_message(cls, stray: list[str], card: ModelCard, resuming: bool = False) -> str:
        """The one line refusing options this trainer does not read (``subject`` names the fit, ``reads_note``
        says more of what it reads)."""
        reads = ", ".join(o.flag for o in opts.options_of(cls.name))
        subject = cls.subject or f"--trainer {cls.name}"
        return (f"{', '.join(stray)} {'does' if len(stray) == 1 else 'do'} not apply to {subject} (it reads "
                f"{reads}{cls.reads_note}); drop {'it' if len(stray) == 1 else 'them'}")

    @classmethod
    def also_refused(cls, card: ModelCard) -> tuple[str, ...]:
        """Options this trainer reads but not for this model (an autoencoder has no KL term to weight)."""
        return ()

    @classmethod
    def refuse_strays(cls, options: Any, card: ModelCard, resuming: bool = False) -> None:
        """Options given that this trainer does not read are refused in one line; when they all belong to one
        opt-in trainer alone (``--draws`` is NUTS's), the line says to choose it."""
        stray = opts.stray_options(options, cls.name, cls.also_refused(card))
        if not stray:
            return
        owners = {name for name, other in TRAINERS.items() if other.opt_in and other.name != cls.name
                  and all(k in opts.BY_KEY and set(opts.BY_KEY[k].defaults) == {name} for k in _keys(stray))}
        if len(owners) == 1 and not resuming:
            owner = owners.pop()
            raise ValueError(f"{', '.join(stray)} set --trainer {owner}; add --trainer {owner} or drop them")
        raise ValueError(cls.stray_message(stray, card, resuming))

    @classmethod
    def train_settings(cls, options: Any, card: ModelCard) -> dict[str, Any]:
        """``config["train"]``: the trainer's defaults, the card's, then the options given; checked."""
        card_defaults = {k: v for k, v in card.train_defaults.items() if k in opts.BY_KEY
                         and cls.name in opts.BY_KEY[k].defaults and cls.card_defaults}
        train = {**opts.defaults(cls.name), **card_defaults}
        for option in opts.options_of(cls.name):
            if opts.given(options, option.dest) is not None:
                train[option.key] = opts.given(options, option.dest)
        return train

    @classmethod
    def configure(cls, options: Any, card: ModelCard) -> tuple[dict[str, Any], Dataset | None]:
        """A new run's config from the ``pprogen train`` options, and its data set; nothing is written."""
        cls.refuse_strays(options, card)
        train = cls.train_settings(options, card)
        opts.refuse_an_unread_factor(options, train)
        data_name = opts.given(options, "data") or card.default_data
        dataset = load_dataset(data_name, opts.given(options, "data_dir")).subset(opts.given(options, "limit"))
        if data_name not in DATA_NAMES and Path(data_name).exists():  # a user file: absolute, resumable from anywhere
            data_name = str(Path(data_name).resolve())
        model_args, flatten = model_arguments(options, card, dataset, data_name)
        config = base_config(options, card, cls.name, train)
        config.update(model_args=model_args, data=data_name, flatten=flatten)
        return config, dataset

    # ---- a trained run
    @classmethod
    def load(cls, run: Run, config: dict[str, Any], dataset: Dataset, device) -> tuple[Dataset, Any, Any]:
        """The run's data, model and guide with their weights, on ``device``, in eval mode."""
        dataset, model, guide = build(config, dataset)
        materialize(guide, dataset.train[:2], **condition_of(model, dataset, "train", 2))
        run.load_weights("guide", guide)
        run.load_weights("model", model)
        return dataset, to_device(model, device), to_device(guide, device)

    @classmethod
    def ship_refusal(cls, path: str, config: dict[str, Any], model: Any) -> str | None:
        """Why a run of this trainer does not ship as config and weights (None: it does)."""
        return None

    @classmethod
    def check_request(cls, request: Any) -> None:
        """Refuse an evaluation request that does not apply to this trainer's runs, before the run is loaded."""
        if request.target is not None:
            raise ValueError("--target names the energy of a flow fitted by reverse KL; this run was fitted to data: "
                             "drop --target")
        request.check()

    @classmethod
    def check_resume(cls, options: Any, config: dict[str, Any], run: Run) -> None:
        """Refuse options of a resumed run that only this trainer knows about (a target is fixed at the start)."""
        if opts.given(options, "target") is not None:
            raise ValueError(f"--target is fixed when a run starts; drop it to resume {run.path.name}")

    @classmethod
    def resume_refusal(cls, run: Run) -> str:
        return f"{run.path.name} does not resume"

    @classmethod
    def score(cls, loaded: Any, request: Any) -> tuple[dict[str, Any], str, str]:
        """``pprogen evaluate`` of a loaded run: ``(result, text, summary key)``; by likelihood unless the trainer
        scores its runs otherwise."""
        from pprogen.engine.scoring import score_likelihood

        return score_likelihood(loaded, request)

    @property
    def settings(self):
        """This run's settings (``config["train"]``) as the trainer's settings dataclass
        (:func:`pprogen.engine.options.settings_class`)."""
        return opts.settings(self.name, self.config["train"])

    # ---- what every trainer shares after training
    def evaluate(self, split: str, run: Run | None) -> dict[str, Any]:
        return evaluate_split(self.model, self.guide, self.dataset, split, self.config.get("eval_samples", 1000),
                              self.device, run, world=self.world)

    def format(self, split: str, result: dict[str, Any]) -> str:
        return format_eval(split, result)

    def history_summary(self, history: History) -> dict[str, Any]:
        return {}

    def trained_what(self, summary: dict[str, Any]) -> str:
        """What a finished session trained, for the command line ("200 epochs")."""
        return f"{summary['epochs_run']} epochs"


def model_arguments(options: Any, card: ModelCard, dataset: Dataset, data_name: str) -> tuple[dict[str, Any], bool]:
    """The model's arguments: ``--set`` pairs, then the data's shape, classes, bounds and levels where the model's
    factory takes them and ``--set`` left them out. Returns them and whether the data is flattened for it."""
    params = inspect.signature(card.factory).parameters
    model_args = opts.parse_pairs(opts.given(options, "set"))
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
                f"{card.name} dequantizes images, but the pixels of {data_name!r} are not on a grid of evenly "
                "spaced levels in [0, 1]; pass --set num_levels=L for data with L levels"
            )
        model_args["num_levels"] = levels
    return model_args, flatten


ALIASES = {"num_particles": "particles"}  # a field of fit's groups -> the option that sets it


def settings_group(cls, train: dict[str, Any], **given: Any):
    """One of ``fit``'s option groups (:class:`~pprogen.inference.train.Optim`, ``Objective``, ``Speed``) by
    keyword from ``config["train"]``: the options it has, the dataclass's defaults for those it has not."""
    found = {f.name: train[ALIASES.get(f.name, f.name)] for f in fields(cls) if ALIASES.get(f.name, f.name) in train}
    return cls(**{**found, **given})


def single_process_setup(trainer: Trainer, config: dict[str, Any], dataset: Dataset | None, device, world,
                         capability: str, refusal: str):
    """The start the classic trainers (EM, NUTS) share: one process, the seed, the run's data and model, and the
    model's ``capability`` ("em", "nuts"; ``refusal`` without it). Sets the trainer's config, device and world;
    returns ``build``'s (dataset, model, guide)."""
    if world.active:
        raise ValueError(f"--trainer {capability} runs in one process; run it without torchrun")
    seed_everything(config["seed"])
    trainer.config, trainer.device, trainer.world, trainer.progress = config, device, world, False
    built = build(config, dataset)
    if not getattr(capabilities(built[1]), capability):
        raise ValueError(refusal)
    return built


def _keys(flags: list[str]) -> list[str]:
    """The option keys of train flags (flags of no train option give an empty list: no owner then)."""
    by_flag = {o.flag: o.key for o in opts.OPTIONS}
    keys = [by_flag.get(f) for f in flags]
    return keys if all(keys) else ["-"]


def materialize(guide, x: torch.Tensor, **condition) -> None:
    """Run a lazily built guide (amortized, auto_*) once so that its parameters exist."""
    import pyro

    if isinstance(guide, torch.nn.Module):
        with torch.no_grad(), pyro.poutine.block():
            guide(x, **condition)


def to_device(part: Any, device) -> Any:
    """A module moved to ``device`` in eval mode; anything else as it is."""
    return part.to(device).eval() if isinstance(part, torch.nn.Module) else part
