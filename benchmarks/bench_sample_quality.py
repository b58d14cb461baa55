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
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import torch

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
    rows, pictures, data, classifier, proxy = [], [], None, None, ""
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
        pictures.append((label, fake[:64]))
    print(f"{data}, {args.num_samples} samples against the {args.split} split, classifier features{proxy}:")
    print("| model | zoo name | Fréchet distance | precision | recall | pixel MMD | budget |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
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
