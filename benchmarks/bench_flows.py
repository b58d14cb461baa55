"""MAF log_prob and IAF sample speed against zuko's and nflows' MAF (and Pyro's AffineAutoregressive).

Issue 5's setting: 8 dimensions, 5 layers, MADE hidden [64, 64], batch 1024. Each library's flow is
built at the same size and timed in this process on the same inputs (a fresh input for every call, since
transforms cache their last call). Prints the median time per call over ``--repeats`` rounds (each round times every library in turn) and the ratio
of pprogen's time to the faster peer's (below 1 means pprogen is faster).

zuko and nflows are installed only for this script (``pip install zuko nflows``), never as dependencies;
a peer that is not installed is left out of the table.

    python benchmarks/bench_flows.py [--device cpu|cuda] [--threads 1] [--repeats 15]

History
-------

8 dimensions, 5 layers, MADE hidden [64, 64], batch 1024, one thread, each library in turn within each of 15 rounds,
medians; four runs, with zuko and nflows installed (no date recorded):

| operation | pprogen / fastest of zuko and nflows | pprogen / Pyro |
| --- | --- | --- |
| MAF `log_prob` | 0.90 - 0.98 | 0.12 - 0.14 (Pyro's `AffineAutoregressive` is IAF-direction) |
| IAF `sample` (the peers' MAF samples one pass per dimension) | 0.12 - 0.13 | 0.85 - 0.89 |
| MAF `log_prob` + backward | 0.93 - 1.04 | - |
"""

from __future__ import annotations

import argparse
import statistics

import torch

import pprogen
from common import record, timed
from common import table as result_table

D, LAYERS, HIDDEN, BATCH = 8, 5, [64, 64], 1024


def interleaved(fns: dict, inputs, device, repeats: int, calls: int = 10) -> dict[str, float]:
    """Median seconds per call of each function over ``repeats`` rounds; every round times each
    function in turn (inputs cycled), so slow spells on a shared machine hit all of them alike."""
    for fn in fns.values():
        for x in inputs[:3]:
            fn(x)  # warm-up
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            seconds, _ = timed(lambda: [fn(inputs[(r * calls + i) % len(inputs)]) for i in range(calls)], device)
            rounds[name].append(seconds / calls)
    return {name: statistics.median(times) for name, times in rounds.items()}


def build(device):
    flows = {}
    maf = pprogen.create_model("maf", x_dim=D, num_layers=LAYERS, hidden_dims=HIDDEN).to(device).eval()
    iaf = pprogen.create_model("iaf", x_dim=D, num_layers=LAYERS, hidden_dims=HIDDEN).to(device).eval()
    flows["pprogen"] = {"log_prob": lambda x: maf.log_prob(x), "sample": lambda n: iaf.sample(n),
                        "train": lambda x: -maf.log_prob(x).mean()}
    try:
        import zuko

        zmaf = zuko.flows.MAF(D, transforms=LAYERS, hidden_features=HIDDEN).to(device)
        flows["zuko"] = {"log_prob": lambda x: zmaf().log_prob(x), "sample": lambda n: zmaf().sample((n,)),
                         "train": lambda x: -zmaf().log_prob(x).mean()}
    except ImportError:
        pass
    try:
        from nflows.flows.autoregressive import MaskedAutoregressiveFlow

        nmaf = MaskedAutoregressiveFlow(D, HIDDEN[0], LAYERS, num_blocks_per_layer=len(HIDDEN) - 1,
                                        use_residual_blocks=False).to(device)
        flows["nflows"] = {"log_prob": lambda x: nmaf.log_prob(x), "sample": lambda n: nmaf.sample(n),
                           "train": lambda x: -nmaf.log_prob(x).mean()}
    except ImportError:
        pass
    import pyro.distributions as dist
    from pyro.distributions.transforms import AffineAutoregressive, Permute
    from pyro.nn import AutoRegressiveNN

    layers = []
    for i in range(LAYERS):
        layers.append(AffineAutoregressive(AutoRegressiveNN(D, HIDDEN)).to(device))
        if i < LAYERS - 1:
            layers.append(Permute(torch.arange(D - 1, -1, -1, device=device)))
    base = dist.Normal(torch.zeros(D, device=device), torch.ones(D, device=device)).to_event(1)
    flows["pyro (AffineAutoregressive)"] = {
        "log_prob": lambda x: dist.TransformedDistribution(base, layers).log_prob(x),
        "sample": lambda n: dist.TransformedDistribution(base, layers).sample((n,)),
        "train": lambda x: -dist.TransformedDistribution(base, layers).log_prob(x).mean(),
    }
    return flows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\nHistory\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is the least noisy here)")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import pyro

    pyro.enable_validation(False)
    flows = build(device)
    inputs = [torch.randn(BATCH, D, device=device) for _ in range(40)]
    sizes = [BATCH] * 40

    def backward(fn):
        def run(x):
            fn(x).backward()
        return run

    with torch.no_grad():
        lp = interleaved({n: ops["log_prob"] for n, ops in flows.items()}, inputs, device, args.repeats)
        sample = interleaved({n: ops["sample"] for n, ops in flows.items()}, sizes, device, args.repeats, calls=3)
    train = interleaved({n: backward(ops["train"]) for n, ops in flows.items()}, inputs, device, args.repeats)
    table = {n: (lp[n], sample[n], train[n]) for n in flows}

    title = (f"flows of {D} dims, {LAYERS} layers, MADE hidden {HIDDEN}, batch {BATCH}, device {device}, "
             f"{args.threads} thread(s); median ms per call over {args.repeats} rounds")
    print(title)
    print(f"{'library':30s} {'MAF log_prob':>13s} {'sample':>10s} {'log_prob+backward':>18s}")
    rows = []
    for name, (lp, sample, train) in table.items():
        label = name + (" (MAF log_prob, IAF sample)" if name == "pprogen" else "")
        print(f"{label:30s} {lp * 1e3:13.3f} {sample * 1e3:10.3f} {train * 1e3:18.3f}")
        rows.append([label, f"{lp * 1e3:.3f}", f"{sample * 1e3:.3f}", f"{train * 1e3:.3f}"])
    ratios = []
    peers = [n for n in table if n in ("zuko", "nflows")]
    if peers:
        mine = table["pprogen"]
        for i, what in enumerate(("MAF log_prob", "IAF sample (peers: their MAF sample)", "log_prob+backward")):
            fastest = min(peers, key=lambda n: table[n][i])
            print(f"ratio pprogen / fastest peer ({fastest}) for {what}: {mine[i] / table[fastest][i]:.2f}")
            ratios.append([f"pprogen / fastest peer ({fastest})", what, f"{mine[i] / table[fastest][i]:.2f}"])
    pyro_name = "pyro (AffineAutoregressive)"
    print(f"ratio pprogen / pyro for MAF log_prob: {table['pprogen'][0] / table[pyro_name][0]:.2f}; "
          f"for IAF sample: {table['pprogen'][1] / table[pyro_name][1]:.2f}")
    ratios += [["pprogen / pyro", "MAF log_prob", f"{table['pprogen'][0] / table[pyro_name][0]:.2f}"],
               ["pprogen / pyro", "IAF sample", f"{table['pprogen'][1] / table[pyro_name][1]:.2f}"]]
    missing = [n for n in ("zuko", "nflows") if n not in table]
    record(__file__, [result_table(title, ["library", "MAF log_prob", "sample", "log_prob+backward"], rows),
                      result_table("ratios", ["ratio", "operation", "value"], ratios)],
           [f"not installed, so left out: {', '.join(missing)}"] if missing else [], args=args, device=device)


if __name__ == "__main__":
    main()
