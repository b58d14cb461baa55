"""Inference for any Pyro program: ELBO estimators, SVI training, closed-form EM, adversarial training (all three on
one shared epoch loop), evaluation (exact, importance-sampled or annealed evidence)."""

from pprogen.inference.adversarial import AdversarialTrainer
from pprogen.inference.ais import AnnealedEvidence, Sandwich, ais, annealing_schedule, bdmc
from pprogen.inference.elbo import ELBOLoss, TraceELBO
from pprogen.inference.em import fit_em
from pprogen.inference.estimators import make_elbo
from pprogen.inference.evaluate import Evaluation, evaluate
from pprogen.inference.iwae import RenyiELBO
from pprogen.inference.loop import save_weights
from pprogen.inference.guides import make_guide
from pprogen.inference.marginal import Evidence, log_marginal
from pprogen.inference.ood import OODReport, auroc, detect_ood, fpr_at_tpr
from pprogen.inference.replay import StepReplay
from pprogen.mcmc import run_nuts
from pprogen.inference.train import History, NonFiniteLossError, Objective, Optim, Speed, Stopping, TrainStep, fit

__all__ = [
    "AdversarialTrainer",
    "AnnealedEvidence",
    "ELBOLoss",
    "Evaluation",
    "Evidence",
    "History",
    "NonFiniteLossError",
    "OODReport",
    "Objective",
    "Optim",
    "RenyiELBO",
    "Sandwich",
    "Speed",
    "StepReplay",
    "Stopping",
    "TraceELBO",
    "TrainStep",
    "ais",
    "annealing_schedule",
    "auroc",
    "bdmc",
    "detect_ood",
    "evaluate",
    "fit",
    "fit_em",
    "fpr_at_tpr",
    "log_marginal",
    "make_elbo",
    "make_guide",
    "run_nuts",
    "save_weights",
]
