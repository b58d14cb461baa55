"""Time one training step of a 784-400-400-50 VAE at batch 128, side by side in one process.

Contenders, each with Adam at the same learning rate:

- ``hand``: a hand-written PyTorch VAE step (encoder, reparameterized draw, BCE + analytic KL, backward,
  ``torch.optim.Adam`` with its defaults);
- ``hand_fused``: the same with ``Adam(fused=True)``, the optimizer ``fit`` picks, so that the Pyro-side
  overhead can be read off without the optimizer's share;
- ``pprogen``: the step ``pprogen.inference.fit`` runs by default (lean TraceELBO, fused Adam, NaN guard,
  data-plate scale);
- ``pyro_svi``: Pyro's documented ``SVI`` + ``Trace_ELBO`` + ``pyro.optim.Adam`` (the VAE tutorial's model);
- ``pyro_jit``: ``SVI`` + ``JitTrace_ELBO`` (the model written with ``pyro.param``, which JIT tracing needs);
- ``pyro_module``: ``Trace_ELBO()(model, guide)`` on pprogen's VAE, trained with ``torch.optim.Adam``
  (Pyro's torch-native path).

Rounds alternate between contenders; the script prints the median step time of each and its ratio to
``hand``. Run: ``python benchmarks/bench_svi_step.py [--rounds 5 --steps 50 --device cpu]``.

History
-------

2026-11-21 (784-400-400-50 VAE, batch 128, medians over alternating rounds, ranges over five runs, 2 threads), ratio to
a hand-written PyTorch step:

| contender | with torch's Adam defaults | with fused Adam |
| --- | --- | --- |
| pprogen `fit`'s step | 0.95 - 1.08 | 1.01 - 1.27 |
| Pyro `SVI` + `Trace_ELBO` + `pyro.optim.Adam` | 1.28 - 1.39 | 1.36 - 1.64 |
| Pyro `SVI` + `JitTrace_ELBO` | 1.19 - 1.34 | 1.28 - 1.58 |
| Pyro `Trace_ELBO()(model, guide)` + `torch.optim.Adam` | 1.13 - 1.33 | 1.27 - 1.56 |
"""

from __future__ import annotations

import argparse
import statistics

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

import pprogen
from common import binarized_mnist_or_random, record, table, timed
from pprogen.inference.train import TrainStep, build_loss, collect_parameters, make_optimizer

X_DIM, Z_DIM, HIDDEN, BATCH, LR = 784, 50, (400, 400), 128, 1e-3


def mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class HandVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = mlp([X_DIM, *HIDDEN, 2 * Z_DIM])
        self.decoder = mlp([Z_DIM, *HIDDEN[::-1], X_DIM])

    def forward(self, x):
        loc, raw = self.encoder(x).split(Z_DIM, -1)
        scale = F.softplus(raw) + 1e-5
        z = loc + scale * torch.randn_like(loc)
        rec = F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="sum")
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1).sum() - scale.log().sum()
        return rec + kl


class TutorialVAE(nn.Module):
    """The shape of Pyro's VAE tutorial: ``pyro.module`` in model and guide."""

    def __init__(self):
        super().__init__()
        self.encoder = mlp([X_DIM, *HIDDEN, 2 * Z_DIM])
        self.decoder = mlp([Z_DIM, *HIDDEN[::-1], X_DIM])

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).expand([Z_DIM]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        loc, raw = self.encoder(x).split(Z_DIM, -1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-5).to_event(1))


def _param_mlp(prefix, sizes, device):
    params = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layer = nn.Linear(a, b, device=device)
        params.append((pyro.param(f"{prefix}{i}.weight", layer.weight.detach().clone()),
                       pyro.param(f"{prefix}{i}.bias", layer.bias.detach().clone())))
    return params


def _run_mlp(params, h):
    for i, (w, b) in enumerate(params):
        h = F.linear(h, w, b)
        if i < len(params) - 1:
            h = F.softplus(h)
    return h


def jit_model(x):
    decoder = _param_mlp("jit_dec", [Z_DIM, *HIDDEN[::-1], X_DIM], x.device)
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(Z_DIM), 1.0).expand([Z_DIM]).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=_run_mlp(decoder, z)).to_event(1), obs=x)


def jit_guide(x):
    encoder = _param_mlp("jit_enc", [X_DIM, *HIDDEN, 2 * Z_DIM], x.device)
    loc, raw = _run_mlp(encoder, x).split(Z_DIM, -1)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, F.softplus(raw) + 1e-5).to_event(1))


def make_steps(device, num_data):
    hand = HandVAE().to(device)
    hand_opt = torch.optim.Adam(hand.parameters(), lr=LR)

    def hand_step(x):
        hand_opt.zero_grad(set_to_none=True)
        loss = hand(x)
        loss.backward()
        hand_opt.step()

    hand_fused = HandVAE().to(device)
    hand_fused_opt = torch.optim.Adam(hand_fused.parameters(), lr=LR, fused=True)

    def hand_fused_step(x):
        hand_fused_opt.zero_grad(set_to_none=True)
        hand_fused(x).backward()
        hand_fused_opt.step()

    model = pprogen.create_model("vae", x_dim=X_DIM, z_dim=Z_DIM, hidden_dims=HIDDEN).to(device)
    guide = model.default_guide().to(device)
    loss_module = build_loss(model, guide, "trace")
    probe = torch.zeros(BATCH, X_DIM, device=device)
    params = collect_parameters(loss_module, probe)
    step = TrainStep(loss_module, params, make_optimizer("adam", params, lr=LR))

    def pprogen_step(x):
        step(x, num_data / x.shape[0])

    tutorial = TutorialVAE().to(device)
    svi = pyro.infer.SVI(tutorial.model, tutorial.guide, pyro.optim.Adam({"lr": LR}), pyro.infer.Trace_ELBO())

    jit_svi = pyro.infer.SVI(jit_model, jit_guide, pyro.optim.Adam({"lr": LR}),
                             pyro.infer.JitTrace_ELBO(ignore_jit_warnings=True))

    native = pprogen.create_model("vae", x_dim=X_DIM, z_dim=Z_DIM, hidden_dims=HIDDEN).to(device)
    native_loss = pyro.infer.Trace_ELBO()(native, native.default_guide().to(device))
    native_loss(probe)
    native_opt = torch.optim.Adam(native_loss.parameters(), lr=LR)

    def native_step(x):
        native_opt.zero_grad(set_to_none=True)
        native_loss(x).backward()
        native_opt.step()

    return {
        "hand": hand_step,
        "hand_fused": hand_fused_step,
        "pprogen": pprogen_step,
        "pyro_svi": svi.step,
        "pyro_jit": jit_svi.step,
        "pyro_module": native_step,
    }


def main(args):
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train, _, data_name = binarized_mnist_or_random()
    data = train.to(device)
    steps = make_steps(device, data.shape[0])
    timings = {name: [] for name in steps}
    failed = {}
    with pyro.validation_enabled(False):
        for round_ in range(args.rounds):
            for name, step in steps.items():
                if name in failed:
                    continue
                try:
                    for _ in range(args.warmup):
                        step(data[torch.randint(0, data.shape[0], (BATCH,), device=device)])
                    for _ in range(args.steps):
                        x = data[torch.randint(0, data.shape[0], (BATCH,), device=device)]
                        timings[name].append(timed(lambda: step(x), device)[0])
                except Exception as err:  # report, don't hide: a contender that fails is printed as such
                    failed[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:100]}"
    base = statistics.median(timings["hand"])
    fused = statistics.median(timings["hand_fused"])
    title = (f"VAE {X_DIM}-{'-'.join(map(str, HIDDEN))}-{Z_DIM}, batch {BATCH}, {data_name}, device {device}, "
             f"torch {torch.__version__}, pyro {pyro.__version__}, threads {torch.get_num_threads()}, "
             f"{args.rounds} rounds x {args.steps} steps")
    print(title)
    print(f"{'contender':12s} {'median ms':>10s} {'ratio to hand':>14s} {'to hand_fused':>14s}")
    rows = []
    for name, values in timings.items():
        if name in failed:
            print(f"{name:12s} {'failed':>10s}   {failed[name]}")
            rows.append([name, "failed", failed[name], "-"])
            continue
        med = statistics.median(values)
        print(f"{name:12s} {med * 1e3:10.3f} {med / base:14.3f} {med / fused:14.3f}")
        rows.append([name, f"{med * 1e3:.3f}", f"{med / base:.3f}", f"{med / fused:.3f}"])
    record(__file__, [table(title, ["contender", "median ms", "ratio to hand", "to hand_fused"], rows)], args=args,
           device=device)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    main(parser.parse_args())
