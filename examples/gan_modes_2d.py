"""A GAN on the ring of 8 and the grid of 25 Gaussians: samples drawn over the modes, and the VEEGAN /
PacGAN scores (modes covered, share of high-quality samples within 3 sigma of a mode, reverse KL).

The generator is a Pyro program (z ~ N(0, I) at site "z", x = G(z)); ``AdversarialTrainer`` fits it with
the non-saturating loss and a moving average of G's weights, which the samples come from.

    python examples/gan_modes_2d.py [--steps 8000 16000] [--out gan_modes_2d.png]
"""

from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import pprogen  # noqa: E402
from pprogen.data import MODES, load_dataset  # noqa: E402
from pprogen.inference import AdversarialTrainer  # noqa: E402
from pprogen.inference.metrics import mode_metrics  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, nargs=2, default=[2000, 4000], metavar=("RING", "GRID"),
                   help="generator steps for ring8 and grid25 (the README's table uses 8000 and 16000)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="gan_modes_2d.png")
    args = p.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    for ax, data_name, steps in zip(axes, ("ring8", "grid25"), args.steps):
        torch.manual_seed(args.seed)
        train = load_dataset(data_name).train
        model = pprogen.create_model("gan")  # x_dim 2, z_dim 2, 3 x 128 MLPs
        trainer = AdversarialTrainer(model, lr_g=1e-3, lr_d=1e-3, betas=(0.5, 0.9), schedule="linear",
                                     batch_size=args.batch_size, seed=args.seed, progress=False, device="cpu")
        started = time.perf_counter()
        trainer.fit(train, epochs=max(1, round(steps * args.batch_size / train.shape[0])))
        samples = model.sample(2500)
        centers, sigma = MODES[data_name]
        score = mode_metrics(samples, centers, sigma)
        print(f"{data_name:7s} {steps:6d} steps: modes {score['modes']}/{score['num_modes']}, high quality "
              f"{100 * score['high_quality']:.1f}%, reverse KL {score['reverse_kl']:.4f} "
              f"({time.perf_counter() - started:.0f} s)")
        ax.scatter(*samples.T.numpy(), s=2, alpha=0.4, label="samples")
        ax.scatter(*centers.T.numpy(), s=25, c="red", marker="x", label="modes")
        ax.set_title(f"{data_name}: {score['modes']}/{score['num_modes']} modes, "
                     f"{100 * score['high_quality']:.1f}% high quality")
        ax.set_aspect("equal")
    axes[0].legend(loc="upper right")
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
