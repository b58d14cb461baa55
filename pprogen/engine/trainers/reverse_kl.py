"""A flow fitted by reverse KL to an energy target p(z) ∝ exp(-U(z)) (``--target``): the target is a Pyro model
(:class:`~pprogen.models.flows.EnergyTarget`), the flow its guide, and :func:`~pprogen.inference.fit` maximizes the
ELBO = log Z - KL(q || p); one epoch is one optimizer step on ``batch_size`` draws. No data is read.

A target is a built-in energy by name (``u1`` ... ``u4``) or a user's ``FILE.py:FUNCTION``. pprogen never imports
code that a run folder names: ``config.json`` records such a target's absolute path and the SHA-256 of the file,
and evaluating or resuming the run needs ``--target FILE.py:FUNCTION`` given again on the command line (the same
file, unchanged), or it is refused in one line.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pprogen.version import __version__
from pprogen.data import Dataset
from pprogen.engine import options as opts
from pprogen.engine.config import base_config
from pprogen.engine.options import REVERSE_KL
from pprogen.engine.report import format_reverse_kl
from pprogen.engine.trainer import Trainer, register_trainer, settings_group
from pprogen.inference.train import Optim, Stopping, fit
from pprogen.registry import ModelCard, create_model
from pprogen.runs import Run, seed_everything

if TYPE_CHECKING:
    from pprogen.inference.loop import History
    from pprogen.models.normalizing_flow import Flow


def is_code(spec: Any) -> bool:
    """Whether a target names a user's file of code (``FILE.py:FUNCTION``) rather than a built-in energy."""
    return isinstance(spec, str) and ":" in spec and spec.rsplit(":", 1)[0].endswith(".py")


def resolved(spec: str) -> str:
    """A ``FILE.py:FUNCTION`` target with the file's absolute path (the run resumes from anywhere)."""
    path, fn = spec.rsplit(":", 1)
    return f"{Path(path).resolve()}:{fn}"


def file_digest(spec: str) -> str | None:
    """The SHA-256 of a code target's file (None when it cannot be read)."""
    try:
        return hashlib.sha256(Path(spec.rsplit(":", 1)[0]).read_bytes()).hexdigest()
    except OSError:
        return None


def given_target(config: dict[str, Any], given: str | None, run_name: str, action: str) -> str:
    """The target to use for a recorded run: a built-in energy as recorded (a different ``--target`` refused); a
    code target only when ``given`` names the same file, unchanged since the run was fitted."""
    recorded = config["target"]
    if not is_code(recorded):
        if given is not None and given != recorded:
            raise ValueError(f"{run_name} was fitted to energy {recorded}; drop --target {given} to {action} it")
        return recorded
    if given is None:
        raise ValueError(f"{run_name} was fitted to the energy in {recorded}, and pprogen never runs code that a run "
                         f"folder names: read that file, then give --target {recorded} to {action} the run")
    if not is_code(given) or resolved(given) != recorded:
        raise ValueError(f"--target {given} is not the energy {run_name} was fitted to ({recorded}); give that one")
    digest = config.get("target_sha256")
    if digest is not None and file_digest(recorded) != digest:
        raise ValueError(f"{recorded.rsplit(':', 1)[0]} has changed since {run_name} was fitted to it (SHA-256 differs); "
                         "restore that file or fit a new run")
    return recorded


def target_dataset(dim: int) -> Dataset:
    """A placeholder data set for a reverse-KL fit: its rows only set how many draws of the flow a step takes."""
    return Dataset(name="target", train=torch.zeros(2, dim), valid=None, test=None, shape=(dim,), binary=False)


def reverse_kl_evaluation(model: Flow, target_spec: str, num_samples: int) -> dict[str, Any]:
    """A flow fitted to p(z) ∝ exp(-U(z)): the ELBO E_q[-U(z) - log q(z)] from ``num_samples`` draws (with its
    standard error), log Z by quadrature on [-6, 6]^2 for 2-D targets, and KL(q || p) = log Z - ELBO."""
    from pprogen.models.flows import load_energy

    dim = model.x_shape[0]
    energy = load_energy(target_spec, dim)
    with torch.no_grad():
        z, log_q = model.sample_with_log_prob(num_samples)
        lw = (-energy(z) - log_q).double()
    result = {"method": "reverse KL to an energy target", "target": target_spec, "num_samples": num_samples,
              "elbo": lw.mean().item(), "elbo_stderr": (lw.std() / num_samples ** 0.5).item(),
              "log_z_importance": (torch.logsumexp(lw, 0) - math.log(num_samples)).item()}
    if dim == 2:
        xs = torch.linspace(-6, 6, 1201, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2)
        with torch.no_grad():
            u = torch.cat([energy(chunk.float()).double() for chunk in grid.split(200000)])
        result["log_z_quadrature"] = (torch.logsumexp(-u, 0) + 2 * math.log(xs[1] - xs[0])).item()
        result["kl"] = result["log_z_quadrature"] - result["elbo"]
    return result


@register_trainer
class ReverseKLTrainer(Trainer):
    name = REVERSE_KL
    by_flag = False  # chosen by --target (or a flow whose card names a default target)
    ships_weights = False
    banner = ", reverse KL to an energy target"
    card_defaults = False  # the card's training defaults are for data, not for a target
    subject = "a reverse-KL fit"
    reads_note = ": --epochs counts optimizer steps, --batch-size draws a step"

    @classmethod
    def claims(cls, options: Any, card: ModelCard) -> bool:
        return opts.given(options, "target") is not None or bool(card.default_target)

    @classmethod
    def configure(cls, options: Any, card: ModelCard) -> tuple[dict[str, Any], Dataset | None]:
        from pprogen.models.flows import load_energy

        if card.kind != "flow":
            raise ValueError(f"--target fits flows by reverse KL; {card.name} is a {card.kind} model: train it on data")
        if opts.given(options, "data") is not None or opts.given(options, "limit") is not None:
            why = "has no closed-form inverse: it " if card.default_target else ""
            raise ValueError(f"{card.name} {why}fits an energy target by reverse KL (--target) and reads no data; drop "
                             "--data / --limit")
        if opts.given(options, "trainer") not in (None, "svi"):
            raise ValueError(f"--trainer {opts.given(options, 'trainer')} does not fit an energy target; drop it")
        cls.refuse_strays(options, card)
        model_args = opts.parse_pairs(opts.given(options, "set"))
        model_args.setdefault("x_dim", 2)
        spec = opts.given(options, "target") or card.default_target
        if is_code(spec):
            spec = resolved(spec)
        load_energy(spec, model_args["x_dim"])  # a bad target is refused before anything is written
        train = cls.train_settings(options, card)
        opts.refuse_an_unread_factor(options, train)
        config = base_config(options, card, cls.name, train)
        config.update(kind="flow", model_args=model_args, data=None, target=spec, guide="default",
                      pprogen_version=__version__, plate_name=None, limit=None, data_dir=None)
        if is_code(spec):
            config["target_sha256"] = file_digest(spec)
        return config, None

    @classmethod
    def check_resume(cls, options: Any, config: dict[str, Any], run: Run) -> None:
        given_target(config, opts.given(options, "target"), run.path.name, "resume")

    @classmethod
    def load(cls, run: Run, config: dict[str, Any], dataset: Dataset, device):
        model = create_model(config["model"], **config["model_args"])
        guide = model.as_guide("z")  # the flow is the guide
        run.load_weights("guide", guide)
        return target_dataset(model.x_shape[0]), model.to(device).eval(), guide

    @classmethod
    def ship_refusal(cls, path: str, config: dict[str, Any], model: Any) -> str | None:
        return f"{path} is a flow fitted to an energy target, not a likelihood of data; copy the run folder"

    @classmethod
    def check_request(cls, request: Any) -> None:
        if request.other_data or request.method != "auto" or request.limit is not None:
            raise ValueError("a flow fitted to an energy target is scored against its target: drop --data, --ood, "
                             "--method and --limit (--num-samples sets the draws)")
        if request.num_samples is not None and request.num_samples < 2:
            raise ValueError(f"--num-samples must be at least 2, got {request.num_samples}")

    @classmethod
    def score(cls, loaded: Any, request: Any) -> tuple[dict[str, Any], str, str]:
        """ELBO, log Z and KL(q || p) again (``num_samples`` draws, default 20000)."""
        target = given_target(loaded.config, request.target, loaded.run.path.name, "evaluate")
        torch.manual_seed(request.seed)
        result = reverse_kl_evaluation(loaded.model, target, request.num_samples or 20000)
        return result, format_reverse_kl(result), "target_evaluation"

    def __init__(self, config: dict[str, Any], dataset: Dataset | None, device, world, progress: bool,
                 resumed: bool) -> None:
        from pprogen.models.flows import EnergyTarget, load_energy

        if world.active:
            raise ValueError("a reverse-KL fit runs in one process; run it without torchrun")
        seed_everything(config["seed"])
        self.config, self.device, self.world, self.progress = config, device, world, progress
        self.model = create_model(config["model"], **config["model_args"])
        dim = self.model.x_shape[0]
        self.target = EnergyTarget(load_energy(config["target"], dim), dim)
        self.guide = self.model.as_guide("z")
        self.dataset = target_dataset(dim)

    def train(self, run: Run | None, resume):
        t = self.settings
        draws = torch.zeros(t.batch_size, self.model.x_shape[0])
        return fit(self.target, self.guide, draws, epochs=t.epochs, batch_size=t.batch_size,
                   optim=settings_group(Optim, asdict(t)), stopping=Stopping(patience=None), device=self.device,
                   seed=self.config["seed"], progress=self.progress, run=run, resume=resume, world=self.world)

    def history_summary(self, history: History) -> dict[str, Any]:
        return {"steps": len(history.records)}

    def trained_what(self, summary: dict[str, Any]) -> str:
        return f"{summary['epochs_run']} epochs"

    def evaluate(self, split: str, run: Run | None) -> dict[str, Any]:
        return reverse_kl_evaluation(self.model, self.config["target"], self.config.get("eval_samples", 20000))

    def pictures(self, run: Run, split: str) -> list[str]:
        from pprogen import plots
        from pprogen.models.flows import load_energy

        made = []
        if self.model.x_shape[0] == 2:
            with torch.no_grad():
                samples = self.model.sample(100000)
            plots.save_target_fit(load_energy(self.config["target"], 2), samples, run.path / "density.png",
                                  title=f"{self.config['model']} fitted to {Path(str(self.config['target'])).name} "
                                        "by reverse KL")
            made.append("density.png")
        plots.save_curves(run.read_metrics(), run.path / "curves.png", keys=("train_loss",),
                          ylabel="negative ELBO per draw (nats) = KL(q || p) - log Z",
                          title=f"{self.config['model']}: reverse-KL fit, one optimizer step an epoch")
        return made + ["curves.png"]

    def format(self, split: str, result: dict[str, Any]) -> str:
        return format_reverse_kl(result)
