"""The trainers, one file each, registered in :data:`pprogen.engine.trainer.TRAINERS` when imported here.

A new trainer is one file here (a :class:`~pprogen.engine.trainer.Trainer` subclass under ``@register_trainer``,
with the options it reads given a default for its name in :mod:`pprogen.engine.options`) and one import line
below. No trainer file imports another.
"""

from pprogen.engine.trainers import adversarial, em, nuts, reverse_kl, svi  # noqa: F401  (registers them)
