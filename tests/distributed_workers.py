"""Scenarios that tests/test_distributed.py runs on several CPU processes (gloo), and the launcher.

Each scenario runs in a spawned process that has joined the process group exactly as under ``torchrun``
(the same environment variables, then :func:`pprogen.distributed.init`) and saves what it wants checked to
``<out>/rank<r>.pt``.
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, size: int, port: int, scenario: str, out: str, kw: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from pprogen import distributed

    try:
        world, _ = distributed.init("cpu", timeout=kw.pop("timeout", 60))
        result = SCENARIOS[scenario](world, Path(out), **kw)
    except BaseException as err:  # the test reads the error of each rank
        result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    sys.stdout.flush()
    os._exit(0)  # skip the process group's teardown (a dead peer would make it wait)


def launch(scenario: str, size: int, out: Path, timeout_s: float = 240, **kw) -> list[dict]:
    """Run ``scenario`` on ``size`` spawned ranks; returns each rank's result (``{"missing": ...}`` for a
    rank that left none)."""
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, size, port, scenario, str(out), dict(kw))) for r in range(size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout_s)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    results = []
    for r in range(size):
        path = out / f"rank{r}.pt"
        results.append(torch.load(path, weights_only=False) if path.exists() else {"missing": f"rank {r} left no result"})
        if path.exists():
            path.unlink()
    return results


# ---------------------------------------------------------------- models


def regression_data(n: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.5, -0.5], dtype=torch.float64) + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    return torch.cat([x, y[:, None]], 1)


def regression(data: torch.Tensor) -> None:
    """A global latent ``w`` (counted once per step, not once per rank) and a ``pyro.param`` outside any
    module (its gradient is averaged by hand); the data plate is subsampled."""
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=data.dtype), 1.0).to_event(1))
    sigma = pyro.param("sigma", torch.tensor(1.0, dtype=data.dtype), constraint=dist.constraints.positive)
    with pyro.plate("data", data.shape[0]):
        pyro.sample("y", dist.Normal(data[:, :2] @ w, sigma), obs=data[:, 2])


def fit_regression(world, out: Path, batch_size: int, epochs: int, run: str | None = None, resume: bool = False,
                   die_after: int | None = None, elbo: str = "trace") -> dict:
    """MAP fit (AutoDelta, a lazily built guide): the loss has no noise, so runs on different numbers of
    ranks can be compared number for number."""
    from pyro.infer.autoguide import AutoDelta

    from pprogen.inference import fit
    from pprogen.runs import Run

    torch.set_default_dtype(torch.float64)
    pyro.clear_param_store()
    guide = AutoDelta(regression)
    folder = None
    if run is not None and world.is_main:
        folder = Run.open(run) if resume else Run.create({"model": "regression"}, run)

    def stop(epoch, record):
        if die_after is not None and epoch == die_after:
            os._exit(0)  # killed right after the checkpoint of this epoch

    fit(regression, guide, regression_data(), epochs=epochs, batch_size=batch_size, lr=0.05, progress=False,
        device="cpu", seed=0, run=folder, resume=resume, callback=stop, world=world, elbo=elbo)
    store = pyro.get_param_store()
    return {name: store[name].detach().clone() for name in sorted(store.keys())}


def fit_vae(world, out: Path, epochs: int = 2, run: str | None = None, resume: bool = False,
            die_after: int | None = None, die_rank: int | None = None) -> dict:
    """A VAE with an amortized guide built lazily, the stochastic Trace_ELBO (each rank draws its own
    noise): after training every rank must hold the same parameters, bit for bit."""
    import pprogen
    from pprogen.inference import fit, make_guide
    from pprogen.runs import Run

    torch.manual_seed(0)
    model = pprogen.create_model("vae", x_dim=12, z_dim=2, hidden_dims=(16,))
    guide = make_guide("amortized_normal", model)
    data = (torch.rand(60, 12, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    folder = None
    if run is not None and world.is_main:
        folder = Run.open(run) if resume else Run.create({"model": "vae"}, run)

    def stop(epoch, record):
        if die_after is not None and epoch == die_after and die_rank in (None, world.rank):
            os._exit(0)

    try:
        fit(model, guide, data, epochs=epochs, batch_size=8, progress=False, device="cpu", seed=0, run=folder,
            resume=resume, callback=stop, world=world)
    except Exception as err:
        return {"error": f"{type(err).__name__}: {err}"}
    return {**{f"model.{k}": v.clone() for k, v in model.state_dict().items()},
            **{f"guide.{k}": v.clone() for k, v in guide.state_dict().items()}}


def rank_noise(world, out: Path, epochs: int = 2) -> dict:
    """The noise behind each rank's latent draws in training (the VAE's ``z`` at every step): per-rank
    reseeding must give the ranks different noise, and the same noise on every run."""
    import pprogen
    from pprogen.inference import fit

    torch.manual_seed(0)
    model = pprogen.create_model("vae", x_dim=12, z_dim=2, hidden_dims=(16,))
    guide = model.default_guide()
    draws = []

    class Record(pyro.poutine.messenger.Messenger):
        def _pyro_post_sample(self, msg):
            base = getattr(msg["fn"], "base_dist", None)
            if msg["name"] == "z" and torch.is_grad_enabled() and base is not None and base.loc.requires_grad:
                # the guide's draw (its loc comes from the encoder): keep the standard normal noise behind it
                draws.append(((msg["value"] - base.loc) / base.scale).detach().clone())

    data = (torch.rand(64, 12, generator=torch.Generator().manual_seed(1)) < 0.3).float()
    with Record():
        fit(model, guide, data, epochs=epochs, batch_size=8, progress=False, device="cpu", seed=0, world=world)
    return {"draws": torch.stack(draws)}


def train_gan(world, out: Path, loss: str = "nonsaturating", r1_weight: float = 0.0, epochs: int = 2,
              run: str | None = None, resume: bool = False, die_after: int | None = None) -> dict:
    """The adversarial trainer on the ring: G and D must agree across ranks bit for bit, the gradient
    penalty and R1 included; the moving average lives on rank 0."""
    import pprogen
    from pprogen.data import load_dataset
    from pprogen.inference import AdversarialTrainer
    from pprogen.runs import Run

    torch.manual_seed(0)
    model = pprogen.create_model("gan", hidden_dims=(32, 32), d_hidden_dims=(32, 32))
    trainer = AdversarialTrainer(model, loss=loss, r1_weight=r1_weight, batch_size=16, device="cpu", seed=0,
                                 progress=False, world=world)
    folder = None
    if run is not None and world.is_main:
        folder = Run.open(run) if resume else Run.create({"model": "gan"}, run)

    def stop(epoch, record):
        if die_after is not None and epoch == die_after:
            os._exit(0)

    trainer.fit(load_dataset("ring8").train[:256], epochs=epochs, run=folder, resume=resume, callback=stop)
    return {k: v.clone() for k, v in model.state_dict().items()} | {"ema_updates": trainer.ema_updates}


def evaluate_rows(world, out: Path, n: int = 13) -> dict:
    """Sharded importance-sampled evidence, gathered back in data order."""
    import pprogen
    from pprogen.inference.evaluate import sharded_log_marginal

    import pprogen.inference.marginal as marginal

    torch.manual_seed(0)
    model = pprogen.create_model("ppca", x_dim=3, z_dim=1)
    data = torch.randn(n, 3, generator=torch.Generator().manual_seed(2))
    estimated = []  # the rows this rank estimated itself
    original = marginal.log_marginal

    def counted(model, guide, rows, **kw):
        estimated.append(rows.shape[0])
        return original(model, guide, rows, **kw)

    marginal.log_marginal = counted
    try:
        evidence = sharded_log_marginal(model, model.default_guide(), data, world, num_samples=4000)
    finally:
        marginal.log_marginal = original
    return {"log_prob": evidence.log_prob, "exact": model.log_prob(data).detach(), "estimated": estimated}


def evaluate_exact(world, out: Path, limit: int) -> dict:
    """The CLI's evaluation of a model with an exact log p(x), sharded: each rank scores its rows."""
    import pprogen
    from pprogen.engine import evaluate_split
    from pprogen.data import load_dataset

    torch.manual_seed(0)
    model = pprogen.create_model("realnvp", num_layers=2, hidden_dims=(8,))
    dataset = load_dataset("moons")
    with torch.no_grad():
        model.log_prob(dataset.train[:256])  # ActNorm's data-dependent initialization, as in a trained model
    scored = []
    original = model.log_prob
    model.log_prob = lambda rows: (scored.append(rows.shape[0]), original(rows))[1]
    try:
        result = evaluate_split(model, model.default_guide(), dataset, "test", 10, torch.device("cpu"), limit=limit,
                           world=world)
    except ValueError as err:
        return {"error": str(err)}
    with torch.no_grad():
        exact = -original(dataset.test[:limit]).double().mean().item()
    return {"nll": result["nll"], "num_data": result["num_data"], "exact": exact, "scored": sum(scored)}


def too_little_data(world, out: Path) -> dict:
    from pprogen.inference import fit

    pyro.clear_param_store()
    from pyro.infer.autoguide import AutoDelta

    fit(regression, AutoDelta(regression), regression_data(n=1), epochs=1, progress=False, device="cpu",
        world=world)
    return {}


SCENARIOS = {"fit_regression": fit_regression, "fit_vae": fit_vae, "train_gan": train_gan,
             "evaluate_rows": evaluate_rows, "evaluate_exact": evaluate_exact, "too_little_data": too_little_data,
             "rank_noise": rank_noise}
