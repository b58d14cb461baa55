"""A model's weights as safetensors: read back without running any code, and the compact forms a shipped folder
stores (buffers the config rebuilds left out with their digests, masked weights packed to the entries their masks
let through, float16, or int8 with a float32 scale per block of entries)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from pprogen.runfiles.checks import check_scales, check_weights_metadata
from pprogen.runfiles.errors import RunError

REBUILT = "pprogen_rebuilt"  # weights metadata: {name: digest} of buffers left out, which config.json rebuilds
PACKED = "pprogen_packed"  # weights metadata: [name] of parameters stored as their entries inside the model's mask
QUANTIZED = "pprogen_int8"  # weights metadata: [name] of tensors stored as int8, a float32 scale per block of entries
SCALE = ".int8_scale"  # the key of a quantized tensor's block scales: its name + SCALE
INT8_BLOCK = 256  # entries per int8 scale: 1.6 % more bytes than the int8 values alone


def state_tensors(module: Any) -> dict[str, torch.Tensor]:
    """``module``'s state as contiguous CPU tensors (nothing for what is not a module)."""
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
        packed = json.loads(metadata.get(PACKED, "[]"))
        quantized = json.loads(metadata.get(QUANTIZED, "[]"))
    except Exception as err:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise RunError(f"weights file {path} is unreadable or corrupted ({first})") from None
    check_weights_metadata(rebuilt, packed, quantized, path)
    for name in quantized:  # int8 blocks back to floats: the model reads them as it read the float weights
        q, scale = tensors.get(name), tensors.pop(name + SCALE, None)
        if q is None or scale is None or q.dtype != torch.int8 or scale.shape != (-(-q.numel() // INT8_BLOCK),):
            raise RunError(f"weights file {path} lists {name!r} as int8 but lacks it or its block scales "
                           f"({name + SCALE!r}); the file is damaged: ship the run again")
        check_scales(name, scale, path)
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


def weight_masks(module: Any) -> dict[str, torch.Tensor]:
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
    state = state_tensors(module)
    fresh_masks = weight_masks(fresh)  # packed only where the same config builds the same mask on loading
    masks = {k: m for k, m in weight_masks(module).items() if k in fresh_masks and torch.equal(m, fresh_masks[k])}
    for name, mask in masks.items():
        state[name] = state[name][mask]
    fresh_state = state_tensors(fresh)
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


def load_weights_into(module: torch.nn.Module, path: Path) -> None:
    """The weights file ``path`` into ``module``, each tensor checked against the model: names, the buffers rebuilt
    from config.json (by digest), packed tensors against the model's masks, shapes and dtypes."""
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
    masks = weight_masks(module) if packed else {}
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
