"""A run from start to finish: :func:`prepare_run` turns the ``pprogen train`` options into a new run's config
(or a resumed run's, checked against the options given) and :func:`train_run` trains it with its trainer, then
writes the evaluation, the pictures and ``summary.json``."""

from __future__ import annotations

import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pprogen import distributed
from pprogen.data import Dataset
from pprogen.engine import budget
from pprogen.engine import options as opts
from pprogen.engine.config import finished, resume_config
from pprogen.engine.trainer import Trainer, select, trainer_class
from pprogen.inference.loop import History
from pprogen.registry import get_card
from pprogen.runs import REQUIRED, Run, run_lock

logger = logging.getLogger(__name__)  # no handler here: the command line decides what is shown


def prepare_run(options: Any) -> tuple[dict[str, Any], Dataset | None, Run | None, dict[str, Any] | None, str | None]:
    """``(config, dataset, run, checkpoint, finished)`` from the ``pprogen train`` options (an argparse namespace,
    a dict or any object with those attributes): a new run's settings, or with ``resume`` the run's own, checked
    against the options given; ``finished`` says why a resumed run has nothing to train. Every setting is checked
    here, before anything is trained or written."""
    if opts.given(options, "resume"):
        run = Run.open(opts.given(options, "resume"))
        config = run.config_with(*REQUIRED)
        trainer = trainer_class(config)
        if not trainer.resumable:
            raise ValueError(trainer.resume_refusal(run))
        checkpoint = run.load_checkpoint()  # a damaged checkpoint is reported before anything is written
        config = resume_config(options, run, config, trainer, get_card(config["model"]), checkpoint["epoch"])
        return config, None, run, checkpoint, finished(config, checkpoint)
    if opts.given(options, "override"):
        raise ValueError("--override changes a setting of a resumed run; for a new run give the option itself "
                         "(e.g. --lr 0.01)")
    card = get_card(opts.given(options, "model"))
    config, dataset = select(options, card).configure(options, card)
    opts.validate(config)
    budget.check_model(config)
    if dataset is not None and "particles" in config["train"]:
        train = config["train"]
        budget.check_rows(f"--particles {train['particles']} with --batch-size {train['batch_size']}",
                          train["particles"] * min(train["batch_size"], dataset.train.shape[0]), dataset.shape,
                          "lower --particles or --batch-size")
    return config, dataset, None, None, None


@dataclass
class Finished:
    """A resumed run with nothing left to train: its folder and the line that says why."""

    run: Run
    message: str


def train(options: Any, progress: bool = True, dist_timeout: float = distributed.DEFAULT_TIMEOUT,
          announce: Callable[[str], None] | None = None) -> Trained | Finished:
    """``pprogen train``: :func:`prepare_run` then :func:`train_run`, with a resumed run's folder locked against
    a second writer from before its checkpoint is read until its last file is written (a new run's folder is
    locked at its first write). ``announce`` as in :func:`train_run`."""
    resume = opts.given(options, "resume")
    writer = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone writes
    with run_lock(resume, "pprogen train --resume") if resume and writer else nullcontext():
        config, dataset, run, checkpoint, finished = prepare_run(options)
        if finished:
            return Finished(run, finished)
        return train_run(config, dataset, run, checkpoint, out=opts.given(options, "out"), progress=progress,
                         dist_timeout=dist_timeout, announce=announce)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training, with the one line to tell the user (None on the ranks that do not write)."""

    def __init__(self, message: str | None) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Trained:
    """What :func:`train_run` did: the run folder (None on ranks that do not write), the trainer (model, guide,
    data), the history, the seconds it trained, ``summary.json``'s content and the pictures written."""

    run: Run | None
    session: Trainer
    history: History
    seconds: float
    summary: dict[str, Any]
    split: str
    pictures: list[str]


def train_run(config: dict[str, Any], dataset: Dataset | None = None, run: Run | None = None,
              checkpoint: dict[str, Any] | None = None, out: str | Path | None = None, progress: bool = True,
              dist_timeout: float = distributed.DEFAULT_TIMEOUT,
              announce: Callable[[str], None] | None = None) -> Trained:
    """Train the run ``config`` describes with its trainer, set up and checked before anything is written; a
    resumed ``run`` continues from ``checkpoint``. Then the evaluation, the pictures and ``summary.json``.
    ``announce`` gets the one line that says what trains where (default: this module's logger, at INFO; the
    command line prints it)."""
    world, device = distributed.init(config["device"], dist_timeout)
    resumed = run is not None
    session = trainer_class(config)(config, dataset, device, world, progress=progress, resumed=resumed)
    if world.is_main:  # only rank 0 writes
        if run is None:  # written at the first write: a trainer that refuses the data leaves nothing on disk
            run = Run.create(config, out if out is not None else default_out(config), lazy=True, reuse=True)
        else:
            run.stage_config(config)  # written at the first write, after the trainer's checks
        (announce or logger.info)(_banner(config, session, world, run))
    else:
        run = None
    with run.lock("pprogen train") if run is not None else nullcontext():  # one writer per run
        started = time.perf_counter()
        try:
            history = session.train(run, checkpoint if resumed and not world.active else resumed)
        except KeyboardInterrupt:
            raise Interrupted(_interrupted(run) if world.is_main else None) from None
        seconds = time.perf_counter() - started
        session.model.eval()
        split = "valid" if session.dataset.valid is not None else "train"
        summary = _summary(session, history, checkpoint if resumed else None, seconds, device)
        result = session.evaluate(split, run)
        pictures: list[str] = []
        if world.is_main:
            summary[f"{split}_evaluation"] = result
            run.write_json("summary.json", summary)
            pictures = session.pictures(run, split)
    return Trained(run, session, history, seconds, summary, split, pictures)


def default_out(config: dict[str, Any], root: str | Path = "runs") -> Path:
    """``runs/<model>-<data or target>-<time>``: a new run's folder when ``--out`` is not given."""
    source = config["data"] if config.get("data") is not None else str(config.get("target")).rsplit(":", 1)[0]
    return Path(root) / f"{config['model']}-{Path(str(source)).stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _banner(config: dict[str, Any], session: Trainer, world: distributed.World, run: Run) -> str:
    if config.get("target") is not None:
        return (f"training {config['model']} on energy target {config['target']} ({config['train']['batch_size']} "
                f"draws a step{session.banner}) -> {run.path}")
    ranks = f", {world.size} ranks" if world.active else ""
    return (f"training {config['model']} on {config['data']} ({session.dataset.train.shape[0]} examples"
            f"{ranks}{session.banner}) -> {run.path}")


def _summary(session: Trainer, history: History, checkpoint: dict[str, Any] | None, seconds: float,
             device) -> dict[str, Any]:
    """summary.json's training part. The training time is the sum of the epochs' own seconds (their records keep
    them across sessions), so a resumed run's time is the earlier sessions' plus this one's and the sessions' times
    add up; a trainer whose records keep no seconds is timed by the wall clock of this session."""
    start = checkpoint.get("epoch", 0) if isinstance(checkpoint, dict) else 0
    earlier = sum(r.get("seconds", 0.0) for r in history.records[:start])
    mine = history.records[start:]
    if mine and all(isinstance(r.get("seconds"), (int, float)) for r in mine):
        seconds = sum(r["seconds"] for r in mine)
    resumed_at = {"resumed_at_epoch": start, "session_train_seconds": round(seconds, 2)} if start else {}
    return {"epochs_run": len(history.records), **session.history_summary(history),
            "stop_reason": history.stop_reason, "train_seconds": round(earlier + seconds, 2), **resumed_at,
            **({"fast_path": history.fast_path} if history.fast_path else {}), "device": str(device)}


def _interrupted(run: Run | None) -> str:
    """The one line for Ctrl-C: what is saved and how to go on (the checkpoint of the last complete epoch is
    intact: every file is written atomically)."""
    if run is None or not run.exists:
        return "pprogen: interrupted before the first epoch ended; nothing was written: start the run again"
    records = run.read_metrics()
    if records and (run.path / "checkpoint.pt").is_file():
        return (f"pprogen: interrupted; epoch {records[-1]['epoch']} is saved in {run.path}: continue with "
                f"`pprogen train --resume {run.path}`")
    return (f"pprogen: interrupted before the first epoch ended; nothing to resume in {run.path if run else 'the run'} "
            "(it holds the config only): start the run again")
