"""What a run folder's files must hold, checked when they are read: a config.json or checkpoint that was edited,
damaged or written by something else is refused in one line naming the file, before any of its values is used
(a shipped folder's data shapes before anything is allocated from them).

Only the shape of the values is checked here (types, ranges); the training settings in ``config["train"]`` are
checked by their options (:func:`pprogen.engine.options.validate`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, NoReturn

import torch

from pprogen.runfiles.errors import RunError

SHIPPED_DTYPES = ("float32", "float16", "int8")
MAX_ENTRIES = 2**26  # entries of one shipped data point (64 Mi): beyond any model pprogen ships
MAX_CLASSES = 10**6
MAX_SCALE = torch.finfo(torch.float32).max / 127  # a larger int8 block scale overflows float32


def show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def is_count(value: Any, minimum: int = 0) -> bool:
    return type(value) is int and value >= minimum


def _text(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _optional_text(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _object(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) for k in value)


CONFIG_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "pprogen_version": (_text, "must be a version string"),
    "model": (_text, "must be a model's name"),
    "kind": (_text, "must be a model kind's name"),
    "data": (lambda v: v is None or _text(v), "must be a data set's name or file (or null)"),
    "data_dir": (_optional_text, "must be a folder (or null)"),
    "model_args": (_object, "must be an object of the model's arguments"),
    "train": (_object, "must be an object of training settings"),
    "limit": (lambda v: v is None or is_count(v, 1), "must be a positive integer (or null)"),
    "flatten": (lambda v: isinstance(v, bool), "must be true or false"),
    "guide": (_text, "must be a guide's name"),
    "trainer": (_text, "must be a trainer's name"),
    "seed": (lambda v: is_count(v) and v < 2**32, "must be an integer in [0, 2**32)"),
    "device": (_text, "must be a device's name (auto, cpu, cuda, cuda:0, ...)"),
    "eval_samples": (lambda v: is_count(v, 1), "must be a positive integer"),
    "plate_name": (_optional_text, "must be a plate's name (or null)"),
    "target": (lambda v: v is None or _text(v), "must be an energy target (or null)"),
    "target_sha256": (_optional_text, "must be a SHA-256 digest (or null)"),
    "overrides": (lambda v: isinstance(v, list) and all(_object(o) for o in v),
                  "must be a list of the overrides recorded on resume"),
}


def check_config(config: Any, path: Path) -> dict[str, Any]:
    """``config`` (read from ``path``) if every setting it holds has the type and range a run's config.json
    gives it, else one :class:`RunError` line naming the file, the key and the fix."""
    def fail(problem: str) -> NoReturn:
        raise RunError(f"{path}: {problem}; correct it or restore the file (the run folder was edited or damaged)")

    if not isinstance(config, dict):
        raise RunError(f"{path} holds no settings (a JSON object is expected); the run folder is damaged")
    for key, (check, must) in CONFIG_RULES.items():
        if key in config and not check(config[key]):
            fail(f"{key!r} {must}, got {show(config[key])}")
    if "shipped" in config:
        check_shipped(config["shipped"], fail)
    return config


def _shape(value: Any, max_dims: int) -> bool:
    return (isinstance(value, list) and 1 <= len(value) <= max_dims and all(is_count(d, 1) for d in value)
            and math.prod(value) <= MAX_ENTRIES)


def check_shipped(shipped: Any, fail: Callable[[str], NoReturn]) -> None:
    """A shipped folder's metadata: the encoding of its weights and its data's shapes (used to build blank data)."""
    if not isinstance(shipped, dict):
        fail(f"'shipped' must be an object (dtype, data), got {show(shipped)}")
    if "dtype" in shipped and shipped["dtype"] not in SHIPPED_DTYPES:
        fail(f"'shipped' dtype must be one of {', '.join(SHIPPED_DTYPES)}, got {show(shipped['dtype'])}")
    if "data" not in shipped:
        return
    data = shipped["data"]
    if not isinstance(data, dict) or "shape" not in data or "binary" not in data:
        fail(f"'shipped' data must be an object with the data's shape and binary, got {show(data)}")
    shape, image = data["shape"], data.get("image_shape")
    if not _shape(shape, 4):
        fail(f"'shipped' data shape must be a list of 1 to 4 positive integers of at most {MAX_ENTRIES} entries in "
             f"all, got {show(shape)}")
    if image is not None and not (_shape(image, 4) and math.prod(image) == math.prod(shape)):
        fail(f"'shipped' data image_shape must be null or a list of positive integers with as many entries as the "
             f"shape {shape}, got {show(image)}")
    if not isinstance(data["binary"], bool):
        fail(f"'shipped' data binary must be true or false, got {show(data['binary'])}")
    classes = data.get("num_classes")
    if not (classes is None or (is_count(classes, 1) and classes <= MAX_CLASSES)):
        fail(f"'shipped' data num_classes must be null or a positive integer, got {show(classes)}")


# ------------------------------------------------------------------ checkpoints


def check_checkpoint(state: Any, path: Path) -> dict[str, Any]:
    """``state`` (read from ``path``) if the values every trainer reads back have their type and range: ``epoch``
    a count, ``history`` an object (its records a list of objects), ``bad_epochs`` a count, ``rng`` random states
    this torch can restore; else one :class:`RunError` line naming the file."""
    def fail(problem: str) -> NoReturn:
        raise RunError(f"checkpoint {path} {problem}; the file is damaged or was not written by pprogen: restore it "
                       "from a backup or start a new run")

    if not isinstance(state, dict):
        fail(f"holds a {type(state).__name__}, not a checkpoint (a dict with its epoch)")
    if "epoch" not in state:
        fail("holds no epoch")
    if not is_count(state["epoch"]):
        fail(f"has 'epoch' = {show(state['epoch'])}, not a number of epochs (a non-negative integer)")
    if "bad_epochs" in state and not is_count(state["bad_epochs"]):
        fail(f"has 'bad_epochs' = {show(state['bad_epochs'])}, not a non-negative integer")
    if "history" in state:
        problem = _history_problem(state["history"])
        if problem:
            fail(f"has a 'history' that {problem}")
    if "rng" in state:
        problem = _rng_problem(state["rng"])
        if problem:
            fail(f"has an 'rng' whose {problem}")
    return state


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _history_problem(history: Any) -> str | None:
    if not isinstance(history, dict):
        return f"is a {type(history).__name__}, not a dict"
    records = history.get("records", [])
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        return f"has 'records' = {show(records)}, not a list of per-epoch dicts"
    rules = {"best_epoch": (lambda v: v is None or is_count(v), "None or a non-negative integer"),
             "best_valid_loss": (_number, "a number"),
             "stop_reason": (lambda v: isinstance(v, str), "a string"),
             "fast_path": (_optional_text, "None or a string")}
    for key, (check, must) in rules.items():
        if key in history and not check(history[key]):
            return f"has {key!r} = {show(history[key])}, not {must}"
    return None


def _torch_state(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.shape == torch.get_rng_state().shape


def _rng_problem(rng: Any) -> str | None:
    if _torch_state(rng):  # the torch generator's state alone
        return None
    if not isinstance(rng, dict):
        return f"value is a {type(rng).__name__}, not a dict of random states"
    if not _torch_state(rng.get("torch")):
        return "'torch' is not a random state of this torch"
    python = rng.get("python")
    if not (isinstance(python, (tuple, list)) and len(python) == 3 and isinstance(python[1], (tuple, list))
            and len(python[1]) == 625 and all(is_count(v) and v < 2**32 for v in python[1])):
        return "'python' is not a state of Python's random module"
    numpy = rng.get("numpy")
    if not (isinstance(numpy, torch.Tensor) and numpy.dtype == torch.int64 and tuple(numpy.shape) == (624,)):
        return "'numpy' is not a state of NumPy's random generator"
    if not (is_count(rng.get("numpy_pos")) and rng["numpy_pos"] <= 624):
        return f"'numpy_pos' = {show(rng.get('numpy_pos'))} is not a position in NumPy's state (0 to 624)"
    cuda = rng.get("cuda", [])
    if not (isinstance(cuda, (list, tuple))
            and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda)):
        return "'cuda' is not a list of CUDA random states"
    return None


# ------------------------------------------------------------------ shipped weights


def check_weights_metadata(rebuilt: Any, packed: Any, quantized: Any, path: Path) -> None:
    """The metadata of a weights file: {name: digest} of the buffers rebuilt from config.json, [name] of the packed
    and of the int8 tensors."""
    def fail(key: str, value: Any, must: str) -> NoReturn:
        raise RunError(f"weights file {path} has {key} = {show(value)}, not {must}; the file is damaged: ship or "
                       "save the run again")

    if not (isinstance(rebuilt, dict) and all(isinstance(v, str) for v in rebuilt.values())):
        fail("pprogen_rebuilt", rebuilt, "an object of buffer names and digests")
    for key, names in (("pprogen_packed", packed), ("pprogen_int8", quantized)):
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            fail(key, names, "a list of tensor names")


def check_scales(name: str, scale: torch.Tensor, path: Path) -> None:
    """An int8 tensor's block scales: floating, finite, positive and small enough that no entry overflows."""
    values = scale.double() if scale.is_floating_point() else None
    if values is None:
        problem = "are not floating point"
    elif not bool(torch.isfinite(values).all()):
        problem = "include a value that is not finite"
    elif bool((values <= 0).any()):
        problem = "include zero or a negative value"
    elif bool((values > MAX_SCALE).any()):
        problem = f"include a value past {MAX_SCALE:.3g}, at which the weights overflow"
    else:
        problem = None
    if problem:
        raise RunError(f"weights file {path} holds block scales of {name!r} that {problem}; int8 block scales are "
                       "finite and positive: the file is damaged: ship the run again")
