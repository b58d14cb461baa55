"""Closed-form expectation-maximization (the model's ``fit_em``) by :func:`pprogen.inference.em.fit_em`: one EM
iteration an epoch on the shared epoch loop, from components started at data points; stops when an iteration
raises the training log-likelihood by less than 1e-7 of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pprogen.data import Dataset
from pprogen.engine.config import condition_of
from pprogen.engine.options import EM
from pprogen.engine.pictures import likelihood_pictures
from pprogen.engine.trainer import Trainer, register_trainer, single_process_setup
from pprogen.inference.em import fit_em
from pprogen.registry import ModelCard
from pprogen.runs import Run

if TYPE_CHECKING:
    from pprogen.inference.loop import History


@register_trainer
class EMTrainer(Trainer):
    name = EM
    opt_in = True
    banner = ", EM"

    reads_note = ", the number of EM iterations"

    @classmethod
    def stray_message(cls, stray: list[str], card: ModelCard, resuming: bool = False) -> str:
        if resuming:
            return f"{stray[0]} does not apply to an EM run; resume it with --epochs N"
        return super().stray_message(stray, card)

    @classmethod
    def train_settings(cls, options: Any, card: ModelCard) -> dict[str, Any]:
        train = super().train_settings(options, card)
        if train["epochs"] < 1:
            raise ValueError(f"--epochs (EM iterations) must be at least 1, got {train['epochs']}")
        return train

    def __init__(self, config: dict[str, Any], dataset: Dataset | None, device, world, progress: bool,
                 resumed: bool) -> None:
        self.dataset, self.model, self.guide = single_process_setup(
            self, config, dataset, device, world, "em", f"{config['model']} has no closed-form EM; --trainer em fits "
            "gmm and mixture_of_bernoullis (train this model with --trainer svi)")
        if condition_of(self.model, self.dataset, "train"):
            raise ValueError(f"--trainer em does not fit conditional models such as {config['model']}")
        self.model.to(device)
        if not resumed:
            self.model.init_from_data(self.dataset.train.to(device))

    def train(self, run: Run | None, resume):
        valid = self.dataset.valid.to(self.device) if self.dataset.valid is not None else None
        return fit_em(self.model, self.dataset.train.to(self.device), valid, epochs=self.settings.epochs,
                      run=run, resume=resume, device=self.device, progress=self.progress, guide=self.guide)

    def history_summary(self, history: History) -> dict[str, Any]:
        return {"em_iterations": len(history.records)}

    def trained_what(self, summary: dict[str, Any]) -> str:
        return f"{summary['epochs_run']} EM iterations"

    def pictures(self, run: Run, split: str) -> list[str]:
        return likelihood_pictures(run, self.model, self.guide, self.dataset, self.device,
                                   curve_label="negative log-likelihood per datum (nats), one EM iteration an epoch")
