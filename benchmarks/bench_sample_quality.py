"""Sample quality of trained image models side by side: Fréchet distance, precision and recall in the features of
the project's digit classifier (the one ``pprogen evaluate`` uses for GANs), and one picture of their samples.

Each argument is ``LABEL=RUN_FOLDER`` (a ``pprogen train`` run). Every model draws ``--num-samples`` images with the
same seed: GANs and the VAE-GAN their generator's output (the decoder's mean image for the VAE-GAN), a VAE its
likelihood means E[x | z], z ~ p(z), clipped to [0, 1] (a Gaussian decoder's mean may leave it), which is what a
VAE's pictures show. All are compared with the ``--split`` images of the run's data (they must share a data set).

Used for the README's comparisons (training commands there):

    python benchmarks/bench_sample_quality.py vae=RUNS/conv_vae vaegan=RUNS/vaegan --out docs/figures/vaegan_vs_vae.png
    python benchmarks/bench_sample_quality.py dcgan=RUNS/dcgan progan=RUNS/progan stylegan=RUNS/stylegan --out ...

``binarized_mnist`` has no labels of its own; its classifier is trained by self-training from the project's hand
labels of 597 of its training images (``pprogen/labels/binarized_mnist.json``), and the output gives its accuracy on
the 200 hand-labelled validation images. ``--features-from digits28`` instead takes the features of the classifier
trained on another labelled data set of the same image shape, a proxy the output names, with that classifier's
accuracy on its own validation split and how it spreads the real images over its classes. The ``pixel MMD`` column
(kernel MMD^2 between real and generated images, in pixel space) needs no classifier.

History
-------

Digits (1258 training images), measured with the same metrics by `pprogen evaluate` rather than this script:
`pprogen train dcgan --data digits --epochs 200` and `pprogen train cgan --data digits --epochs 200` (107 s and 109 s
on one thread), then `pprogen evaluate RUN --split test` (1000 samples of the averaged generator, in the cached digit
classifier's features):

| model | split | Fréchet distance | precision | recall | classifier score | label agreement |
| --- | --- | --- | --- | --- | --- | --- |
| `dcgan` | valid | 60.8 | 0.650 | 0.837 | 6.76 | - |
| `dcgan` | test | 43.5 | 0.661 | 0.870 | 6.76 | - |
| `cgan` | valid | 53.9 | 0.939 | 0.726 | 9.23 | 96.8% |
| `cgan` | test | 32.7 | 0.882 | 0.710 | 9.23 | 96.8% |
| 1000 training images (reference) | valid / test | 33.6 / 15.1 | 0.930 / 0.911 | 0.881 / 0.896 | 9.20 | - |

`pprogen train pix2pix --data edges2digits --epochs 100` (183 s, one thread): translations of the 269 test edge maps
have mean L1 0.069 to their digits, Fréchet distance 14.2, precision 0.959, recall 0.985.

2026-12-03, digits28, 60 epochs (one thread each): `pprogen train M --data digits28 --epochs 20`, then `--resume RUN
--epochs 60` (progan: one 60-epoch run, its growth laid over the run), scored by `python
benchmarks/bench_sample_quality.py dcgan=RUN progan=RUN stylegan=RUN --split test --num-samples 1000`:

| model | split | Fréchet distance | precision | recall | training time |
| --- | --- | --- | --- | --- | --- |
| `dcgan` | test | 239.06 | 0.540 | **0.855** | 725 s |
| `progan` | test | 234.30 | 0.633 | 0.792 | 500 s |
| `stylegan` | test | **227.18** | **0.709** | 0.409 | 1285 s |
| `dcgan` | valid | **257.12** | 0.527 | **0.844** | |
| `progan` | valid | 259.27 | 0.650 | 0.678 | |
| `stylegan` | valid | 260.18 | **0.768** | 0.452 | |

Close on Fréchet distance (one seed each); StyleGAN's samples were the most precise, dcgan covered the most of the
data. Without the mapping network's learning-rate multiplier StyleGAN collapsed (recall 0 at 20 epochs).

2026-12-03, VAE-GAN against the VAE with the same encoder and decoder (`pprogen train vaegan --epochs 60` and `pprogen
train conv_vae --data digits28 --set likelihood=gaussian --set z_dim=32 --epochs 60`, scored by
`bench_sample_quality.py --split test`):

| model (digits28, 60 epochs) | Fréchet distance | precision | recall | training time |
| --- | --- | --- | --- | --- |
| `conv_vae` | 600.91 | 0.647 | 0.714 | 120 s |
| `vaegan`, feature weight 0.1 (the default) | 163.35 | **0.749** | 0.777 | 1135 s |
| `vaegan`, feature weight 1 | 349.40 | 0.676 | 0.784 | 1476 s |
| `vaegan`, the paper's weighting (`encoder_feature_weight=1`) | 176.23 | 0.586 | **0.885** | 811 s |
| `vaegan`, the paper's weighting and `--r1-weight 1` | **151.80** | 0.664 | 0.814 | 1552 s |

2026-12-06, on binarized MNIST (one thread, 6 epochs, in the features of a classifier self-trained from the shipped
hand labels, 0.960 accurate on the 200 hand-labelled validation images), with `--set likelihood=bernoulli --set
feature_weight=1 --set encoder_feature_weight=1 --set critic_input=draws --r1-weight 1` against `conv_vae --set
z_dim=32` at the same epochs:

| model (binarized MNIST, valid, 1000 samples) | seed | Fréchet | precision | recall | pixel MMD^2 | budget |
| --- | --- | --- | --- | --- | --- | --- |
| `conv_vae`, 6 epochs | 0 | 144.77 | 0.811 | **0.704** | 0.0498 | 165 s |
| `conv_vae`, 6 epochs | 1 | 170.02 | 0.774 | **0.700** | 0.0565 | 167 s |
| `conv_vae`, 10 epochs | 0 | 130.83 | 0.805 | **0.744** | 0.0470 | 314 s |
| `vaegan`, draws for D, feature weight 1 | 0 | **112.11** | **0.855** | 0.608 | 0.0503 | 2495 s |
| `vaegan`, draws for D, feature weight 1 | 1 | **110.45** | **0.862** | 0.640 | **0.0425** | 2434 s |

At equal epochs this VAE-GAN beat the VAE of its size on Fréchet distance and precision on both seeds (and the
10-epoch VAE), and paid in recall; its epoch took about 15 times the VAE's. At an equal GPU budget (2026-12-04, one
H200 shared by ten runs, two seeds) the VAE trained 13 to 15 times as many epochs and the two were level on Fréchet
distance (99.20 against 95.97 on the mean of the seeds, for the VAE-GAN with the paper's weighting and R1 1), the VAE
ahead on precision (0.801 against 0.641).
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import torch

from common import record, table
from pprogen.capabilities import capabilities
from pprogen.engine import load_run
from pprogen.data import load_dataset
from pprogen.inference.metrics import dataset_classifier, image_metrics, mmd_unbiased
from pprogen.plots import image_grid


def samples_of(model, n: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    caps = capabilities(model)
    if caps.adversarial:
        return model.sample(n)
    params = inspect.signature(model.sample).parameters
    if "mean" not in params:
        raise SystemExit(f"{type(model).__name__} has no likelihood means to sample; give GANs, VAEs or VAE-GANs")
    return model.sample(n, mean=True).clamp(0, 1)


def feature_classifier(dataset, real: torch.Tensor, features_from: str | None):
    """The classifier whose features score the samples: the data set's own, or (``features_from``) the one trained
    on another labelled data set of the same image shape, with a note on the proxy for the output."""
    source = dataset if features_from is None else load_dataset(features_from)
    if source.image_shape != dataset.image_shape:
        raise SystemExit(f"--features-from {source.name} has images of shape {source.image_shape}, the runs' data "
                         f"{dataset.image_shape}: choose a labelled data set of the same shape")
    found = dataset_classifier(source)
    if found is None:
        raise SystemExit(f"{source.name} has no labels to train the feature classifier on; pass --features-from with a "
                         "labelled data set of the same image shape (digits28 for 28x28 digits)")
    classifier, card = found
    if features_from is None and "pseudo_labelled" in card:  # a data set with only a hand-labelled sample
        rows = {split: len(r) for split, (r, _) in dataset.labelled_rows.items()}
        note = (f" of the {dataset.name} classifier self-trained from {rows['train']} hand-labelled training images "
                f"and {card['pseudo_labelled']} it labelled itself (accuracy {card.get('accuracy', float('nan')):.3f} on "
                f"{rows.get('valid', 0)} hand-labelled validation images)")
        return classifier, note
    if features_from is None:
        return classifier, ""
    _, probs = classifier.predict(real)
    shares = torch.bincount(probs.argmax(1), minlength=source.num_classes).double() / real.shape[0]
    accuracy = "not measured"  # measured here: a classifier cached by an earlier caller may have no accuracy on its card
    if source.valid is not None and source.labels.get("valid") is not None:
        hits = classifier.predict(source.valid.reshape(-1, *source.image_shape))[1].argmax(1) == source.labels["valid"]
        accuracy = f"{hits.double().mean():.3f}"
    note = (f" of the {source.name} classifier (a proxy: {dataset.name} has no labels; its accuracy on {source.name}'s "
            f"valid split {accuracy}; it puts the real {dataset.name} images in its classes "
            f"{' / '.join(f'{100 * v:.0f}' for v in shares.tolist())}%, mean confidence {probs.max(1).values.mean():.2f})")
    return classifier, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_FOLDER")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--split", default="test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="picture of 64 samples of each model, side by side")
    parser.add_argument("--features-from", help="a labelled data set of the same image shape whose classifier gives "
                        "the features (for data without labels, e.g. digits28 for binarized_mnist)")
    args = parser.parse_args()
    rows, cells, pictures, data, classifier, proxy = [], [], [], None, None, ""
    for item in args.runs:
        label, _, folder = item.partition("=")
        if not folder:
            raise SystemExit(f"give LABEL=RUN_FOLDER, got {item!r}")
        _, config, dataset, model, _, _ = load_run(folder, torch.device("cpu"))
        if data is not None and config["data"] != data:
            raise SystemExit(f"{folder} was trained on {config['data']!r}, the others on {data!r}: compare on one data set")
        data = config["data"]
        shape = dataset.image_shape
        real = dataset.split(args.split).reshape(-1, *shape)
        if classifier is None:
            classifier, proxy = feature_classifier(dataset, real, args.features_from)
        with torch.no_grad():
            fake = samples_of(model, args.num_samples, args.seed).reshape(-1, *shape)
        scores = image_metrics(classifier, real, fake)
        pixel_mmd = mmd_unbiased(real[:2000].flatten(1), fake[:2000].flatten(1))
        records = [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines() if line]
        budget = f"{len(records)} epochs, {sum(r.get('seconds', 0.0) for r in records):.0f} s"  # every session's
        rows.append(f"| {label} | `{config['model']}` | {scores['frechet_distance']:.2f} | {scores['precision']:.3f} | "
                    f"{scores['recall']:.3f} | {pixel_mmd:.4f} | {budget} |")
        cells.append([label, f"`{config['model']}`", f"{scores['frechet_distance']:.2f}", f"{scores['precision']:.3f}",
                      f"{scores['recall']:.3f}", f"{pixel_mmd:.4f}", budget])
        pictures.append((label, fake[:64]))
    title = f"{data}, {args.num_samples} samples against the {args.split} split, classifier features{proxy}"
    print(f"{title}:")
    print("| model | zoo name | Fréchet distance | precision | recall | pixel MMD | budget |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    record(__file__, [table(title, ["model", "zoo name", "Fréchet distance", "precision", "recall", "pixel MMD",
                                    "budget"], cells)], args=args, variant=f"{data}-{args.split}")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from pprogen.runs import atomic_write

        fig, axes = plt.subplots(1, len(pictures), figsize=(4 * len(pictures), 4.3), squeeze=False)
        for ax, (label, images) in zip(axes[0], pictures):
            grid = image_grid(images, 8)
            ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
            ax.set_title(label, fontsize=10)
            ax.axis("off")
        atomic_write(Path(args.out), lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
