"""Imputation picture of a trained run: validation images with their bottom half missing, and completions of each.

The first ``--images`` images of the run's validation split lose their bottom half (NaN where missing, in a
``.npy`` file); ``pprogen.engine.sample_run`` completes them as ``pprogen sample RUN --impute FILE -n S`` does and
draws each observed half (missing pixels grey) beside its ``-n`` completions. The route is the model's own:
ancestral completion for an autoregressive model whose order puts the top rows first (exact), importance-resampled
completions for a latent-variable model with a guide. docs/figures/impute_nade.png and impute_vae.png are::

    python examples/impute_figure.py --run leaderboard/nade --data-dir ../shared/data --out docs/figures/impute_nade.png
    python examples/impute_figure.py --run leaderboard/vae --data-dir ../shared/data --out docs/figures/impute_vae.png

(binarized MNIST: ``--data-dir`` is a folder holding ``binarized_mnist.npz``; NADE's 392 missing pixels take a pass
of the network each, about a minute or two on a 2-core CPU.)
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from pprogen.engine import load_run, sample_run


def bottom_half_missing(images: torch.Tensor, image_shape: tuple[int, ...]) -> torch.Tensor:
    """``images`` (rows of any shape holding ``image_shape``) with NaN in the bottom half of every image."""
    holes = images.reshape(images.shape[0], *image_shape).clone().float()
    holes[..., image_shape[-2] // 2:, :] = float("nan")
    return holes.reshape(images.shape)


def main(args):
    loaded = load_run(args.run, torch.device("cpu"), args.data_dir)
    dataset = loaded.dataset
    if dataset.valid is None:
        raise ValueError(f"{args.run}'s data ({dataset.name}) has no validation split to take images from")
    images = dataset.valid[: args.images]
    holes = bottom_half_missing(images, tuple(dataset.image_shape or dataset.shape))
    with tempfile.TemporaryDirectory() as folder:
        rows = Path(folder) / "bottom_half_missing.npy"
        np.save(rows, holes.numpy())
        line = sample_run(args.run, impute=str(rows), n=args.completions, particles=args.particles, seed=args.seed,
                          out=args.out, data_dir=args.data_dir)
    print(line)
    return holes


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="leaderboard/nade", help="a trained or shipped run folder")
    parser.add_argument("--data-dir", help="folder with the run's data (binarized MNIST: binarized_mnist.npz; "
                                           "default: $PPROGEN_DATA, else where the run was trained from)")
    parser.add_argument("--out", default="impute.png", help="the picture (.png or .pdf)")
    parser.add_argument("--images", type=int, default=8, help="validation images, one row each")
    parser.add_argument("--completions", type=int, default=7, help="completions of each image")
    parser.add_argument("--particles", type=int, help="importance-resampled routes: particles per image "
                                                      "(default 256)")
    parser.add_argument("--seed", type=int, default=0)
    main(parser.parse_args())
