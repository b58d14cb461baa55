"""Train the zoo's VAE on the embedded digits, estimate its log-likelihood, and draw samples.

    python examples/train_vae.py --epochs 100
"""

import argparse
from pathlib import Path

import pprogen
from pprogen.data import load_dataset
from pprogen.inference import fit, log_marginal, make_guide
from pprogen.plots import save_samples


def main(args):
    data = load_dataset("digits_binary").flat()
    model = pprogen.create_model("vae", x_dim=data.dim, z_dim=args.z_dim, hidden_dims=[args.hidden] * 2)
    guide = make_guide("default", model)
    history = fit(model, guide, data, epochs=args.epochs, batch_size=64, lr=1e-3, seed=args.seed,
                  progress=not args.quiet)
    evidence = log_marginal(model, guide, data.valid, num_samples=args.num_samples, dim=data.dim)
    summary = evidence.summary()
    print(f"best validation -ELBO {history.best_valid_loss:.3f} nats at epoch {history.best_epoch}")
    print(f"validation NLL {summary['nll']:.3f} ± {summary['nll_stderr']:.3f} nats "
          f"(K = {args.num_samples}, mean ESS {summary['mean_ess']:.1f})")
    out = Path(args.out)
    save_samples(model.sample(64, mean=True), data.image_shape, out / "vae_samples.png")
    print(f"samples: {out / 'vae_samples.png'}")
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--z-dim", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=".")
    parser.add_argument("--quiet", action="store_true")
    main(parser.parse_args())
