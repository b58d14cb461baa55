"""Where a training step's time goes: a profile of the SVI steps of ``vae``, ``maf`` and ``made`` (run as the
Pyro program every step, and replayed) and of the adversarial steps of ``dcgan`` and the 2-D MLP ``gan``,
grouped by what spends it.

Groups (cProfile's own time of each function, summed): the backward pass (autograd's engine), the optimizer,
Pyro's effect handlers and plates, distribution objects (torch's and Pyro's), pprogen's estimator and tracing,
network modules' Python (``nn.Module`` calls), the replayed step's own Python, tensor operations called from
Python (their C++ time included), and the rest. cProfile inflates Python's share; read the groups against each
other, and ``bench_step_overhead.py`` for wall-clock ratios.
Run: ``python benchmarks/profile_step.py [--steps 200 --models vae,maf,made,dcgan,gan]``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
from collections import defaultdict

import pyro
import torch

import pprogen
from common import record, table
from pprogen.inference.adversarial import AdversarialTrainer
from pprogen.inference.train import TrainStep, build_loss, collect_parameters, make_optimizer

BATCH = 128
SETTLE = 60
SVI_MODELS = {
    "vae": dict(x_dim=784, z_dim=50, hidden_dims=(400, 400)),
    "maf": dict(x_dim=784),
    "made": dict(x_dim=784),
}
GROUPS = ("backward", "optimizer", "pyro handlers", "distributions", "pprogen estimator", "nn.Module calls",
          "replayed step", "tensor ops", "other")


def group_of(filename: str, name: str) -> str:
    if "run_backward" in name:
        return "backward"
    if "torch/optim" in filename:
        return "optimizer"
    if "pyro/poutine" in filename or "pyro/primitives" in filename or "pyro/nn" in filename:
        return "pyro handlers"
    if "distributions" in filename:
        return "distributions"
    if "pprogen/inference" in filename:
        return "pprogen estimator"
    if "torch/nn/modules" in filename:
        return "nn.Module calls"
    if "pprogen replayed step" in filename:
        return "replayed step"
    if filename == "~" and ("torch" in name or "Tensor" in name or "PyCapsule" in name or "_op" in name):
        return "tensor ops"
    return "other"


def profile(step, batches) -> dict[str, float]:
    for x in batches[:SETTLE]:  # settle: lazy state, the replay's recording (after 50 steps) and first check
        step(x)
    profiler = cProfile.Profile()
    profiler.enable()
    for x in batches[SETTLE:]:
        step(x)
    profiler.disable()
    totals: dict[str, float] = defaultdict(float)
    for (filename, _, name), (_, _, own, _, _) in pstats.Stats(profiler).stats.items():
        totals[group_of(filename, name)] += own
    steps = len(batches) - SETTLE
    return {k: v / steps * 1e6 for k, v in totals.items()}


def svi_step(name: str, fast: bool, data: torch.Tensor):
    model = pprogen.create_model(name, **SVI_MODELS[name])
    guide = model.default_guide() if hasattr(model, "default_guide") else None
    loss_module = build_loss(model, guide if guide is not None else pprogen.inference.make_guide("default", model),
                             "trace")
    params = collect_parameters(loss_module, data[:BATCH])
    step = TrainStep(loss_module, params, make_optimizer("adam", params, lr=1e-3), fast_path=fast)
    return (lambda x: step(x, data.shape[0] / BATCH)), step


def main(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = (torch.rand(4096, 784) < 0.2).float()
    batches = [data[torch.randint(0, data.shape[0], (BATCH,))] for _ in range(args.steps + SETTLE)]
    rows = {}
    with pyro.validation_enabled(False):
        for name in args.models.split(","):
            if name in ("dcgan", "gan"):  # the adversarial trainer's step (D and G updates): not replayed
                model = pprogen.create_model(name)
                images = torch.rand(4096, *model.x_shape) * 2 - 1
                trainer = AdversarialTrainer(model)
                image_batches = [images[torch.randint(0, 4096, (64,))] for _ in range(args.steps + SETTLE)]
                rows[f"{name} (adversarial, batch 64)"] = profile(lambda x: trainer.step([(x, {})]), image_batches)
                continue
            for fast in (False, True):
                fn, step = svi_step(name, fast, data)
                label = f"{name} {'replayed' if fast else 'program'}"
                rows[label] = profile(fn, batches)
                if fast:
                    rows[label]["note"] = step.replay.summary()
    title = (f"per-step own time in microseconds (cProfile), batch {BATCH}, threads {torch.get_num_threads()}, "
             f"{args.steps} steps")
    print(title)
    header = f"{'step':30s}" + "".join(f"{g[:12]:>13s}" for g in GROUPS) + f"{'total':>10s}"
    print(header)
    cells_of, notes = [], []
    for label, totals in rows.items():
        note = totals.pop("note", None)
        cells = "".join(f"{totals.get(g, 0.0):13.0f}" for g in GROUPS)
        print(f"{label:30s}{cells}{sum(totals.values()):10.0f}" + (f"   [{note}]" if note else ""))
        cells_of.append([label, *(f"{totals.get(g, 0.0):.0f}" for g in GROUPS), f"{sum(totals.values()):.0f}"])
        if note:
            notes.append(f"{label}: {note}")
    record(__file__, [table(title, ["step", *GROUPS, "total"], cells_of)], notes, args=args)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vae,maf,made,dcgan,gan")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
