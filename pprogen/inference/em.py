r"""``fit_em``: closed-form expectation-maximization on the shared epoch loop, one EM iteration an epoch.

For a model whose latent variables can be summed out exactly (a finite mixture), each iteration computes the
posterior responsibilities under the current parameters and maximizes the expected complete-data log-likelihood
in closed form:

.. math::

    r_{nk} = p(c_n = k \mid x_n, \theta^{(t)}), \qquad
    \theta^{(t+1)} = \arg\max_\theta \sum_n \sum_k r_{nk} \log p(x_n, c_n = k \mid \theta),

which never lowers the log-likelihood :math:`\sum_n \log p(x_n \mid \theta)`. The model does the arithmetic
(``model.fit_em(x, 1)``: one iteration in place; ``model.log_prob(x)``: the exact log-likelihood per row); this
module runs it on :class:`~pprogen.inference.loop.EpochLoop`, which gives it what every trainer has: resume from a
checkpoint, progress, the checkpoint, metrics and weights, and the non-finite guard. Every epoch sees all rows, so
the loop draws no permutations, and subnormal floats are not flushed: the iterates are ``model.fit_em``'s, bit for
bit.

Reference: Dempster, Laird & Rubin, Maximum Likelihood from Incomplete Data via the EM Algorithm, JRSS B 1977.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from pprogen.capabilities import capabilities
from pprogen.distributed import World, resolve_device
from pprogen.inference.loop import EarlyStopping, EpochLoop, History
from pprogen.runs import RunError


def fit_em(model: nn.Module, data: torch.Tensor, valid_data: torch.Tensor | None = None, *, epochs: int,
           run: Any = None, resume: bool | dict[str, Any] = False, device: str | torch.device | None = None,
           progress: bool = False, tol: float = 1e-7, checkpoint_every: int = 10, guide: Any = None) -> History:
    """Fit ``model`` to ``data`` ``(N, ...)`` by closed-form EM: ``epochs`` iterations of ``model.fit_em(x, 1)``
    (the model's own EM step) from its current parameters, stopping early once an iteration lowers the training
    negative log-likelihood per datum by less than ``tol`` times its size (``history.stop_reason`` is then
    ``"converged"``, else ``"finished"``).

    Each epoch's record holds ``epoch``, ``train_loss`` and ``valid_loss`` (``-model.log_prob(x).mean()`` over the
    training and validation rows, in float64; None without ``valid_data``) and ``seconds``; the best validation
    epoch is kept in the history. A non-finite log-likelihood stops training with
    :class:`~pprogen.inference.loop.NonFiniteLossError` after the state was written. With a ``run``
    (:class:`pprogen.runs.Run`), every ``checkpoint_every`` epochs, at convergence and at the last epoch it writes
    the checkpoint (``epoch``, ``em_model``: the model's state dict, ``history``, ``rng``), the metrics and the
    weights (``model.safetensors``; ``guide.safetensors`` too when a ``guide`` with state is given); ``resume``
    (``True``, or the checkpoint already read) continues from it, and a checkpoint of another trainer is refused.
    ``device``: where to train (None: where the model is). ``progress`` shows one line per epoch.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs (EM iterations) must be a positive integer, got {epochs!r}")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    if not capabilities(model).em or not callable(getattr(model, "log_prob", None)):
        raise TypeError(f"{type(model).__name__} has no closed-form EM: fit_em needs model.fit_em(x, num_iters) and "
                        "model.log_prob(x); train it with fit (SVI) instead")
    device = _device_of(model) if device is None else resolve_device(device)
    model.to(device)
    x = data.to(device)
    valid = valid_data.to(device) if valid_data is not None else None
    loop = EpochLoop(epochs, None, World(), run, shuffle=False)
    if resume:
        _resume(model, loop, loop.checkpoint(resume), run)
    history, best = loop.history, EarlyStopping()
    previous = history.records[-1]["train_loss"] if history.records else None
    history.stop_reason = "finished"

    def save(epoch: int) -> None:
        loop.save(lambda: {**loop.state(epoch), "em_model": model.state_dict()}, model, guide)

    with loop.running(1, progress, flush_subnormals=False):
        for epoch, _ in loop.epochs():
            record = _iteration(model, x, valid, epoch)
            loop.step_done(0, epoch + 1)
            loop.add_record(record, train="train_loss", valid="valid_loss")
            best.observe(history, epoch + 1, record["valid_loss"])
            train_nll = record["train_loss"]
            if not math.isfinite(train_nll):
                loop.non_finite(f"EM iteration {epoch + 1} gave a non-finite log-likelihood; check the data",
                                lambda: save(epoch + 1))
            converged = previous is not None and previous - train_nll < tol * abs(train_nll)
            previous = train_nll
            if converged:
                history.stop_reason = "converged"
            if (epoch + 1) % checkpoint_every == 0 or converged or epoch + 1 == epochs:
                save(epoch + 1)
            if converged:
                break
    return history


def _iteration(model: nn.Module, x: torch.Tensor, valid: torch.Tensor | None, epoch: int) -> dict[str, Any]:
    """One EM iteration in place, and its record: the negative log-likelihoods per datum after it."""
    started = time.perf_counter()
    with torch.no_grad():
        model.fit_em(x, 1)
        train_nll = -model.log_prob(x).double().mean().item()
        valid_nll = -model.log_prob(valid).double().mean().item() if valid is not None else None
    return {"epoch": epoch + 1, "train_loss": train_nll, "valid_loss": valid_nll,
            "seconds": time.perf_counter() - started}


def _resume(model: nn.Module, loop: EpochLoop, state: dict[str, Any], run: Any) -> None:
    """An EM checkpoint's model, history, random state and epoch back in place; another trainer's is refused."""
    if "em_model" not in state:
        where = run.path if run is not None else "the checkpoint"
        raise RunError(f"{where} was not trained by EM; resume it without --trainer")
    model.load_state_dict(state["em_model"])
    loop.resume(state)


def _device_of(model: nn.Module) -> torch.device:
    """Where the model's tensors are (the CPU for a model without any)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
