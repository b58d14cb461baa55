"""Training options, declared once.

Each setting is one :class:`Option`: its type, its default for each trainer that reads it (a trainer not named
does not read it, and giving it is an error), which trainers' resumed runs may change it with ``--override``,
its check and its help. The ``pprogen train`` flags, the defaults written to ``config.json``, the refusal of
another trainer's options, the override rules and the validation of every value (given, overridden or read back
from ``config.json``) all come from :data:`OPTIONS`; nothing else lists them.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
from dataclasses import dataclass, make_dataclass
from dataclasses import fields as fields_of
from typing import Any, Callable

from pprogen.inference.train import Optim

SVI, ADVERSARIAL, EM, NUTS, REVERSE_KL = "svi", "adversarial", "em", "nuts", "reverse_kl"
_BY_GRADIENT = (SVI, REVERSE_KL)  # resumed runs whose optimizer settings may change (the adversarial trainer
# restores its two optimizers from the checkpoint)


def _count(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum


def _number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = True,
            none_ok: bool = False) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        if v is None:
            return none_ok
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return check


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _optional_text(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _boolean(v: Any) -> bool:
    return isinstance(v, bool)


POSITIVE, COUNT = "must be a positive integer", "must be a non-negative integer"


@dataclass(frozen=True)
class Option:
    """One setting of ``config["train"]``. ``defaults`` maps each trainer that reads it to its default;
    ``overridable`` names the trainers whose resumed runs may change it (``--override KEY=VALUE``); ``check``
    tells a right value (``must`` says what one is, after ``label``, by default the key); ``flag`` is the command line's name when it is not
    the key's (``--draws`` sets NUTS's ``num_samples``); ``type`` None gives no flag."""

    key: str
    type: Any
    defaults: dict[str, Any]
    help: str
    check: Callable[[Any], bool] | None = None
    must: str = ""
    overridable: tuple[str, ...] = ()
    flag_name: str | None = None
    label: str | None = None

    @property
    def flag(self) -> str:
        return "--" + (self.flag_name or self.key).replace("_", "-")

    @property
    def dest(self) -> str:
        return (self.flag_name or self.key).replace("-", "_")

    def validate(self, value: Any, where: str = "") -> None:
        """A one-line ``ValueError`` naming the option (and ``where`` the value was read) when it fails its check."""
        if self.check is not None and not self.check(value):
            raise ValueError(f"{where}{self.label or self.key} {self.must}, got {value!r}")


OPTIONS = (
    Option("epochs", int, {SVI: 200, ADVERSARIAL: 100, EM: 100, REVERSE_KL: 500},
           "epochs to train (EM: iterations; reverse KL: optimizer steps; on --resume: train on to this epoch)",
           _count(1), POSITIVE),
    Option("batch_size", int, {SVI: 128, ADVERSARIAL: 64, REVERSE_KL: 256},
           "rows per step (per rank under torchrun; reverse KL: draws a step)", _count(1), POSITIVE, _BY_GRADIENT),
    Option("lr", float, {SVI: 1e-3, ADVERSARIAL: 2e-4, REVERSE_KL: 1e-2}, "learning rate (GANs: the generator's)",
           _number(0, low_open=True), "must be a positive number", _BY_GRADIENT, label="learning rate"),
    Option("optimizer", str, {SVI: "adam", REVERSE_KL: "adam"}, "adam, adamw, sgd, rmsprop, adagrad", _text,
           "must be a name"),
    Option("weight_decay", float, {SVI: 0.0, REVERSE_KL: 0.0},
           "weight decay (an L2 penalty in adam, sgd, rmsprop and adagrad; decoupled in adamw)", _number(0),
           "must be a non-negative number (0 turns it off)"),
    Option("schedule", str, {SVI: "constant", ADVERSARIAL: "constant", REVERSE_KL: "constant"},
           "constant, cosine, exponential or plateau (GANs: constant or linear)", _text, "must be a name"),
    Option("lr_gamma", float, {SVI: Optim.lr_gamma, REVERSE_KL: Optim.lr_gamma}, "the schedule's factor: "
           "exponential multiplies the learning rate by it every epoch, plateau when the validation loss stops "
           "falling", _number(0, 1, low_open=True, high_open=False),
           "is the schedule's factor on the learning rate, in (0, 1]"),
    Option("clip_norm", float, {SVI: None, REVERSE_KL: 10.0}, "clip the gradient norm",
           _number(0, low_open=True, none_ok=True), "must be positive (or None to turn clipping off)", _BY_GRADIENT),
    Option("patience", int, {SVI: 20}, "early-stopping patience in epochs", _count(1), POSITIVE, (SVI,)),
    Option("elbo", str, {SVI: "analytic"}, "ELBO estimator: analytic (closed-form KL terms where exact), trace, stl, "
           "meanfield, graph, enum, renyi, iwae, iwae_dreg", _text, "must be a name", (SVI,)),
    Option("particles", int, {SVI: 1}, "particles per ELBO estimate (vectorized)", _count(1), POSITIVE, (SVI,)),
    Option("beta", float, {SVI: 1.0}, "KL weight (beta-VAE)", _number(0), "must be a non-negative number", (SVI,)),
    Option("alpha", float, {SVI: None}, "order of the renyi bound, in [0, 1)", _number(0, 1, none_ok=True),
           "must lie in [0, 1)", (SVI,)),
    Option("kl_warmup", int, {SVI: 0}, "epochs over which the KL weight ramps up to --beta", _count(0), COUNT,
           (SVI,)),
    Option("lr_d", float, {ADVERSARIAL: 2e-4}, "GANs: the discriminator's learning rate (--lr is the generator's)",
           _number(0, low_open=True), "must be a positive number"),
    Option("betas", None, {ADVERSARIAL: [0.5, 0.999]}, "GANs: Adam's betas (no flag)"),
    Option("loss", str, {ADVERSARIAL: "nonsaturating"}, "GANs: minimax, nonsaturating, wgan_gp, hinge or lsgan", _text,
           "must be a name"),
    Option("critic_steps", int, {ADVERSARIAL: 1}, "GANs: discriminator updates per generator update", _count(1),
           POSITIVE),
    Option("gp_weight", float, {ADVERSARIAL: None}, "GANs: gradient-penalty weight (default 10 for wgan_gp, else 0)",
           _number(0, none_ok=True), "must be a non-negative number (or None)"),
    Option("r1_weight", float, {ADVERSARIAL: 0.0}, "GANs: R1 penalty weight gamma on real data", _number(0),
           "must be a non-negative number"),
    Option("spectral_norm", bool, {ADVERSARIAL: False}, "GANs: spectral norm in the discriminator", _boolean,
           "must be true or false"),
    Option("ema", float, {SVI: 0.0, ADVERSARIAL: 0.999}, "decay of a moving average of the weights (Polyak "
           "averaging), which is evaluated, early-stopped on and saved (0: off); GANs: of the generator's, used for "
           "sampling", _number(0, 1, none_ok=True),
           "is the decay of the parameters' moving average, in [0, 1) (0 or None turns it off)"),
    Option("autocast", str, {SVI: None, ADVERSARIAL: None}, "train under bfloat16 autocast (evaluation stays float32)",
           _optional_text, "must be a dtype's name (or None)"),
    Option("compile", bool, {SVI: False, ADVERSARIAL: False}, "compile the networks with torch.compile (pays off on "
           "some models only)", _boolean, "must be true or false"),
    Option("fast_path", bool, {SVI: True}, "replay each settled step from a recorded graph of its loss, checked bit "
           "for bit against the program (--no-fast-path: run the Pyro program every step)", _boolean,
           "must be true or false", (SVI,)),
    Option("num_samples", int, {NUTS: 500}, "--trainer nuts: posterior draws per chain (default 500)", _count(1),
           "must be at least 1", flag_name="draws", label="--draws"),
    Option("warmup_steps", int, {NUTS: 300}, "--trainer nuts: warm-up steps per chain (default 300)", _count(0),
           "must be at least 0", flag_name="warmup", label="--warmup"),
    Option("num_chains", int, {NUTS: 1}, "--trainer nuts: chains (default 1)", _count(1), "must be at least 1",
           flag_name="chains", label="--chains"),
)
BY_KEY = {o.key: o for o in OPTIONS}
FACTOR_SCHEDULES = ("exponential", "plateau")  # the schedules that read lr_gamma
# settings outside config["train"]: the trainers that read each (the evaluation's size is every trainer's)
RUN_OPTIONS = {"guide": (SVI,), "plate_name": (SVI,)}
EVAL_SAMPLES = Option("eval_samples", int, {SVI: 1000, ADVERSARIAL: 1000, EM: 1000, NUTS: 1000, REVERSE_KL: 20000},
                      "importance samples (GANs: generated samples; reverse KL: draws) for the final evaluation",
                      _count(1), POSITIVE, (SVI, ADVERSARIAL, REVERSE_KL))


def options_of(trainer: str) -> tuple[Option, ...]:
    """The options ``trainer`` reads, in declaration order."""
    return tuple(o for o in OPTIONS if trainer in o.defaults)


def defaults(trainer: str) -> dict[str, Any]:
    """``config["train"]``'s defaults for ``trainer``."""
    return {o.key: o.defaults[trainer] for o in options_of(trainer)}


def overridable(trainer: str) -> tuple[str, ...]:
    """The keys a resumed run of ``trainer`` may change with ``--override``."""
    return tuple(o.key for o in (*OPTIONS, EVAL_SAMPLES) if trainer in o.overridable)


_SETTINGS: dict[tuple[str, tuple[str, ...]], type] = {}


def settings_class(trainer: str) -> type:
    """The frozen dataclass of ``trainer``'s settings: one field per option it reads (:func:`settings` fills in
    the defaults of those a config leaves out: a config written before an option existed)."""
    keys = tuple(o.key for o in options_of(trainer))
    if (trainer, keys) not in _SETTINGS:
        cls = make_dataclass(f"{trainer.title().replace('_', '')}Settings", [(k, Any) for k in keys], frozen=True)
        cls.__doc__ = f"The settings of the {trainer} trainer, from config.json's ``train`` (see pprogen.engine.options)."
        _SETTINGS[trainer, keys] = cls
    return _SETTINGS[trainer, keys]


def settings(trainer: str, train: dict[str, Any]):
    """``config["train"]`` as ``trainer``'s settings (:func:`settings_class`); keys it does not read are left out."""
    cls = settings_class(trainer)
    names = {f.name for f in fields_of(cls)}
    values = {k: v for k, v in train.items() if k in names}
    for option in options_of(trainer):  # list defaults (GANs' betas) are filled in by value, not shared
        if option.key not in values:
            values[option.key] = copy.deepcopy(option.defaults[trainer])
    return cls(**values)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option (booleans as ``--X / --no-X``), left at None when not given."""
    for option in OPTIONS:
        if option.type is bool:
            parser.add_argument(option.flag, action=argparse.BooleanOptionalAction, default=None, help=option.help)
        elif option.type is not None:
            parser.add_argument(option.flag, type=option.type, help=option.help)
    parser.add_argument(EVAL_SAMPLES.flag, type=int, help=EVAL_SAMPLES.help + " (default 1000)")


def validate(config: dict[str, Any], where: str = "") -> None:
    """Every value of ``config["train"]`` that an option declares, and the evaluation's size, pass their checks
    (``where``, e.g. "run/config.json: ", names the file the values were read from)."""
    for key, value in config["train"].items():
        if key in BY_KEY:
            BY_KEY[key].validate(value, where)
    EVAL_SAMPLES.validate(config.get("eval_samples", 1), where)
    limit = config.get("limit")
    if limit is not None and not _count(1)(limit):
        raise ValueError(f"{where}limit must be a positive integer (rows per split) or None, got {limit!r}")
    if not isinstance(config.get("device", "auto"), str):
        raise ValueError(f"{where}device must be auto, cpu, cuda or cuda:N, got {config.get('device')!r}")


def refuse_an_unread_factor(options: Any, train: dict[str, Any]) -> None:
    """``--lr-gamma`` is read by the exponential and plateau schedules only: with another it would change nothing."""
    if given(options, "lr_gamma") is not None and train.get("schedule") not in FACTOR_SCHEDULES:
        raise ValueError(f"--lr-gamma is the exponential or plateau schedule's factor and the {train['schedule']} "
                         "schedule ignores it; add --schedule exponential (or plateau), or drop --lr-gamma")


def given(options: Any, key: str) -> Any:
    """The value of ``key`` in ``options`` (an argparse namespace, a dict or any object), None when absent."""
    if isinstance(options, dict):
        return options.get(key)
    return getattr(options, key, None)


def is_given(value: Any) -> bool:
    """An option given on the command line: not left at None / False (a flag) / "default" (--guide)."""
    return not (value is None or value is False or value == "default")


def flag(key: str) -> str:
    option = BY_KEY.get(key)
    return option.flag if option is not None else "--" + key.replace("_", "-")


def stray_options(options: Any, trainer: str, also: tuple[str, ...] = ()) -> list[str]:
    """The flags given in ``options`` that ``trainer`` does not read (``also``: more keys it refuses), sorted."""
    stray = [o.flag for o in OPTIONS if trainer not in o.defaults and is_given(given(options, o.dest))]
    stray += [flag(k) for k, owners in RUN_OPTIONS.items() if trainer not in owners and is_given(given(options, k))]
    stray += [flag(k) for k in also if is_given(given(options, k))]
    return sorted(set(stray))


def parse_value(text: str) -> Any:
    """A ``--set`` / ``--override`` value: JSON (``true``, ``[500]``, ``null``), else a Python literal
    (``False``, ``(16, 16)``, ``None``), else the text itself (``relu``)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        pass
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_pairs(pairs: list[str] | None, what: str = "--set") -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict, each value by :func:`parse_value`."""
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"{what} expects KEY=VALUE (e.g. {what} z_dim=20), got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_value(value)
    return out
