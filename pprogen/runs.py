"""Run folders: ``runs/<model>-<data>-<time>/`` with config, metrics, weights and a resumable checkpoint.

Every write goes to a temporary file in the same folder and is moved into place with ``os.replace``, so
a killed run never leaves a half-written file. Weights are safetensors; the checkpoint is read back with
``torch.load(weights_only=True)``, so no pickle code ever runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyro
import torch
from safetensors import safe_open
from safetensors.torch import save_file

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
REQUIRED = ("model", "data", "model_args", "train")  # what the config.json of every `pprogen train` run holds
REBUILT = "pprogen_rebuilt"  # weights metadata: {name: digest} of buffers left out, which config.json rebuilds
PACKED = "pprogen_packed"  # weights metadata: [name] of parameters stored as their entries inside the model's mask
QUANTIZED = "pprogen_int8"  # weights metadata: [name] of tensors stored as int8, a float32 scale per block of entries
SCALE = ".int8_scale"  # the key of a quantized tensor's block scales: its name + SCALE
INT8_BLOCK = 256  # entries per int8 scale: 1.6 % more bytes than the int8 values alone


class RunError(ValueError):
    """A run folder that cannot be created, read or resumed."""


class RunWriteError(RunError, OSError):
    """A file of a run that could not be written (a full disk, a read-only folder): one line naming the file,
    the space it needs and what is still intact."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then move the result over ``path`` in one step. The file gets the mode the
    umask gives a new file (``mkstemp`` alone would leave it 0600). A write that fails for want of space or
    permission raises :class:`RunError` naming the file; the file it would have replaced is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise RunWriteError(f"cannot write in {path.parent} ({err.strerror}); choose a folder you can write to") from None
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        size = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) or "write" in str(err).lower() and "pos" in str(err).lower():
            raise _write_error(path, err, size) from None
        raise


def _write_new(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, which must not exist yet: complete or not at all, and never over a file
    another process created in the meantime (the name is taken with a hard link, which fails if it exists)."""
    def claim(tmp: str) -> None:
        Path(tmp).write_text(text)
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise RunError(f"{path} was created by another run while this one started; choose another --out") from None

    spare = path.with_name(f".{path.name}.claimed")
    atomic_write(spare, claim)  # the temporary file, linked to ``path`` on success, lands here; removed below
    spare.unlink(missing_ok=True)


def _write_error(path: Path, err: BaseException, written: int) -> RunWriteError:
    """One line for a write that failed (a full disk, a folder that turned read-only, a quota)."""
    reason = getattr(err, "strerror", None) or str(err).strip().splitlines()[0][:120]
    old = path.stat().st_size if path.exists() else 0
    need = max(old, written)
    text = f"could not write {path} ({reason})"
    if need:
        text += f"; it needs about {need / 2**20:.1f} MiB free in {path.parent}"
    if path.name == CHECKPOINT and path.exists():
        text += f"; the last complete checkpoint is intact: free space and resume with --resume {path.parent}"
    elif path.exists():
        text += f"; the previous {path.name} is intact"
    return RunWriteError(text)


def seed_everything(seed: int) -> None:
    pyro.set_rng_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, default=str) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _state_tensors(module: Any) -> dict[str, torch.Tensor]:
    if not isinstance(module, torch.nn.Module):
        return {}
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def tensor_digest(tensor: torch.Tensor) -> str:
    """A tensor's dtype, shape and bytes, hashed (sha256): whether a rebuilt buffer is the one left out."""
    t = tensor.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """A weights file's tensors, the buffers it leaves to be rebuilt from config.json ({name: digest}) and the
    parameters it stores packed (their entries inside the model's mask only)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            metadata = f.metadata() or {}
        rebuilt = json.loads(metadata.get(REBUILT, "{}"))
        packed = list(json.loads(metadata.get(PACKED, "[]")))
        quantized = list(json.loads(metadata.get(QUANTIZED, "[]")))
    except Exception as err:
        raise RunError(f"weights file {path} is unreadable or corrupted ({err})") from None
    for name in quantized:  # int8 blocks back to floats: the model reads them as it read the float weights
        q, scale = tensors.get(name), tensors.pop(name + SCALE, None)
        if q is None or scale is None or q.dtype != torch.int8 or scale.shape != (-(-q.numel() // INT8_BLOCK),):
            raise RunError(f"weights file {path} lists {name!r} as int8 but lacks it or its block scales "
                           f"({name + SCALE!r}); the file is damaged: ship the run again")
        tensors[name] = dequantize_blocks(q, scale)
    return tensors, rebuilt, packed


def quantize_blocks(value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``value`` as int8 and a float32 scale per block of ``INT8_BLOCK`` consecutive entries (in memory order):
    each block divided by its largest magnitude / 127 and rounded, so an entry moves by at most half its block's
    step (a block of zeros gets scale 1). Blocks, not rows, so that packed (flat) weights quantize as well."""
    flat = value.detach().float().reshape(-1)
    blocks = torch.nn.functional.pad(flat, (0, -flat.numel() % INT8_BLOCK)).reshape(-1, INT8_BLOCK)
    scale = blocks.abs().amax(dim=1) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(blocks / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(-1)[:flat.numel()].reshape(value.shape), scale


def dequantize_blocks(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    flat = q.reshape(-1).float()
    blocks = torch.nn.functional.pad(flat, (0, -flat.numel() % INT8_BLOCK)).reshape(-1, INT8_BLOCK)
    return (blocks * scale.float()[:, None]).reshape(-1)[:flat.numel()].reshape(q.shape)


def _weight_masks(module: Any) -> dict[str, torch.Tensor]:
    """{parameter name: boolean mask} of the entries a model reads (``module.weight_masks()``, which masked
    models such as MADE offer: every other entry is multiplied by 0), else nothing."""
    masks = getattr(module, "weight_masks", None)
    return masks() if callable(masks) else {}


def compact_weights(module: Any, fresh: Any, half: bool, int8: bool = False
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str], list[str]]:
    """``module``'s state as shipped weights: the buffers equal to those of ``fresh`` (the same config built anew:
    masks, orderings, constants) left out with their digests, masked parameters packed to the entries the model
    reads (``weight_masks``), and with ``half`` each floating tensor as float16 unless that overflows (such a tensor
    stays as it is). With ``int8`` the floating matrices, kernels and packed weights of at least ``INT8_BLOCK``
    entries are stored as int8 with a float32 scale per block (:func:`quantize_blocks`), the rest as with ``half``.
    Returns the tensors, the rebuilt buffers' digests, the packed and the quantized names."""
    state = _state_tensors(module)
    fresh_masks = _weight_masks(fresh)  # packed only where the same config builds the same mask on loading
    masks = {k: m for k, m in _weight_masks(module).items() if k in fresh_masks and torch.equal(m, fresh_masks[k])}
    for name, mask in masks.items():
        state[name] = state[name][mask]
    fresh_state = _state_tensors(fresh)
    buffers = {name for name, _ in module.named_buffers()} if isinstance(module, torch.nn.Module) else set()
    tensors, rebuilt, quantized = {}, {}, []
    for name, value in state.items():
        other = fresh_state.get(name)
        if name in buffers and other is not None and other.dtype == value.dtype and torch.equal(other, value):
            rebuilt[name] = tensor_digest(value)
            continue
        if (int8 and value.is_floating_point() and (value.dim() >= 2 or name in masks)
                and value.numel() >= INT8_BLOCK and bool(torch.isfinite(value).all())):
            tensors[name], tensors[name + SCALE] = quantize_blocks(value)
            quantized.append(name)
            continue
        if (half or int8) and value.is_floating_point() and value.dtype != torch.float16:
            small = value.to(torch.float16)
            value = small if bool(torch.isfinite(small).eq(torch.isfinite(value)).all()) else value
        tensors[name] = value
    return tensors, rebuilt, sorted(masks), quantized


class Run:
    """A run folder. ``Run.create`` starts a new one; ``Run.open`` reads an existing one."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._pending: dict[str, Any] | None = None  # the config of a lazily created run not written yet
        self._staged = False  # True: the pending config replaces an existing one (a resumed run)

    @classmethod
    def create(cls, config: dict[str, Any], out: str | Path | None = None, root: str | Path = "runs",
               lazy: bool = False) -> "Run":
        """A new run folder for ``config`` (refused where a run or other files already are); with ``lazy`` the
        folder and config.json are written at the run's first write, not now."""
        if out is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            out = Path(root) / f"{config['model']}-{Path(str(config['data'])).stem}-{stamp}"
        path = Path(out)
        if (path / CONFIG).exists() or (path / CHECKPOINT).exists():
            raise RunError(
                f"output folder {path} already holds a run; resume it with --resume {path} "
                "or choose another --out"
            )
        if path.exists() and not path.is_dir():
            raise RunError(f"output path {path} is a file, not a folder; choose another --out")
        if path.is_dir() and any(path.iterdir()):
            raise RunError(f"output folder {path} exists and holds files that are not a pprogen run; choose an "
                           "empty or new --out")
        run = cls(path)
        run._pending = config
        if not lazy:
            run.materialize()
        return run

    def materialize(self) -> None:
        """Write the folder and its config.json, if that has not happened yet (a lazily created run does it
        at its first write, so that a run whose trainer refuses its data leaves nothing on disk). A new run's
        config.json is created exclusively: a run that took the folder in the meantime is not overwritten."""
        if self._pending is None:
            return
        if self._staged:
            write_json(self.path / CONFIG, self._pending)
        else:
            _write_new(self.path / CONFIG, json.dumps(self._pending, indent=2, default=str) + "\n")
        self._pending = None

    def stage_config(self, config: dict[str, Any]) -> None:
        """A resumed run's new config.json (more epochs, overrides), written at the run's first write: a resume
        that its trainer refuses leaves the old one in place."""
        self._pending, self._staged = config, True

    @property
    def exists(self) -> bool:
        """Whether the folder and its config.json are on disk (a resumed run's always are)."""
        return self._pending is None or self._staged

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        path = Path(path)
        if not (path / CONFIG).is_file():
            raise RunError(f"{path} is not a pprogen run folder (no {CONFIG}); pass the folder `pprogen train` printed")
        return cls(path)

    @property
    def config(self) -> dict[str, Any]:
        try:
            config = json.loads((self.path / CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunError(f"{self.path / CONFIG} is unreadable ({err}); the run folder is damaged") from None
        if not isinstance(config, dict):
            raise RunError(f"{self.path / CONFIG} holds no settings (a JSON object is expected); the run folder is damaged")
        return config

    def config_with(self, *keys: str) -> dict[str, Any]:
        """The config, refused with one line when it lacks any of ``keys`` (what a reader of it needs)."""
        config = self.config
        missing = [k for k in keys if k not in config]
        if missing:
            raise RunError(f"{self.path / CONFIG} lacks {', '.join(repr(k) for k in missing)}: it is not the config "
                           "of a pprogen run (or was damaged); pass the folder `pprogen train` printed")
        return config

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.materialize()
        atomic_write(self.path / CHECKPOINT, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self) -> dict[str, Any]:
        path = self.path / CHECKPOINT
        if not path.is_file():
            raise RunError(f"{self.path} has no checkpoint to resume from ({CHECKPOINT} is missing)")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises several types for damaged files
            first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise RunError(
                f"checkpoint {path} is unreadable or corrupted ({first}); "
                "start a new run or restore the file from a backup"
            ) from None

    def write_metrics(self, records: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(r) + "\n" for r in records)
        self.materialize()
        atomic_write(self.path / "metrics.jsonl", lambda tmp: Path(tmp).write_text(text))

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def save_weights(self, name: str, module: Any, tensors: dict[str, torch.Tensor] | None = None,
                     rebuilt: dict[str, str] | None = None, packed: list[str] | None = None,
                     quantized: list[str] | None = None) -> None:
        """``module``'s state (or the given ``tensors``, with the digests of the buffers left out to be rebuilt,
        the names of the parameters packed to their masks' entries and of those stored as int8 blocks) as
        ``name.safetensors``."""
        tensors = _state_tensors(module) if tensors is None else tensors
        if tensors or rebuilt:
            self.materialize()
            metadata = {**({REBUILT: json.dumps(rebuilt)} if rebuilt else {}),
                        **({PACKED: json.dumps(packed)} if packed else {}),
                        **({QUANTIZED: json.dumps(quantized)} if quantized else {})} or None
            atomic_write(self.path / f"{name}.safetensors", lambda tmp: save_file(tensors, tmp, metadata=metadata))

    def load_weights(self, name: str, module: Any) -> None:
        path = self.path / f"{name}.safetensors"
        if not isinstance(module, torch.nn.Module) or not module.state_dict():
            return
        if not path.is_file():
            raise RunError(f"{path} is missing; the run has not finished an epoch yet or the folder is damaged")
        tensors, rebuilt, packed = read_weights(path)
        expected = module.state_dict()
        missing = set(expected) - set(tensors) - set(rebuilt)
        if missing:
            raise RunError(f"weights file {path} lacks {sorted(missing)[0]!r}; it was saved from another model")
        extra = (set(tensors) | set(rebuilt)) - set(expected)
        if extra:
            raise RunError(f"weights file {path} holds {sorted(extra)[0]!r}, which the model of config.json has "
                           "not: they do not match; restore the run's config.json or its weights")
        for key, digest in sorted(rebuilt.items()):
            if tensor_digest(expected[key]) != digest:
                raise RunError(f"weights file {path} leaves {key!r} to be rebuilt from config.json, and this pprogen "
                               "builds a different one; evaluate the folder with the pprogen version that wrote it")
        masks = _weight_masks(module) if packed else {}
        for key in packed:  # the entries inside the model's mask (checked above to be the one that was shipped)
            if key not in masks or key not in tensors or tensors[key].numel() != int(masks[key].sum()):
                raise RunError(f"weights file {path} stores {key!r} packed to a mask this model does not have; "
                               "restore the run's config.json or its weights")
            full = torch.zeros(masks[key].shape, dtype=tensors[key].dtype)
            full[masks[key]] = tensors[key].reshape(-1)
            tensors[key] = full
        for key, want in expected.items():
            if key not in tensors:
                continue
            value = tensors[key]
            if tuple(value.shape) != tuple(want.shape):
                raise RunError(f"weights file {path} does not match config.json: {key!r} has shape "
                               f"{tuple(value.shape)} in the weights, {tuple(want.shape)} in the model the "
                               "config builds; restore the run's config.json or its weights")
            if value.dtype != want.dtype and not (value.is_floating_point() and want.is_floating_point()):
                raise RunError(f"weights file {path} does not match config.json: {key!r} is {value.dtype} in the "
                               f"weights, {want.dtype} in the model; restore the run's config.json or its weights")
        module.load_state_dict(tensors, strict=False)  # every key is checked above; float16 is widened on copy

    def write_json(self, name: str, obj: Any) -> None:
        self.materialize()
        write_json(self.path / name, obj)

    def read_json(self, name: str) -> dict[str, Any]:
        path = self.path / name
        return json.loads(path.read_text()) if path.is_file() else {}
