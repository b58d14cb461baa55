"""Training by SVI (:func:`pprogen.inference.fit`): any model with a guide, and fully observed densities with an
empty one; the ELBO estimator, its particles, beta and alpha come from the run's options."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from pprogen.capabilities import capabilities
from pprogen.data import Dataset
from pprogen.engine.config import build, condition_of
from pprogen.engine.options import SVI
from pprogen.engine.pictures import likelihood_pictures
from pprogen.engine.report import format_disentanglement, format_eval
from pprogen.engine.scoring import disentanglement_or_why
from pprogen.engine.trainer import Trainer, register_trainer
from pprogen.engine.trainer import settings_group as group
from pprogen.inference.train import Objective, Optim, Speed, Stopping, fit
from pprogen.registry import ModelCard
from pprogen.runs import Run, seed_everything

if TYPE_CHECKING:
    from pprogen.inference.loop import History

@register_trainer
class SVITrainer(Trainer):
    """The model, its guide and the estimator, checked once by ``fit`` before the run's first write."""

    name = SVI

    @classmethod
    def default_for_kind(cls, kind: str | None) -> bool:
        return kind != "gan"

    @classmethod
    def refusal(cls, card: ModelCard) -> str | None:
        if card.kind == "gan":
            return f"--trainer svi does not train {card.name} (a gan model); GANs train adversarially"
        return None

    @classmethod
    def also_refused(cls, card: ModelCard) -> tuple[str, ...]:
        # an autoencoder: a flat prior and a point-mass guide, no KL term to weight or anneal
        return ("beta", "kl_warmup") if card.kind == "autoencoder" else ()

    @classmethod
    def stray_message(cls, stray: list[str], card: ModelCard, resuming: bool = False) -> str:
        article = "an" if card.kind[0] in "aeiou" else "a"
        return (f"{', '.join(stray)} {'does' if len(stray) == 1 else 'do'} not apply to {card.name} ({article} "
                f"{card.kind} model, trained by SVI); drop {'it' if len(stray) == 1 else 'them'}")

    def __init__(self, config: dict[str, Any], dataset: Dataset | None, device, world, progress: bool,
                 resumed: bool) -> None:
        seed_everything(config["seed"])  # the initial weights too come from --seed
        self.config, self.device, self.world, self.progress = config, device, world, progress
        self.dataset, self.model, self.guide = build(config, dataset)
        self.condition = condition_of(self.model, self.dataset, "train")
        self.valid_condition = condition_of(self.model, self.dataset, "valid") if self.dataset.valid is not None else None
        if not resumed and capabilities(self.model).init_from_data:  # mixtures: components start at data points
            self.model.init_from_data(self.dataset.train)

    def train(self, run: Run | None, resume):
        train, dataset = asdict(self.settings), self.dataset
        return fit(
            self.model, self.guide, dataset.train, valid_data=dataset.valid, epochs=train["epochs"],
            batch_size=train["batch_size"], optim=group(Optim, train), objective=group(Objective, train),
            stopping=Stopping(patience=train["patience"] if dataset.valid is not None else None),
            speed=group(Speed, train), device=self.device, seed=self.config["seed"], progress=self.progress,
            run=run, resume=resume, condition=self.condition, valid_condition=self.valid_condition, world=self.world,
            plate_name=self.config.get("plate_name"),
        )

    def history_summary(self, history: History) -> dict[str, Any]:
        return {"best_epoch": history.best_epoch,
                "best_valid_loss": history.best_valid_loss if history.best_epoch else None}

    def evaluate(self, split: str, run: Run | None) -> dict[str, Any]:
        result = super().evaluate(split, run)
        scores = disentanglement_or_why(self.model, self.guide, self.dataset, self.device) if self.world.is_main else None
        if scores is not None:
            result["disentanglement"] = scores
        return result

    def pictures(self, run: Run, split: str) -> list[str]:
        return likelihood_pictures(run, self.model, self.guide, self.dataset, self.device)

    def format(self, split: str, result: dict[str, Any]) -> str:
        text = format_eval(split, result)
        if "disentanglement" in result:
            text += "\n" + format_disentanglement(result["disentanglement"])
        return text
