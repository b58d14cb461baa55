"""A label-conditioned GAN on the 8x8 digits: one row of samples per class, and how often a digit
classifier (trained here on the labelled digits and cached) reads the requested class.

    python examples/conditional_digits.py [--epochs 40] [--out conditional_digits.png]
"""

from __future__ import annotations

import argparse

import torch

import pprogen
from pprogen.data import load_dataset
from pprogen.inference import AdversarialTrainer
from pprogen.inference.metrics import cached_classifier, image_metrics
from pprogen.plots import save_samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="conditional_digits.png")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    data = load_dataset("digits")
    model = pprogen.create_model("cgan", x_shape=data.shape, num_classes=10, channels=args.channels)
    trainer = AdversarialTrainer(model, loss="hinge", batch_size=64, seed=args.seed, progress=False, device="cpu")
    trainer.fit(data.train, epochs=args.epochs, condition={"y": data.labels["train"]})
    classifier, card = cached_classifier("digits", data.train, data.labels["train"], 10,
                                         valid=(data.valid, data.labels["valid"]))
    y = torch.arange(1000) % 10
    scores = image_metrics(classifier, data.test, model.sample(1000, y=y), fake_labels=y)
    print(f"classifier accuracy on the validation digits: {100 * card['accuracy']:.1f}%")
    print(f"label agreement {100 * scores['label_agreement']:.1f}% (chance 10%), Fréchet distance "
          f"{scores['frechet_distance']:.2f}, precision {scores['precision']:.3f}, recall {scores['recall']:.3f}")
    rows = torch.arange(10).repeat_interleave(10)  # row k: ten samples of digit k
    save_samples(model.sample(100, y=rows), data.shape, args.out, title="cgan: one row per digit")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
