"""Data-parallel training on PyTorch's own engine: ``torch.distributed`` process groups launched by ``torchrun``.

``torchrun --nproc_per_node=N -m pprogen train NAME ...`` starts N copies of the CLI; each one reads its
rank from the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``) and joins the process group through :func:`init`, with NCCL on GPUs and gloo on CPUs.
Without those variables (a plain ``pprogen`` or ``python`` process) nothing here does anything: the world
is one rank and the trainers take their single-process path.

How the trainers use it (:func:`pprogen.inference.fit`, :class:`pprogen.inference.AdversarialTrainer`):

- every rank draws the same permutation of the epoch (one shuffle generator with the same seed), cuts
  the step's *global* batch of ``batch_size x world size`` rows out of it, and keeps its own contiguous
  share (:func:`shard`), so the ranks' batches are disjoint and their union is the single-process batch;
- the loss module is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel`, which averages the
  gradients over the ranks; each rank scales its data-plate sites by ``N * world / global batch``, so the
  average is the single-process gradient of the global batch (global latents are counted once);
- random draws (particles, latents, generator noise) are reseeded per (seed, epoch, rank): independent
  across ranks, and reproducible after a resume on any number of ranks;
- only rank 0 writes (run folder, checkpoints, metrics, pictures) and shows progress bars; a checkpoint
  holds the parameters, optimizers, schedules and the shuffle generator, and nothing that depends on the
  number of ranks;
- every collective has a timeout (``--dist-timeout``), so a rank that dies makes the others stop with
  :class:`CollectiveError` instead of hanging; the last complete checkpoint stays on disk.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for the other ranks


class CollectiveError(RuntimeError):
    """A collective operation failed or timed out: another rank died, hung or could not be reached."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks; ``World()`` is the single-process world."""

    rank: int = 0
    size: int = 1
    timeout: float = DEFAULT_TIMEOUT

    @property
    def active(self) -> bool:
        """True when several ranks train together (a process group is up)."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    # ---------------------------------------------------------------- collectives (no-ops on one rank)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``tensor`` (in place; returned for convenience)."""
        if self.active:
            with collective("an all-reduce", self):
                dist.all_reduce(tensor)
        return tensor

    def total(self, value: float | torch.Tensor, device: torch.device | None = None) -> float:
        """The sum over ranks of a scalar (a float, or a one-element tensor whose device is used), as a
        float; on one rank the value itself."""
        if not self.active:
            return float(value)
        t = value.detach().reshape(1) if isinstance(value, torch.Tensor) else torch.tensor([value], device=device)
        return self.all_reduce_sum(t.to(torch.float64)).item()

    def mean_gradients(self, params: list[torch.Tensor]) -> None:
        """Average ``.grad`` of ``params`` over the ranks in one flat all-reduce (parameters DDP cannot see:
        ``pyro.param`` sites outside the loss module, the ``TraceGraph_ELBO`` path)."""
        grads = [p.grad for p in params if p.grad is not None]
        if not self.active or not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.all_reduce_sum(flat).div_(self.size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (checkpoints at resume, the run folder's path)."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        with collective("a broadcast", self):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_tensors(self, tensors: list[torch.Tensor]) -> None:
        """Overwrite ``tensors`` with rank 0's values."""
        if self.active:
            with collective("a broadcast", self), torch.no_grad():
                for t in tensors:
                    dist.broadcast(t.data, src=0)

    def load_checkpoint(self, run: Any) -> dict[str, Any]:
        """Rank 0's checkpoint of ``run`` (only rank 0 holds the run) on every rank. When rank 0 has no run, or
        its checkpoint cannot be read, every rank raises the same one-line error instead of waiting."""
        state, error = None, None
        if self.is_main:
            try:
                if run is None:
                    raise ValueError("resume=True needs the run to resume from (run=Run.open(path))")
                state = run.load_checkpoint()
            except Exception as err:  # every rank must learn of it, or the others would wait for the broadcast
                if not self.active:
                    raise
                error = err
        state, error = self.broadcast_object((state, error))
        if error is not None:
            raise error
        return state

    def gather_rows(self, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Concatenate every rank's ``local`` rows in rank order (rank r holds ``sizes[r]`` rows)."""
        if not self.active:
            return local
        width = max(sizes)
        padded = local.new_zeros((width, *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        with collective("an all-gather", self):
            dist.all_gather(parts, padded)
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    def rank_seed(self, seed: int | None, epoch: int) -> int:
        """The seed of this rank's random draws in ``epoch``: distinct per rank and per epoch."""
        return ((0 if seed is None else seed) * 1_000_003 + epoch) * 4_099 + self.rank


_FAILURE_WORDS = ("gloo", "nccl", "timed out", "connection closed", "connection reset", "broken pipe")


def is_collective_failure(err: BaseException) -> bool:
    """True for the errors a backend raises when a peer died or a collective timed out (gloo raises plain
    ``RuntimeError``s that name its transport; newer backends raise ``torch.distributed.DistError``)."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    return isinstance(err, RuntimeError) and any(word in str(err).lower() for word in _FAILURE_WORDS)


class collective:
    """Turns the backend's failure of a collective (a peer died, the timeout ran out) into one clear
    :class:`CollectiveError` that says what to do."""

    def __init__(self, what: str, world: World) -> None:
        self.what, self.world = what, world

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, tb) -> bool:
        if not self.world.active or err is None or isinstance(err, CollectiveError) or not is_collective_failure(err):
            return False
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CollectiveError(
            f"rank {self.world.rank} of {self.world.size}: {self.what} across ranks failed or timed out "
            f"(timeout {self.world.timeout:g} s): another rank probably died or hung ({first}). The run folder "
            "keeps the last complete checkpoint; resume it with --resume RUN, on any number of ranks"
        ) from None


def launched() -> bool:
    """True when torchrun (or another launcher) started this process as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> World:
    """The world of the process group already set up (one rank if none is)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), _timeout)
    return World()


_timeout = DEFAULT_TIMEOUT


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (a GPU when there is one, else the CPU), ``cpu`` or ``cuda``, checked."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use --device cpu")
    return device


def init(device: str | torch.device = "auto", timeout: float = DEFAULT_TIMEOUT) -> tuple[World, torch.device]:
    """Join the process group torchrun describes in the environment and pick this rank's device.

    ``device``: ``auto`` (a GPU per rank when there are GPUs, else the CPU), ``cpu`` or ``cuda``; NCCL
    serves GPUs and gloo CPUs. Returns the world and the device; without a launcher, ``(World(), device)``.
    """
    global _timeout
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"the collective timeout must be a positive number of seconds, got {timeout!r}")
    device = resolve_device(device)
    if not launched():
        return World(), device
    if not dist.is_available():
        raise RuntimeError("this torch build has no torch.distributed; install the PyPI torch wheel")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(f"local rank {local_rank} needs a GPU of its own but this machine has {count}; "
                             f"start at most {count} processes per node (torchrun --nproc_per_node={count})")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    _timeout = float(timeout)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout))
    return current(), device


def shutdown() -> None:
    """Leave the process group (at the end of a distributed command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(index: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's contiguous share of ``index`` (sizes differ by at most one across ranks)."""
    if not world.active:
        return index
    return torch.tensor_split(index, world.size)[world.rank]


def shard_sizes(n: int, world: World) -> list[int]:
    """How many of ``n`` rows each rank's :func:`shard` holds."""
    return [n // world.size + (r < n % world.size) for r in range(world.size)]


def shard_slice(n: int, world: World) -> slice:
    """This rank's :func:`shard` of ``n`` rows as a slice (a view of the data, no copy)."""
    sizes = shard_sizes(n, world)
    start = sum(sizes[: world.rank])
    return slice(start, start + sizes[world.rank])


def check_enough_data(num_data: int, world: World, what: str = "training data") -> None:
    """Each rank needs at least one example in every step."""
    if world.active and num_data < world.size:
        raise ValueError(f"the {what} have {num_data} examples but {world.size} ranks train on them; every rank "
                         f"needs at least one example per step: start at most {num_data} processes "
                         "(torchrun --nproc_per_node) or use more data")


def my_rows(n: int, world: World, what: str = "evaluation data") -> slice:
    """This rank's share of ``n`` rows to evaluate, after checking that every rank gets at least one."""
    check_enough_data(n, world, what)
    return shard_slice(n, world)


def gather_shards(local: torch.Tensor | None, n: int, world: World) -> torch.Tensor | None:
    """Every rank's results for its :func:`my_rows` of ``n`` rows, in data order, on ``local``'s device (the
    all-gather itself runs where the backend needs it: the GPU for NCCL)."""
    if local is None or not world.active:
        return local
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return world.gather_rows(local.to(device), shard_sizes(n, world)).to(local.device)
