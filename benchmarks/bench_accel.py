"""What the speed options buy: median training-step time of zoo models in float32 (eager), under bf16
autocast, compiled (``torch.compile`` of the networks), and both, each as a ratio to eager float32 in the
same process.

Models: the 784-400-400-50 ``vae`` (batch 128, binarized MNIST), ``pixelcnn`` on 28x28 binary images
(batch 32), ``realnvp`` and ``maf`` on 2-D moons (batch 512), and ``dcgan`` at 28x28 (one discriminator and
one generator update, batch 64). Rounds alternate between the variants; the first steps of each variant
(compilation) are not timed.

Run: ``python benchmarks/bench_accel.py [--device cuda --rounds 5 --steps 20 --models vae,pixelcnn]``.
"""

from __future__ import annotations

import argparse
import statistics

import pyro
import torch

import pprogen
from common import binarized_mnist_or_random, timed
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
    print(f"device {label}, torch {torch.__version__}, threads {torch.get_num_threads()}, {name}; "
          f"{args.rounds} rounds x {args.steps} steps, median step time")
    print(f"{'model':10s} " + " ".join(f"{v:>14s}" for v in VARIANTS) + "   (ms; ratio to eager)")
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
            continue
        base = statistics.median(times["eager"])
        cells = []
        for variant in VARIANTS:
            if variant in failed:
                cells.append(f"{'failed':>14s}")
                continue
            med = statistics.median(times[variant])
            cells.append(f"{med * 1e3:8.2f} {med / base:5.2f}")
        print(f"{model_name:10s} " + " ".join(cells))
        for variant, why in failed.items():
            print(f"    {variant} failed: {why}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", default="vae,pixelcnn,realnvp,maf,dcgan")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--images", type=int, default=10000)
    main(parser.parse_args())
