"""The run engine: a run's settings, its trainer, and what is written about it — for the command line and Python.

Its public face, which the command line uses and nothing else of it:

- :func:`train` (``pprogen train``: a run folder locked against a second writer), made of :func:`prepare_run`
  (the options -> a new or resumed run's config, every setting checked) and :func:`train_run` (train with the
  run's trainer, then the evaluation, pictures and ``summary.json``);
- :func:`load` (``pprogen.load``) -> :class:`LoadedRun` (model, guide, data set, config, device; ``evaluate`` and
  ``sample``), :func:`evaluate_run`, :func:`sample_run` and :func:`ship_run`;
- the trainers' registry (:func:`register_trainer`, :data:`TRAINERS`) and the options, declared once
  (:mod:`pprogen.engine.options`).

Inside: ``options.py`` (the options), ``config.py`` (config.json: new, resumed, built), ``trainer.py`` (the
protocol and the registry), ``trainers/`` (svi, adversarial, em, nuts, reverse_kl: one file each),
``scoring.py``, ``pictures.py``, ``report.py`` (text), ``loaded.py``, ``sampling.py``, ``ship.py`` and
``lifecycle.py`` (prepare and train a run).
"""

from pprogen.engine import options
from pprogen.engine import trainers  # noqa: F401  (registers the trainers)
from pprogen.engine.config import build, condition_of
from pprogen.engine.lifecycle import Finished, Interrupted, Trained, prepare_run, train, train_run
from pprogen.engine.loaded import LoadedRun, evaluate_run, load, load_run, sample_run
from pprogen.engine.options import OPTIONS, Option, parse_pairs, parse_value
from pprogen.engine.pictures import likelihood_pictures
from pprogen.engine.report import (format_disentanglement, format_eval, format_gan_eval, format_ood,
                                   format_reverse_kl, format_trained)
from pprogen.engine.sampling import SampleRequest, draw
from pprogen.engine.scoring import (EvaluationRequest, disentanglement, evaluate_split, ood_split, other_dataset,
                                    reference_split, some_split)
from pprogen.engine.ship import ship_run
from pprogen.engine.trainer import TRAINERS, Trainer, flag_choices, register_trainer, trainer_class
from pprogen.engine.trainers.adversarial import gan_evaluation, gan_trainer
from pprogen.engine.trainers.reverse_kl import reverse_kl_evaluation, target_dataset

__all__ = [
    "OPTIONS", "TRAINERS", "EvaluationRequest", "Finished", "Interrupted", "LoadedRun", "Option", "SampleRequest", "Trained",
    "Trainer", "build", "condition_of", "disentanglement", "draw", "evaluate_run", "evaluate_split",
    "flag_choices", "format_disentanglement", "format_eval", "format_gan_eval", "format_ood", "format_reverse_kl",
    "format_trained", "gan_evaluation", "gan_trainer", "likelihood_pictures", "load", "load_run", "ood_split",
    "options", "other_dataset", "parse_pairs", "parse_value", "prepare_run", "reference_split",
    "reverse_kl_evaluation", "sample_run", "ship_run", "some_split", "target_dataset", "train", "train_run",
    "trainer_class", "register_trainer",
]
