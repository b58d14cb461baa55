"""IS versus AIS versus BDMC on a trained VAE: the README's evidence table. Resumable, block by block.

    python benchmarks/ais_mnist.py RUN --jobs is:5000:1000 ais:100:1000 bdmc:100:100 ais:1000:1000
    python benchmarks/ais_mnist.py RUN --report

RUN is a `pprogen train vae --data binarized_mnist ...` run folder. A job is METHOD:SETTING:IMAGES —
``is:K:N`` (importance sampling with K guide samples), ``ais:T:N`` (AIS with T steps), ``bdmc:T:N`` (BDMC
with T steps on N images simulated from the model) — on the first N validation images, in blocks of
``--block`` images. Each finished block is appended to RUN/ais_table.jsonl with its per-image estimates, and
blocks already there are skipped, so an interrupted table continues where it stopped. ``--report`` prints
the table: every method on the images all of them covered, with the paired difference to IS.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from pprogen.engine import load_run as _load_run
from pprogen.inference import ais, bdmc, log_marginal


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--jobs", nargs="+", default=["is:5000:1000", "ais:100:1000", "bdmc:100:100", "ais:1000:1000"])
    p.add_argument("--chains", type=int, default=16)
    p.add_argument("--leapfrog", type=int, default=10)
    p.add_argument("--block", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", action="store_true", help="print the table from RUN/ais_table.jsonl and stop")
    args = p.parse_args()
    out = Path(args.run) / "ais_table.jsonl"
    if args.report:
        report(out)
        return
    jobs = [_parse(j) for j in args.jobs]
    run, config, dataset, model, guide, device = _load_run(args.run, torch.device("cpu"))
    valid = dataset.split("valid")
    done = {(r["method"], r["setting"], r["begin"]) for r in _read(out)}
    for method, setting, images in jobs:
        for begin in range(0, images, args.block):
            stop = min(images, begin + args.block)
            if (method, setting, begin) in done:
                continue
            x = valid[begin:stop]
            torch.manual_seed(args.seed + begin)
            t = time.perf_counter()
            row = {"method": method, "setting": setting, "begin": begin, "stop": stop, "chains": args.chains,
                   "leapfrog": args.leapfrog}
            if method == "is":
                e = log_marginal(model, guide, x, num_samples=setting)
                row["log_prob"] = e.log_prob.tolist()
            elif method == "ais":
                e = ais(model, guide, x, num_steps=setting, num_chains=args.chains, leapfrog_steps=args.leapfrog)
                s = e.summary()
                row.update(log_prob=e.log_prob.tolist(), accept=s["mean_accept_rate"], divergences=s["divergences"])
            else:
                sw = bdmc(model, guide, x, num_steps=setting, num_chains=args.chains, leapfrog_steps=args.leapfrog)
                s = sw.summary()
                row.update(lower=sw.lower.log_prob.tolist(), upper=sw.upper.log_prob.tolist(),
                           accept=s["mean_accept_rate"], divergences=s["divergences"])
            row["seconds"] = time.perf_counter() - t
            with open(out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{method} {setting} images {begin}..{stop}: {row['seconds']:.0f} s", flush=True)
    report(out)


def _parse(job: str) -> tuple[str, int, int]:
    try:
        method, setting, images = job.split(":")
        if method not in ("is", "ais", "bdmc"):
            raise ValueError
        return method, int(setting), int(images)
    except ValueError:
        raise SystemExit(f"bad job {job!r}: write METHOD:SETTING:IMAGES with METHOD is, ais or bdmc") from None


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(path: Path) -> None:
    rows = _read(path)
    by_job: dict[tuple[str, int], dict[int, dict]] = {}
    for r in rows:
        by_job.setdefault((r["method"], r["setting"]), {})[r["begin"]] = r
    estimates = {}
    for (method, setting), blocks in sorted(by_job.items()):
        if method == "bdmc":
            lower = torch.tensor([v for b in sorted(blocks) for v in blocks[b]["lower"]], dtype=torch.float64)
            upper = torch.tensor([v for b in sorted(blocks) for v in blocks[b]["upper"]], dtype=torch.float64)
            gap = upper - lower
            seconds = sum(b["seconds"] for b in blocks.values())
            print(f"bdmc T={setting:<6} {gap.numel():5d} simulated images: lower {lower.mean():.3f}  upper "
                  f"{upper.mean():.3f}  gap {gap.mean():.3f} ± {gap.std() / math.sqrt(gap.numel()):.3f} "
                  f"(max {gap.max():.3f})  accept {_mean(blocks, 'accept'):.2f}  divergences "
                  f"{sum(b['divergences'] for b in blocks.values())}  {seconds:.0f} s")
            continue
        values = {}
        for b in sorted(blocks):
            for i, v in enumerate(blocks[b]["log_prob"]):
                values[b + i] = v
        estimates[(method, setting)] = (values, blocks)
    if not estimates:
        return
    common = sorted(set.intersection(*(set(v) for v, _ in estimates.values())))
    base = estimates.get(("is", max((s for m, s in estimates if m == "is"), default=0)))
    print(f"on the {len(common)} validation images every estimate covers:")
    for (method, setting), (values, blocks) in sorted(estimates.items()):
        lp = torch.tensor([values[i] for i in common], dtype=torch.float64)
        nll = -lp
        label = f"K={setting}" if method == "is" else f"T={setting}"
        seconds = sum(b["seconds"] for b in blocks.values()) / len(values) * len(common)
        text = f"{method:4} {label:8} NLL {nll.mean():.3f} ± {nll.std() / math.sqrt(nll.numel()):.3f}"
        if base is not None and method != "is":
            diff = lp - torch.tensor([base[0][i] for i in common], dtype=torch.float64)
            text += f"  tighter than IS by {diff.mean():.3f} ± {diff.std() / math.sqrt(diff.numel()):.3f} nats"
        if method == "ais":
            text += f"  accept {_mean(blocks, 'accept'):.2f}  divergences {sum(b['divergences'] for b in blocks.values())}"
        print(text + f"  {seconds:.0f} s")
        if len(values) > len(common):
            all_nll = -torch.tensor(list(values.values()), dtype=torch.float64)
            print(f"     (on all {len(values)} images it covers: NLL {all_nll.mean():.3f} ± "
                  f"{all_nll.std() / math.sqrt(all_nll.numel()):.3f})")


def _mean(blocks: dict, key: str) -> float:
    return sum(b[key] * (b["stop"] - b["begin"]) for b in blocks.values()) / sum(b["stop"] - b["begin"] for b in blocks.values())


if __name__ == "__main__":
    main()
