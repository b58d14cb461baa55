"""The ``pprogen`` command: ``list``, ``info NAME``, ``train NAME``, ``evaluate RUN``, ``sample RUN``, ``ship RUN OUT``.

Arguments in, one call into the public face of :mod:`pprogen.engine` (or the registry) per command, text out.
The training flags come from the options declared in :mod:`pprogen.engine.options`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from pprogen import distributed
from pprogen.version import __version__
from pprogen.data import DataError, dataset_info, list_datasets
from pprogen.engine import (Finished, Interrupted, evaluate_run, flag_choices, format_trained, options, sample_run,
                            ship_run, train)
from pprogen.inference.train import NonFiniteLossError
from pprogen.registry import get_card, list_models
from pprogen.runs import RunError

MACHINE = ("command", "func", "run", "dist_timeout", "no_progress")  # not settings of the request


def settings(args: argparse.Namespace, *leave: str) -> dict[str, Any]:
    """The parsed arguments as keyword settings for the engine, less the command's own and ``leave``."""
    return {k: v for k, v in vars(args).items() if k not in MACHINE + leave}


def cmd_train(args) -> int:
    try:
        trained = train(args, progress=not args.no_progress, dist_timeout=args.dist_timeout, announce=print)
    except NonFiniteLossError as err:
        print(f"pprogen: training stopped: {err}", file=sys.stderr)
        return 1
    except Interrupted as stop:
        if stop.message:
            print(stop.message, file=sys.stderr)
        return 130
    if isinstance(trained, Finished):
        print(f"{trained.run.path.name} {trained.message}")
    elif trained.run is not None:  # the rank that writes
        print(format_trained(trained))
    return 0


def cmd_evaluate(args) -> int:
    _, text = evaluate_run(args.run, dist_timeout=args.dist_timeout, **settings(args))
    if text:
        print(text)
    return 0


def cmd_sample(args) -> int:
    print(sample_run(args.run, **settings(args)))
    return 0


def cmd_ship(args) -> int:
    if args.float32 and args.int8:
        raise ValueError("--float32 and --int8 ask for two encodings of the weights; give one")
    sizes = ship_run(args.run, args.out, half=not args.float32, data_dir=args.data_dir, int8=args.int8)
    files = ", ".join(f"{name}.safetensors {size / 2**20:.2f} MiB" for name, size in sizes.items())
    print(f"shipped {args.run} to {args.out} ({files}); evaluate it with `pprogen evaluate {args.out}` and compare")
    return 0


def cmd_list(args) -> int:
    if args.data:  # the data-set registry
        names = list_datasets(args.pattern)
        width = max((len(n) for n in names), default=0)
        for name in names:
            card = dataset_info(name)
            where = "offline" if card.offline else "needs --data-dir or a download"
            print(f"{name:{width}s}  {card.kind:12s} {where:31s} {card.description.splitlines()[0]}")
        return 0
    names = list_models(args.pattern)
    width = max((len(n) for n in names), default=0)
    for name in names:
        card = get_card(name)
        print(f"{name:{width}s}  {card.kind:15s} trains on: {card.trains_on}")
    return 0


def cmd_info(args) -> int:
    print(get_card(args.model).describe())
    return 0


def _train_parser(sub) -> None:
    s = sub.add_parser("train", help="train a model; writes a run folder")
    s.add_argument("model", nargs="?", help="registered model name (omit with --resume)")
    s.add_argument("--data", help="data set name or file (default: the model's card)")
    s.add_argument("--data-dir", help="folder with downloaded data (or set PPROGEN_DATA)")
    s.add_argument("--limit", type=int, help="use at most this many examples per split")
    options.add_arguments(s)
    s.add_argument("--guide",
                   help="default (the model's own), amortized_normal, amortized_lowrank, amortized_iaf or auto_*")
    s.add_argument("--trainer", choices=flag_choices(),
                   help="svi (default), adversarial (GANs), em (closed-form EM: gmm, mixture_of_bernoullis; --epochs "
                        "iterations) or nuts (NUTS over global latents: bayesian_gmm)")
    s.add_argument("--target", metavar="NAME|FILE.py:FUNCTION", help="flows: fit an energy target by reverse KL "
                   "instead of data: u1, u2, u3, u4 (Rezende & Mohamed 2015) or a Python function of z (N, D) "
                   "returning the energy U(z) (N,); planar and radial train this way (default u1)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="model argument, e.g. --set z_dim=20 --set "
                   "hidden_dims=[500] (JSON or a Python literal, else text; a value of the wrong kind is refused)")
    s.add_argument("--device", help="auto (default), cpu or cuda")
    s.add_argument("--seed", type=int, help="random seed (default 0)")
    s.add_argument("--out", help="run folder (default: runs/<model>-<data>-<time>)")
    s.add_argument("--resume", metavar="RUN", help="continue the run in this folder")
    s.add_argument("--override", action="append", metavar="KEY=VALUE",
                   help="with --resume: change a setting of the run from the next epoch on (recorded in config.json)")
    s.add_argument("--plate-name", help="the per-datum plate's name (default: found from the program)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT,
                   help="under torchrun: seconds a collective waits for the other ranks before the run stops")
    s.set_defaults(func=cmd_train)


def _evaluate_parser(sub) -> None:
    s = sub.add_parser("evaluate", help="test NLL of a trained run")
    s.add_argument("run")
    s.add_argument("--split", default="test", choices=("train", "valid", "test"))
    s.add_argument("--method", default="auto", choices=("auto", "is", "ais", "bdmc"), help="auto (default): the "
                   "model's exact log p(x) where it has one, its posterior predictive for global latents, else "
                   "importance sampling with the guide; is: importance sampling; ais: annealed importance sampling "
                   "from the guide to each example's posterior; bdmc: AIS's sandwich bounds on simulated data")
    s.add_argument("--num-samples", type=int,
                   help="importance samples per example (default 1000; GANs: generated samples scored)")
    s.add_argument("--refine", type=int, default=0, metavar="STEPS", help="importance sampling: fit a per-example "
                   "affine map of the guide's draws by STEPS Adam steps before sampling (written to summary.json as "
                   "SPLIT_evaluation_refined; default 0)")
    s.add_argument("--steps", type=int, help="ais/bdmc: annealing steps T (default 1000)")
    s.add_argument("--chains", type=int, help="ais/bdmc: chains per example C (default 16)")
    s.add_argument("--leapfrog", type=int, help="ais/bdmc: leapfrog steps per HMC transition (default 10)")
    s.add_argument("--schedule", choices=("sigmoid", "linear", "geometric"), help="ais/bdmc: default sigmoid")
    s.add_argument("--seed", type=int, default=0, help="random seed of the estimate (default 0)")
    s.add_argument("--limit", type=int, help="evaluate the first N examples of the split only")
    s.add_argument("--data-dir", help="read the run's data from this folder (default: where it was trained from)")
    s.add_argument("--data", metavar="NAME|FILE", help="score this data set's --split instead of the run's own "
                   "(same shape per example; binary when the run's data was)")
    s.add_argument("--ood", metavar="NAME|FILE", help="out-of-distribution scores of this data set against the "
                   "in-distribution --split: AUROC and FPR at 95%% TPR by log-likelihood and by a typicality test")
    s.add_argument("--ood-batch", type=int, help="inputs per typicality test (default 1; Nalisnick et al. test "
                                                 "batches of M)")
    s.add_argument("--target", metavar="FILE.py:FUNCTION", help="a flow fitted to a user's energy: that file again "
                   "(pprogen never runs code that a run folder names)")
    s.add_argument("--dist-timeout", type=float, default=distributed.DEFAULT_TIMEOUT,
                   help="under torchrun: seconds a collective waits for the other ranks")
    s.set_defaults(func=cmd_evaluate)


def _sample_parser(sub) -> None:
    s = sub.add_parser("sample", help="draw samples from a trained run; interpolate or traverse its latent space")
    s.add_argument("run")
    s.add_argument("-n", type=int, help="samples (default 64); rows of --interpolate (default 8); latent dimensions "
                                        "of --traverse (default 10)")
    s.add_argument("--out", help="file: .png/.pdf picture, .npy or .pt array (default: a picture in the run folder)")
    s.add_argument("--seed", type=int, default=0)
    pictures = s.add_mutually_exclusive_group()
    pictures.add_argument("--interpolate", action="store_true", help="spherical interpolation between pairs of latents")
    pictures.add_argument("--traverse", action="store_true", help="each latent dimension swept with the others fixed "
                                                                   "(ordered by KL with --from-data)")
    s.add_argument("--from-data", action="store_true", help="start at the guide's encodings of the run's data")
    s.add_argument("--split", default="test", choices=("train", "valid", "test"), help="data for --from-data")
    s.add_argument("--limit", type=int, help="--traverse --from-data: rows that measure each dimension's KL")
    s.add_argument("--steps", type=int, help="pictures per row (default 10 for --interpolate, 9 for --traverse)")
    s.add_argument("--span", type=float, help="--traverse: sweep each latent over [-span, span] (default 3)")
    means = s.add_mutually_exclusive_group()
    means.add_argument("--mean", action="store_true", help="show the likelihood's mean E[x | z] (default for "
                                                           "--interpolate and --traverse)")
    means.add_argument("--draws", action="store_true", help="show draws x ~ p(x | z) (default for plain samples)")
    s.add_argument("--label", type=int, help="conditional models: draw this class (default: class j in column j)")
    s.add_argument("--psi", type=float, help="style-based generators: truncation psi in [0, 1] (1: none)")
    s.add_argument("--impute", metavar="FILE", help="fill in the missing entries of FILE's rows (.npy/.pt with NaN "
                   "where missing, or .npz with x and a boolean 'missing' mask): -n completions per row")
    s.add_argument("--particles", type=int, help="--impute: particles per row (default 256)")
    s.add_argument("--data-dir", help="read the run's data from this folder (a shipped run needs none)")
    s.set_defaults(func=cmd_sample)


def _small_parsers(sub) -> None:
    s = sub.add_parser("list", help="list the zoo's models (--data: the data sets)")
    s.add_argument("pattern", nargs="?", default="*")
    s.add_argument("--data", action="store_true", help="list the registered data sets instead")
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("info", help="print a model's card")
    s.add_argument("model")
    s.set_defaults(func=cmd_info)
    s = sub.add_parser("ship", help="copy a trained run as a small folder of config and weights (float16)")
    s.add_argument("run")
    s.add_argument("out", help="the new folder (must not exist)")
    s.add_argument("--float32", action="store_true", help="keep the weights in float32")
    s.add_argument("--int8", action="store_true", help="store matrices and kernels as int8 with a float32 scale per "
                   "block of 256 entries (about half float16's size; evaluate the copy before trusting it)")
    s.add_argument("--data-dir", help="read the run's data from this folder (for its shapes)")
    s.set_defaults(func=cmd_ship)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pprogen", description="Deep generative models as Pyro programs.")
    p.add_argument("--version", action="version", version=f"pprogen {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (_small_parsers, _train_parser, _evaluate_parser, _sample_parser):
        add(sub)
    return p


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a note is logged."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Notes(logging.Formatter):
    """Notes as ``pprogen: note``; the lines of a progress display (``epoch 3/20: ...``, ``sampling: 392/784
    dimensions``; records marked ``progress``, :mod:`pprogen.progress`) as they are."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if getattr(record, "progress", False) else f"pprogen: {text}"


def show_notes() -> None:
    """The library logs its notes and its progress lines (``logging.getLogger("pprogen")``, no handler of its own);
    the command line shows them on stderr, once."""
    log = logging.getLogger("pprogen")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(_Notes())
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    show_notes()
    if args.command == "train" and not args.model and not args.resume:
        parser().error("train needs a model name (see `pprogen list`) or --resume RUN")
    try:
        return args.func(args)
    except (ValueError, TypeError, RunError, DataError) as err:
        print(f"pprogen: error: {err}", file=sys.stderr)
        return 2
    except distributed.CollectiveError as err:
        print(f"pprogen: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pprogen: interrupted; nothing was left half-written", file=sys.stderr)
        return 130
    finally:
        distributed.shutdown()


def run() -> None:
    """The console entry point (``pprogen ...`` and ``python -m pprogen ...``): exits with :func:`main`'s status.

    As one of several ranks (torchrun) the process leaves without the interpreter's teardown, once every file is
    written and the output flushed: gloo's worker threads release the last collective's tensors after the
    collective has returned, and a release that reaches them during teardown cannot take the GIL and aborts the
    process ("terminate called without an active exception", seen on about 1 run in 20 on a loaded machine)
    although its work was done.
    """
    code = main()
    if distributed.launched():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
