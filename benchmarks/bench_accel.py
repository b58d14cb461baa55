"""What the speed options buy: median training-step time of zoo models in float32 (eager), under bf16
autocast, compiled (``torch.compile`` of the networks), and both, each as a ratio to eager float32 in the
same process.

Models: the 784-400-400-50 ``vae`` (batch 128, binarized MNIST), ``pixelcnn`` on 28x28 binary images
(batch 32), ``realnvp`` and ``maf`` on 2-D moons (batch 512), and ``dcgan`` at 28x28 (one discriminator and
one generator update, batch 64). Rounds alternate between the variants; the first steps of each variant
(compilation) are not timed.

Run: ``python benchmarks/bench_accel.py [--device cuda --rounds 5 --steps 20 --models vae,pixelcnn]``.

History
-------

`python benchmarks/bench_accel.py --rounds 5 --steps 10` (the project's 2-core CPU, 2 threads; no date recorded):
median training-step time, ratio to eager float32 in the same process.

| model | eager ms | bf16 | compile | compile + bf16 |
| --- | --- | --- | --- | --- |
| `vae` 784-400-400-50, batch 128 | 8.61 | 0.82 | 1.08 | 0.86 |
| `pixelcnn` 28x28, batch 32 | 195.0 | 0.61 | 1.05 | 0.53 |
| `realnvp` 2-D, batch 512 | 5.54 | 1.28 | 1.11 | 1.40 |
| `maf` 2-D, batch 512 | 6.74 | 1.13 | 1.01 | 1.19 |
| `dcgan` 28x28, batch 64 (D and G step) | 160.7 | 0.63 | 1.16 | 0.78 |

2026-12-04, `python benchmarks/bench_accel.py --device cuda --rounds 3 --steps 10 --warmup 2` (one NVIDIA H200, torch
2.11.0+cu130, pyro 1.9.2, commit 607a79c, the GPU to itself):

| model (H200) | eager ms | bf16 | compile | compile + bf16 |
| --- | --- | --- | --- | --- |
| `vae` 784-400-400-50, batch 128 | 4.44 | 1.08 | 1.01 | 1.19 |
| `pixelcnn` 28x28, batch 32 | 15.66 | 1.18 | 1.26 | 1.30 |
| `realnvp` 2-D, batch 512 | 11.80 | 1.24 | 0.99 | 1.15 |
| `maf` 2-D, batch 512 | 11.70 | 1.17 | 1.21 | 1.47 |
| `dcgan` 28x28, batch 64 (D and G step) | 9.96 | 1.20 | 1.48 | 1.57 |

On this CPU bf16 paid for the convolutional models and the VAE and cost for the small 2-D flows; on the H200 nothing
paid at these sizes (a step is a few milliseconds of kernel launches and Python), so float32 and eager were the fast
choice there. In the same H200 session the six CUDA tests passed in 22.5 s (`bench_vae_epoch.py --device cuda`: see
that script).
"""

from __future__ import annotations

import argparse
import statistics

import pyro
import torch

import pprogen
from common import binarized_mnist_or_random, record, table, timed
from pprogen.data import load_dataset
from pprogen.inference import AdversarialTrainer
from pprogen.inference.accel import compile_networks
from pprogen.inference.train import TrainStep, build_loss, collect_parameters, make_optimizer

VARIANTS = {"eager": (None, False), "bf16": ("bf16", False), "compile": (None, True), "compile+bf16": ("bf16", True)}


def svi_setup(name, kw, data, batch, autocast, compiled):
    torch.manual_seed(0)
    model = pprogen.create_model(name, **kw).to(data.device)
    guide = model.default_guide().to(data.device)
    loss_module = build_loss(model, guide)
    params = collect_parameters(loss_module, data[:batch])
    if compiled:
        compile_networks(model, guide)
    step = TrainStep(loss_module, params, make_optimizer("adam", params, lr=1e-4), autocast=autocast)
    scale = data.shape[0] / batch
    return lambda: step(data[torch.randint(0, data.shape[0], (batch,), device=data.device)], scale)


def gan_setup(data, batch, autocast, compiled):
    torch.manual_seed(0)
    model = pprogen.create_model("dcgan", x_shape=(1, 28, 28))
    trainer = AdversarialTrainer(model, batch_size=batch, device=data.device, progress=False, autocast=autocast,
                                 compile=compiled)
    model.to(data.device)
    return lambda: trainer.step([(data[torch.randint(0, data.shape[0], (batch,), device=data.device)], {})])


def main(args):
    device = torch.device(args.device)
    train, _, name = binarized_mnist_or_random()
    mnist = train[: args.images].to(device)
    moons = load_dataset("moons").train.to(device)
    models = {
        "vae": lambda a, c: svi_setup("vae", dict(x_dim=784, z_dim=50, hidden_dims=(400, 400)), mnist, 128, a, c),
        "pixelcnn": lambda a, c: svi_setup("pixelcnn", dict(x_shape=(1, 28, 28)), mnist.reshape(-1, 1, 28, 28), 32, a, c),
        "realnvp": lambda a, c: svi_setup("realnvp", {}, moons, 512, a, c),
        "maf": lambda a, c: svi_setup("maf", {}, moons, 512, a, c),
        "dcgan": lambda a, c: gan_setup(mnist.reshape(-1, 1, 28, 28), 64, a, c),
    }
    label = device.type + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    title = (f"device {label}, torch {torch.__version__}, threads {torch.get_num_threads()}, {name}; "
             f"{args.rounds} rounds x {args.steps} steps, median step time")
    print(title)
    print(f"{'model':10s} " + " ".join(f"{v:>14s}" for v in VARIANTS) + "   (ms; ratio to eager)")
    rows, notes = [], []
    for model_name in args.models.split(","):
        steps, times, failed = {}, {v: [] for v in VARIANTS}, {}
        with pyro.validation_enabled(False):
            for variant, (autocast, compiled) in VARIANTS.items():
                try:
                    steps[variant] = models[model_name](autocast, compiled)
                    for _ in range(args.warmup):
                        steps[variant]()
                except Exception as err:  # a variant that fails is printed as such
                    failed[variant] = f"{type(err).__name__}: {str(err).splitlines()[0][:60]}"
            for _ in range(args.rounds):
                for variant, step in steps.items():
                    if variant in failed:
                        continue
                    times[variant] += [timed(step, device)[0] for _ in range(args.steps)]
        if "eager" in failed:
            print(f"{model_name:10s} eager failed: {failed['eager']}")
            rows.append([model_name] + ["failed"] * len(VARIANTS))
            notes.append(f"{model_name}: eager failed: {failed['eager']}")
            continue
        base = statistics.median(times["eager"])
        cells, row = [], [model_name]
        for variant in VARIANTS:
            if variant in failed:
                cells.append(f"{'failed':>14s}")
                row.append("failed")
                continue
            med = statistics.median(times[variant])
            cells.append(f"{med * 1e3:8.2f} {med / base:5.2f}")
            row.append(f"{med * 1e3:.2f} ms" if variant == "eager" else f"{med / base:.2f}")
        print(f"{model_name:10s} " + " ".join(cells))
        rows.append(row)
        for variant, why in failed.items():
            print(f"    {variant} failed: {why}")
            notes.append(f"{model_name}: {variant} failed: {why}")
    record(__file__, [table(title, ["model", "eager (step time)", *(f"{v} / eager" for v in list(VARIANTS)[1:])],
                            rows)], notes, args=args, device=device)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="vae,pixelcnn,realnvp,maf,dcgan")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--images", type=int, default=10000)
    main(parser.parse_args())
