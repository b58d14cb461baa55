"""What the benchmarks share: binarized MNIST from ../shared/data when present (else random binary images), timing on a
device, and :func:`record`, which every benchmark calls at its end to write what it printed to
``benchmarks/results/<script>[-<variant>].json`` with the command, date, machine and commit (the documentation's
measurements page is generated from those files).
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NO_RECORD = "PPROGEN_NO_RECORD"  # set to 1: a benchmark prints its table and writes no result file


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work (timings on CUDA are otherwise launch times)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """``(seconds, fn())``: the seconds ``fn()`` takes with the device's queue drained before and after."""
    sync(device)
    start = time.perf_counter()
    value = fn()
    sync(device)
    return time.perf_counter() - start, value


def binarized_mnist_or_random() -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(train, valid, name)`` as flat ``(N, 784)`` float tensors."""
    folder = Path(__file__).resolve().parents[2] / "shared" / "data"
    if (folder / "binarized_mnist.npz").is_file():
        from pprogen.data import load_binarized_mnist

        ds = load_binarized_mnist(folder, download=False)
        return ds.train.reshape(-1, 784), ds.valid.reshape(-1, 784), "binarized_mnist"
    data = (torch.rand(12000, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float()
    return data[:10000], data[10000:], "random binary data"


# -- result files ---------------------------------------------------------------------------------------------------

def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """One table of a result file: a title, the column names and rows of strings or numbers (as printed)."""
    columns = [str(c) for c in columns]
    rows = [list(r) for r in rows]
    for r in rows:
        if len(r) != len(columns):
            raise ValueError(f"table {title!r}: a row of {len(r)} cells under {len(columns)} columns: {r}")
        for cell in r:
            if cell is not None and not isinstance(cell, (str, int, float)):
                raise TypeError(f"table {title!r}: cell {cell!r} is a {type(cell).__name__}; give a string or number")
    return {"title": str(title), "columns": columns, "rows": rows}


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine(device: torch.device | str | None = None) -> dict[str, Any]:
    """What ran it: platform, CPU model, logical cores, torch threads, device (with the GPU's name), versions."""
    import pyro

    device = torch.device(device or "cpu")
    name = device.type
    if device.type == "cuda" and torch.cuda.is_available():
        name = f"cuda ({torch.cuda.get_device_name(device)})"
    return {"platform": platform.platform(), "cpu": _cpu_model(), "logical_cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": name, "torch": torch.__version__,
            "pyro": pyro.__version__, "python": platform.python_version()}


def git_commit(root: Path = ROOT) -> dict[str, Any] | None:
    """The checkout's commit and whether ``pprogen/`` or ``benchmarks/`` differ from it; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return None
        diff = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "pprogen", "benchmarks"], cwd=root,
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head.stdout.strip(), "uncommitted_changes": diff.returncode != 0}


def _plain(value: Any) -> Any:
    """An argument's value as JSON holds it (paths, devices and other objects as their text)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def result_file(script: str | os.PathLike, variant: str | None = None,
                device: torch.device | str | None = None) -> str:
    """``<script stem>[-<variant>][-<device type>].json``: a run on another device never overwrites a CPU run."""
    parts = [Path(script).stem]
    if variant:
        parts.append(str(variant).replace(" ", "_").replace("/", "_"))
    if device is not None and torch.device(device).type != "cpu":
        parts.append(torch.device(device).type)
    return "-".join(parts) + ".json"


def make_record(script: str | os.PathLike, tables: Sequence[dict[str, Any]], notes: Sequence[str] = (),
                args: Any = None, device: torch.device | str | None = None, argv: Sequence[str] | None = None,
                when: datetime | None = None) -> dict[str, Any]:
    """The content of a result file: script, exact command, UTC date, machine, commit, the tables and notes."""
    if not tables:
        raise ValueError("a result needs at least one table")
    argv = list(sys.argv if argv is None else argv)
    script_path = f"benchmarks/{Path(script).name}"
    settings = vars(args) if args is not None and hasattr(args, "__dict__") else (args or {})
    return {
        "script": script_path,
        "command": shlex.join(["python", script_path, *argv[1:]]),
        "date": (when or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(device),
        "git": git_commit(),
        "arguments": {str(k): _plain(v) for k, v in settings.items()},
        "tables": [table(t["title"], t["columns"], t["rows"]) for t in tables],
        "notes": [str(n) for n in notes],
    }


def dumps(value: Any, depth: int = 0) -> str:
    """JSON with sorted keys, one key a line, and each list of plain values (a table's row) on one line."""
    pad, inner = " " * depth, " " * (depth + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {dumps(value[k], depth + 1)}" for k in sorted(value)]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(f"{inner}{dumps(v, depth + 1)}" for v in value) + f"\n{pad}]"
    return json.dumps(value, ensure_ascii=False)


def write_record(content: dict[str, Any], path: Path) -> Path:
    """Write a result atomically (a temporary file in the same folder, then ``os.replace``): a killed run leaves the
    previous file whole. Sorted keys and a fixed layout (:func:`dumps`), so two runs differ only where they differ."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(content) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def record(script: str | os.PathLike, tables: Sequence[dict[str, Any]], notes: Sequence[str] = (), args: Any = None,
           variant: str | None = None, device: torch.device | str | None = None,
           folder: Path = RESULTS) -> Path | None:
    """Write what a benchmark printed to ``folder/<script>[-<variant>][-<device>].json`` (see :func:`make_record`).

    Only when ``script`` is the program being run (``python benchmarks/x.py ...``): a test or another script that
    calls a benchmark's ``main`` writes nothing, and neither does a run with ``PPROGEN_NO_RECORD=1``. Returns the
    path written, or None.
    """
    if os.environ.get(NO_RECORD, "") not in ("", "0"):
        return None
    if not sys.argv or Path(sys.argv[0]).resolve() != Path(script).resolve():
        return None
    path = write_record(make_record(script, tables, notes, args, device), Path(folder) / result_file(script, variant,
                                                                                                       device))
    print(f"result: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path
