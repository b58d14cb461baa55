"""The readers of a user's file formats, each checking what a file declares before it allocates for it.

Only regular files are read (a link is followed first): a device (``/dev/zero``), a FIFO, a socket or a folder
is refused before it is opened for reading, and the file opened is checked again, so nothing can block or
stream forever. The data read from one file is capped at :func:`max_data_bytes` (4 GiB, or
``$PPROGEN_MAX_DATA_BYTES``), counting each value at least as a float32 (every array becomes one):

- ``.npy``: the header (shape, dtype) is read first and checked against the cap and against the bytes the
  file holds; then the data;
- ``.npz``: the declared (uncompressed) sizes of the zip members and each member's ``.npy`` header are read
  first, so an archive that inflates a thousandfold is refused unread;
- ``.pt``: only torch.save's zip format (the legacy format sizes its storages from the pickle); the file size
  and the zip's declared sizes are bounded, ``torch.load(weights_only=True)`` reads it (never a full
  unpickler), and each tensor's element count is bounded (a view may repeat one stored value);
- ``.csv``: the file size and the line length (1/64 of the cap) are bounded and the rows are parsed one at a
  time within the cap;
- images: the pixel count in the header is checked against ``PIL.Image.MAX_IMAGE_PIXELS`` before decoding.

Values must be real numbers: bool, integers and floats are read (in any byte order); complex, text, object,
record and date arrays are refused. Each problem is one line of :class:`DataError` naming the file, the
problem and the fix.
"""

from __future__ import annotations

import math
import os
import re
import stat
import warnings
import zipfile
from array import array
from pathlib import Path
from typing import BinaryIO, NoReturn

import numpy as np
import torch

from pprogen.data.dataset import DataError

MAX_BYTES_ENV = "PPROGEN_MAX_DATA_BYTES"
DEFAULT_MAX_BYTES = 4 * 2**30
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_KINDS = {stat.S_ISDIR: "a folder", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
          stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISSOCK: "a socket"}
_DTYPE_KINDS = {"c": "complex numbers", "U": "text", "S": "bytes", "O": "Python objects", "V": "records",
                "M": "dates", "m": "time spans"}


def max_data_bytes() -> int:
    """The most bytes of data read from one file: ``$PPROGEN_MAX_DATA_BYTES`` (bytes, or with a K, M, G or T
    suffix in powers of 1024), else 4 GiB."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    match = re.fullmatch(r"(\d+(?:\.\d*)?)\s*([kKmMgGtT]?)(?:i?[bB])?", text)
    if not match or float(match[1]) * _UNITS[match[2].lower()] < 1:
        raise DataError(f"{MAX_BYTES_ENV}={text!r} is not a size; give a number of bytes, e.g. "
                        f"{MAX_BYTES_ENV}=16G (or unset it for the default of 4G)")
    return int(float(match[1]) * _UNITS[match[2].lower()])


def size_text(nbytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


class Budget:
    """The bytes of data one file may still decode to; ``take`` refuses, in one line, what would pass the cap."""

    def __init__(self, path: Path, cap: int | None = None):
        self.path, self.cap, self.used = path, max_data_bytes() if cap is None else cap, 0

    def check(self, nbytes: int, what: str) -> None:
        """Refuse ``nbytes`` alone over the cap (a bound on the file, not counted against the budget)."""
        if nbytes > self.cap:
            need, cap = size_text(nbytes), size_text(self.cap)
            if need == cap:
                need, cap = f"{nbytes} bytes", f"{self.cap} bytes"
            raise DataError(f"data file {self.path}: {what} would take {need}, over the {cap} read from one file at "
                            f"most; if the file is trusted, raise the limit with {MAX_BYTES_ENV} (e.g. "
                            f"{MAX_BYTES_ENV}=16G)")

    def take(self, nbytes: int, what: str) -> None:
        self.used += nbytes
        self.check(self.used, what)

    def take_array(self, shape: tuple[int, ...], itemsize: int, what: str) -> None:
        self.take(math.prod(shape) * max(itemsize, 4), f"{what} of shape {tuple(shape)}")


def check_regular(path: Path, folder_ok: bool = False) -> os.stat_result:
    """``path``'s status after following links; a DataError unless it is a regular file (or a folder when
    ``folder_ok``). Nothing is opened: a FIFO or a device is refused before it could block or stream."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"data file {path} does not exist") from None
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        raise DataError(f"cannot read data file {path} ({getattr(err, 'strerror', None) or first_line(err)}); check "
                        "the path and its permissions") from None
    if stat.S_ISREG(status.st_mode) or (folder_ok and stat.S_ISDIR(status.st_mode)):
        return status
    _refuse_kind(path, status)


def _refuse_kind(path: Path, status: os.stat_result) -> NoReturn:
    kind = next((name for test, name in _KINDS.items() if test(status.st_mode)), "not a file")
    target = f" (a link to {os.path.realpath(path)})" if os.path.islink(path) else ""
    raise DataError(f"data file {path}{target} is {kind}, not a regular file; copy the data into a regular file "
                    "and pass that")


def open_regular(path: Path) -> tuple[BinaryIO, int]:
    """A regular file opened for reading (to close: ``with handle:``), and its size; checked before opening, and
    after (opened without blocking, should it have been replaced by a FIFO in between)."""
    check_regular(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise DataError(f"cannot open data file {path} ({err.strerror or type(err).__name__}); check its "
                        "permissions") from None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):  # replaced between the two looks
        os.close(fd)
        _refuse_kind(path, status)
    return os.fdopen(fd, "rb"), status.st_size


def check_dtype(dtype: np.dtype, where: str) -> None:
    """Refuse, in one line, values that are not real numbers."""
    if dtype.kind in "biuf":
        return
    what = _DTYPE_KINDS.get(dtype.kind, "values of another kind")
    fix = ("give real numbers (for example the real and imaginary parts as two columns)" if dtype.kind == "c"
           else "give a numeric array (bool, integers or floats)")
    raise DataError(f"{where} holds {what} (dtype {dtype}), not numbers pprogen can use; {fix}")


def to_tensor(values: np.ndarray) -> torch.Tensor:
    """A checked array as a tensor: native byte order, and the dtypes torch lacks widened."""
    if values.dtype.kind == "f" and values.dtype.itemsize > 8:
        values = values.astype(np.float64)
    elif values.dtype.kind == "u" and values.dtype.itemsize > 1:  # torch's wide unsigned types lack most ops
        values = values.astype(np.float64 if values.dtype.itemsize == 8 else np.int64)
    elif not values.dtype.isnative:
        values = values.astype(values.dtype.newbyteorder("="))
    return torch.from_numpy(values)


def _npy_header(handle: BinaryIO, where: str) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype a ``.npy`` stream declares (its data is not read); the stream is left after the header."""
    fmt = np.lib.format
    try:
        start = handle.tell()
        if handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC:
            raise DataError(f"{where} is a .npz archive, not a .npy array; rename it to .npz")
        handle.seek(start)
        version = fmt.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(handle)
        else:
            raise DataError(f"{where} is a .npy array of format version {version}, which pprogen does not read; "
                            "save it again with numpy.save")
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"cannot read {where}: it is not a .npy array ({first_line(err)}); save it with "
                        "numpy.save") from None
    check_dtype(dtype, where)
    return tuple(shape), dtype


def _checked_npy(handle: BinaryIO, available: int, budget: Budget, where: str,
                 label: str = "the array") -> tuple[tuple[int, ...], np.dtype]:
    """The header of a ``.npy`` stream, checked against the bytes that follow it and against the budget."""
    shape, dtype = _npy_header(handle, where)
    needed = math.prod(shape) * dtype.itemsize
    if needed > available - handle.tell():
        raise DataError(f"{where} declares shape {shape} of {dtype} ({size_text(needed)}) but holds "
                        f"{size_text(max(available - handle.tell(), 0))} of data: the file is truncated or damaged; "
                        "save it again")
    budget.take_array(shape, dtype.itemsize, label)
    return shape, dtype


def read_npy(path: Path, budget: Budget) -> np.ndarray:
    handle, size = open_regular(path)
    with handle:
        _checked_npy(handle, size, budget, f"data file {path}")
        handle.seek(0)
        return np.lib.format.read_array(handle, allow_pickle=False)


def read_npz(path: Path, budget: Budget) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz``, by name; every member's declared size and header are checked before any data
    is inflated."""
    handle, _ = open_regular(path)
    with handle:
        if handle.read(len(NPY_MAGIC)) == NPY_MAGIC:
            raise DataError(f"data file {path} is a .npy array, not a .npz archive; rename it to .npy")
        handle.seek(0)
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as err:
            raise DataError(f"data file {path} is not a .npz archive ({first_line(err)}); save it with "
                            "numpy.savez") from None
        with archive:
            members = [info for info in archive.infolist() if not info.is_dir()]
            budget.check(sum(info.file_size for info in members), "its members, inflated,")
            for info in members:
                if not info.filename.endswith(".npy"):
                    raise DataError(f"data file {path} holds {info.filename!r}, which is not a .npy array; a .npz "
                                    "holds only arrays (save it with numpy.savez)")
            for info in members:
                with archive.open(info) as member:
                    label = f"array {info.filename[:-4]!r}"
                    _checked_npy(member, info.file_size, budget, f"{label} of data file {path}", label)
            arrays = {}
            for info in members:
                with archive.open(info) as member:
                    arrays[info.filename[:-4]] = np.lib.format.read_array(member, allow_pickle=False)
            return arrays


_TORCH_INTS = {torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16,
               torch.uint32, torch.uint64}


def read_pt(path: Path, budget: Budget) -> dict[str, torch.Tensor]:
    """A ``.pt`` holding a tensor (read as ``x``) or a dict of named tensors, loaded with ``weights_only``."""
    handle, size = open_regular(path)
    with handle:
        budget.check(size, "the file")
        if handle.read(len(ZIP_MAGIC)) != ZIP_MAGIC:  # the legacy format sizes its storages from the pickle
            raise DataError(f"data file {path} is not a .pt file of torch.save's zip format (PyTorch 1.6 and later); "
                            "load it and save it again with torch.save")
        handle.seek(0)
        try:
            with zipfile.ZipFile(handle) as archive:
                budget.check(sum(info.file_size for info in archive.infolist()), "its records, inflated,")
        except zipfile.BadZipFile as err:
            raise DataError(f"data file {path} is a damaged .pt file ({first_line(err)}); save it again") from None
        handle.seek(0)
        try:
            with warnings.catch_warnings():  # sparse tensors are refused below; a damaged pickle is refused anyway
                warnings.filterwarnings("ignore", "Validating sparse tensor invariants", UserWarning)
                warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
                loaded = torch.load(handle, map_location="cpu", weights_only=True)
        except Exception as err:
            message = str(err)
            if "Weights only load failed" in message:
                reason = next((line.split("error:", 1)[1].strip() for line in message.splitlines()
                               if "WeightsUnpickler error:" in line), "objects other than tensors")
                raise DataError(f"data file {path} holds more than tensors ({reason.split('. ')[0]}); pprogen reads "
                                ".pt files without unpickling, so save a tensor or a dict of named tensors") from None
            raise
    arrays = loaded if isinstance(loaded, dict) else {"x": loaded}
    if not isinstance(loaded, (dict, torch.Tensor)):
        raise DataError(f"data file {path} holds {_a(type(loaded).__name__)}, not a tensor; save a tensor or a dict of "
                        "named tensors (torch.save({'x': x, 'y': y}, path))")
    out = {}
    for name, value in arrays.items():
        if not isinstance(name, str):
            raise DataError(f"data file {path} names an array {name!r}; name every array with a string")
        where = f"{name!r} in data file {path}"
        if not isinstance(value, torch.Tensor):
            raise DataError(f"{where} is {_a(type(value).__name__)}, not a tensor; save it as a tensor "
                            "(torch.as_tensor)")
        if value.layout != torch.strided or value.is_nested or value.is_quantized:
            raise DataError(f"{where} is a {str(value.layout).removeprefix('torch.')} tensor; save a dense one "
                            "(.to_dense(), .dequantize())")
        if value.is_complex() or not (value.dtype.is_floating_point or value.dtype in _TORCH_INTS):
            check_dtype(np.dtype(np.complex64) if value.is_complex() else np.dtype(object), where)
        budget.take_array(tuple(value.shape), value.element_size(), f"tensor {name!r}")
        value = value.detach()
        if value.dtype in (torch.uint16, torch.uint32, torch.uint64):
            value = value.to(torch.float64 if value.dtype == torch.uint64 else torch.int64)
        out[name] = value
    return out


def read_csv(path: Path, budget: Budget) -> torch.Tensor:
    """Rows of comma-separated numbers (an empty cell is NaN, a missing value), after an optional header line;
    ``#`` starts a comment. One line of DataError naming the line and column of a cell that is no number.

    Parsing a line takes about 40 bytes a character (a Python object a cell), so a line is at most 1/64 of the cap
    (64 MiB by default), and the values read so far are within the cap."""
    handle, size = open_regular(path)
    with handle:
        budget.check(size, "the text")
        longest = max(budget.cap // 64, 1024)
        values, width, rows = array("d"), None, 0
        for number, line in enumerate(iter(lambda: handle.readline(longest + 1), b""), 1):
            if len(line) > longest:
                raise DataError(f"data file {path}: line {number} is longer than {size_text(longest)}, the longest "
                                f"line read under a limit of {size_text(budget.cap)} (parsing a line takes about 40 "
                                f"bytes a character); save the data as .npy, or raise the limit with {MAX_BYTES_ENV}")
            text = line.split(b"#", 1)[0].strip()
            if number == 1:
                text = text.removeprefix(b"\xef\xbb\xbf").strip()
            if not text:
                continue
            cells = text.split(b",")
            try:
                row = [float(cell) for cell in cells]
            except ValueError:
                row = _cells(cells, path, number, header_ok=rows == 0 and width is None)
                if row is None:  # the header
                    width = len(cells)
                    continue
            if rows and len(row) != width:
                raise DataError(f"data file {path}: line {number} has {len(row)} cells but the rows before it have "
                                f"{width}; give every row the same number of cells")
            width = len(row)
            values.extend(row)
            rows += 1
            budget.take(8 * len(row), "its values")
    if not rows:
        raise DataError(f"data file {path} holds no rows of numbers; give one example a line, numbers separated by "
                        "commas")
    return torch.from_numpy(np.frombuffer(values, dtype=np.float64).reshape(rows, width))


def _cells(cells: list[bytes], path: Path, number: int, header_ok: bool) -> list[float] | None:
    """A row whose cells are numbers or empty (NaN); None for a header line; else a DataError naming the cell."""
    row = []
    for column, cell in enumerate(cells, 1):
        cell = cell.strip()
        try:
            row.append(float(cell) if cell else math.nan)
        except ValueError:
            if header_ok:
                return None
            shown = cell.decode("utf-8", "replace")[:20]
            raise DataError(f"data file {path}: line {number}, column {column} holds {shown!r}, not a number; give "
                            "numbers separated by commas (an empty cell is a missing value)") from None
    return row


def read_images(paths: list[Path], budget: Budget) -> list[np.ndarray]:
    """The images' pixels, each decoded once its header's pixel count has passed ``PIL.Image.MAX_IMAGE_PIXELS``
    and the budget."""
    from PIL import Image

    with warnings.catch_warnings():  # once: entering it costs more than decoding a small image
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused in read_image, in one line
        return [_read_image(path, budget) for path in paths]


def _read_image(path: Path, budget: Budget) -> np.ndarray:
    from PIL import Image

    handle, _ = open_regular(path)
    with handle:
        try:
            with Image.open(handle) as image:
                width, height = image.size
                if Image.MAX_IMAGE_PIXELS is not None and width * height > Image.MAX_IMAGE_PIXELS:
                    _refuse_bomb(path, f"{width * height} pixels ({width}x{height})")
                budget.take_array((len(image.getbands()), height, width), 1, f"image {path.name}")
                return np.asarray(image)
        except DataError:
            raise
        except Image.DecompressionBombError as err:  # PIL's own check, at twice the limit, while opening
            found = re.search(r"\((\d+) pixels\)", str(err))
            _refuse_bomb(path, f"{found[1]} pixels" if found else "too many pixels")
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
            raise DataError(f"cannot read image {path} ({first_line(err)}); give a readable image file") from None


def _refuse_bomb(path: Path, size: str) -> NoReturn:
    from PIL import Image

    raise DataError(f"image {path} has {size}, over PIL's limit of {Image.MAX_IMAGE_PIXELS} pixels "
                    "(PIL.Image.MAX_IMAGE_PIXELS), a guard against decompression bombs; shrink the image, or raise "
                    "PIL.Image.MAX_IMAGE_PIXELS if it is trusted") from None


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err).strip() else type(err).__name__
