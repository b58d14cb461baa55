"""Scoring a run's model: log p(x) of a split (exact, importance sampling, AIS, BDMC, refined), another data set
the model accepts, out-of-distribution tests, and disentanglement on data with known factors.

:func:`score_likelihood` is ``pprogen evaluate`` for every trainer whose models state a likelihood; the others
(:mod:`pprogen.engine.trainers`) score their runs their own way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from pprogen import distributed
from pprogen.capabilities import capabilities
from pprogen.data import DataError, Dataset, intensity_levels, load_dataset
from pprogen.engine import budget
from pprogen.engine.config import condition_of
from pprogen.engine.report import format_annealed, format_disentanglement, format_eval, format_ood
from pprogen.inference import evaluate
from pprogen.runs import Run, atomic_write

if TYPE_CHECKING:
    from pyro.nn import PyroModule

    from pprogen.inference.ood import OODReport

ANNEALING_DEFAULTS = {"steps": 1000, "chains": 16, "leapfrog": 10, "schedule": "sigmoid"}


@dataclass
class EvaluationRequest:
    """What ``pprogen evaluate`` (or :meth:`pprogen.engine.LoadedRun.evaluate`) asks for; :meth:`check` refuses
    settings that do not apply to ``method`` and fills in the defaults of those that do."""

    split: str = "test"
    method: str = "auto"
    num_samples: int | None = None
    refine: int = 0
    steps: int | None = None
    chains: int | None = None
    leapfrog: int | None = None
    schedule: str | None = None
    seed: int = 0
    limit: int | None = None
    data: str | None = None
    ood: str | None = None
    ood_batch: int | None = None
    data_dir: str | None = None
    target: str | None = None

    @property
    def other_data(self) -> bool:
        return self.data is not None or self.ood is not None

    @property
    def annealed(self) -> bool:
        return self.method in ("ais", "bdmc")

    def check(self) -> "EvaluationRequest":
        given = [f"--{k}" for k in ANNEALING_DEFAULTS if getattr(self, k) is not None]
        if not self.annealed:
            if given:
                raise ValueError(f"{', '.join(given)} set the annealed chains of --method ais or bdmc; with --method "
                                 f"{self.method} set --num-samples")
            self.num_samples = 1000 if self.num_samples is None else self.num_samples
            if self.num_samples < 1:
                raise ValueError(f"--num-samples must be at least 1, got {self.num_samples}")
            if self.refine < 0:
                raise ValueError(f"--refine is a number of Adam steps (0: the guide proposes as trained), got "
                                 f"{self.refine}")
            if self.refine and self.other_data:
                raise ValueError("--refine applies to the run's own data; drop --data/--ood or --refine")
        else:
            if self.refine:
                raise ValueError(f"--refine refines importance sampling's proposal (--method auto or is); --method "
                                 f"{self.method} anneals from the guide instead: drop --refine")
            if self.num_samples is not None:
                raise ValueError(f"--num-samples sets importance sampling (--method auto or is); --method "
                                 f"{self.method} uses --steps T (annealing steps) and --chains C (chains per example)")
            for key, default in ANNEALING_DEFAULTS.items():
                if getattr(self, key) is None:
                    setattr(self, key, default)
            for key in ("steps", "chains", "leapfrog"):
                if getattr(self, key) < 1:
                    raise ValueError(f"--{key} must be at least 1, got {getattr(self, key)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        if self.ood_batch is not None and self.ood is None:
            raise ValueError("--ood-batch sets the typicality test of --ood; give --ood NAME|FILE too")
        if self.other_data and self.annealed:
            raise ValueError(f"--data and --ood score log p(x) by --method auto or is, not {self.method}; drop --method")
        return self


def evaluate_split(model: PyroModule, guide: Callable[..., Any] | None, dataset: Dataset, split: str,
                   num_samples: int, device: torch.device, run: Run | None = None, limit: int | None = None,
                   world: distributed.World | None = None, method: str = "auto", **annealing: Any) -> dict[str, Any]:
    """The split's score by :func:`pprogen.inference.evaluate`, as the dict summary.json holds; the k-hat
    picture of an importance-sampled score is saved in the run folder."""
    tag = "refined-" if annealing.get("refine") else ""  # its k-hat picture beside the guide's own
    return summarize(evaluation(model, guide, dataset, split, num_samples, device, run, limit, world, method,
                                **annealing), split, run, world, method, tag)


def check_finite_rows(model, x: torch.Tensor, dataset: Dataset, split: str) -> None:
    """Rows holding NaN or Inf have no score: refused in one line (NaN is let through for models that sum out
    missing values), as training refuses them."""
    if not x.is_floating_point():
        return
    missing_ok = capabilities(model).accepts_missing
    bad = torch.isinf(x) if missing_ok else ~torch.isfinite(x)
    if bad.any():
        rows = bad.reshape(x.shape[0], -1).any(1).nonzero()[:, 0]
        raise DataError(f"the {split!r} split of {dataset.name!r} holds {'Inf' if missing_ok else 'NaN or Inf'} in "
                        f"{len(rows)} example(s) (first at index {int(rows[0])}); such rows have no log-likelihood: "
                        "clean or drop them")


def evaluation(model, guide, dataset: Dataset, split: str, num_samples: int, device, run: Run | None = None,
               limit: int | None = None, world: distributed.World | None = None, method: str = "auto", **annealing):
    """:func:`pprogen.inference.evaluate` on the first ``limit`` rows of ``dataset``'s ``split`` (refused in one
    line when they hold NaN or Inf)."""
    rows = dataset.split(split)[:limit]
    check_finite_rows(model, rows, dataset, split)
    return evaluate(
        model, guide, rows.to(device), method=method, num_samples=num_samples,
        condition=condition_of(model, dataset, split, limit, device), world=world or distributed.World(),
        plate_name=run.config.get("plate_name") if run is not None else None,
        dim=dataset.dim if dataset.binary else None, **annealing,
    )


def summarize(result_of, split: str, run: Run | None, world, method: str, tag: str = "") -> dict[str, Any]:
    """An evaluation as summary.json holds it; its k-hat picture and (AIS, BDMC) its ArviZ file in the run."""
    world = world or distributed.World()
    result = dict(result_of.summary)
    khat = getattr(result_of.result, "khat", None)
    if run is not None and khat is not None and world.is_main:
        from pprogen.plots import save_khat

        result["khat_plot"] = f"khat-{tag}{split}.png"
        save_khat(khat, run.path / result["khat_plot"])
    if method in ("ais", "bdmc") and run is not None:
        result["inference_data"] = f"{method}-{split}.nc"
        atomic_write(run.path / result["inference_data"], result_of.to_inference_data().to_netcdf)
    return result


def other_dataset(config: dict[str, Any], dataset: Dataset, name: str, data_dir: str | None = None) -> Dataset:
    """Another data set (a name or a file) prepared like the run's data (flattened when the run's was) and
    checked to be data the run's model scores: the same shape per example, binary when the model's data was,
    pixels on the model's grid of levels when it dequantizes. Refused in one line otherwise."""
    other = load_dataset(name, data_dir)
    if config.get("flatten"):
        other = other.flat()
    if tuple(other.shape) != tuple(dataset.shape):
        raise DataError(f"data set {other.name!r} has examples of shape {tuple(other.shape)}, but {config['model']} "
                        f"was trained on {config['data']!r} with examples of shape {tuple(dataset.shape)}; give data of "
                        "that shape")
    if dataset.binary and not other.binary:
        raise DataError(f"{config['model']} was trained on binary data ({config['data']!r}) and scores 0/1 values, "
                        f"but {other.name!r} is not binary; binarize it first (for example threshold it at 0.5)")
    levels = config["model_args"].get("num_levels")
    if levels:
        found = intensity_levels(torch.cat([t for t in (other.train, other.valid, other.test) if t is not None]))
        if found is None or (levels - 1) % (found - 1):
            raise DataError(f"{config['model']} dequantizes pixels on {levels} levels, but the pixels of "
                            f"{other.name!r} are {'not on such a grid' if found is None else f'on {found} levels'}; "
                            f"quantize them to {levels} levels first")
    return other


def some_split(dataset: Dataset, split: str) -> str:
    """``split`` when ``dataset`` has it, else its first of test, valid, train."""
    if getattr(dataset, split) is not None:
        return split
    return next(s for s in ("test", "valid", "train") if getattr(dataset, s) is not None)


def reference_split(dataset: Dataset, split: str) -> str:
    """The held-out split that estimates the model's entropy for a typicality test of ``split``: the other of
    valid and test when the data has it, else train."""
    for candidate in {"test": ("valid", "train"), "valid": ("test", "train"), "train": ("valid", "test")}[split]:
        if getattr(dataset, candidate) is not None:
            return candidate
    raise DataError(f"data set {dataset.name!r} has only its {split!r} split; the typicality test needs a second, "
                    "held-out split of in-distribution data to estimate the entropy")


def ood_split(model: PyroModule, guide: Callable[..., Any] | None, dataset: Dataset, other: Dataset, split: str,
              num_samples: int, device: torch.device, run: Run | None = None, limit: int | None = None,
              world: distributed.World | None = None, batch: int = 1) -> tuple[dict[str, Any], OODReport]:
    """Out-of-distribution scores of ``other`` against ``dataset``'s ``split`` (in-distribution test data): the
    per-input log-likelihoods of both and of a held-out in-distribution split (the entropy estimate), by
    :func:`pprogen.inference.evaluate`. Returns ``(summary dict, OODReport)``."""
    from pprogen.inference.ood import ood_report

    caps = capabilities(model)
    if caps.stated_likelihood:
        raise ValueError("a VAE-GAN is trained adversarially, not on its stated likelihood: outlier scores are offered "
                         "for models trained on their likelihood")
    if caps.adversarial or caps.reconstruction:
        kind = "a GAN" if caps.adversarial else "an autoencoder"
        raise ValueError(f"{kind} has no likelihood: it cannot score inputs as in or out of distribution")
    reference, other_split = reference_split(dataset, split), some_split(other, split)
    parts = [(dataset, split), (other, other_split), (dataset, reference)]
    evaluations = [evaluation(model, guide, d, s, num_samples, device, run, limit, world) for d, s in parts]
    report = ood_report(*(e.log_prob for e in evaluations), batch=batch)
    result = {**report.summary(), "method": evaluations[0].description,
              "in": f"{dataset.name}/{split}", "out": f"{other.name}/{other_split}",
              "reference": f"{dataset.name}/{reference}"}
    if evaluations[0].method == "is":
        result["num_samples"] = num_samples
    return result, report


def disentanglement(model: PyroModule, guide: Callable[..., Any] | None, dataset: Dataset,
                    device: torch.device) -> dict[str, Any] | None:
    """MIG and the FactorVAE score (:mod:`pprogen.inference.disentanglement`) of the guide's posterior means of
    every image of a data set with known factors (``sprites``); None for other data and for models without a
    latent space and a guide."""
    site = capabilities(model).latent_site
    if not dataset.factors or guide is None or site is None:
        return None
    from pprogen.inference.disentanglement import factor_vae_score, mig
    from pprogen.latent import posterior_moments

    splits = [s for s in ("train", "valid", "test") if getattr(dataset, s) is not None and s in dataset.factors]
    codes = []
    with torch.no_grad():
        for split in splits:
            x = dataset.split(split).to(device)
            condition = condition_of(model, dataset, split, None, device)
            codes.append(torch.cat([posterior_moments(model, guide, x[i:i + 1000],
                                                      {k: v[i:i + 1000] for k, v in condition.items()})[0]
                                    for i in range(0, x.shape[0], 1000)]).cpu())
    codes = torch.cat(codes).reshape(sum(c.shape[0] for c in codes), -1)
    factors = torch.cat([dataset.factors[s] for s in splits])
    gap, per_factor = mig(codes, factors)
    return {"mig": gap, "mig_per_factor": dict(zip(dataset.factor_names, per_factor.tolist())),
            "factor_vae_score": factor_vae_score(codes, factors), "num_data": codes.shape[0],
            "codes": f"the guide's posterior means at {site!r}"}


def disentanglement_or_why(model, guide, dataset: Dataset, device) -> dict[str, Any] | None:
    """:func:`disentanglement`, or ``{"not_computed": why}`` when the scores cannot be computed (every code
    dimension collapsed, say): a metric that cannot be computed never takes the run's other results with it."""
    try:
        return disentanglement(model, guide, dataset, device)
    except ValueError as err:
        return {"not_computed": str(err)}


def score_likelihood(loaded, request: EvaluationRequest) -> tuple[dict[str, Any], str, str]:
    """``pprogen evaluate`` by log p(x): another data set (``data``), outlier scores (``ood``), AIS / BDMC, or
    importance sampling (refined with ``refine``) with the disentanglement scores where the data has factors.
    Returns ``(result, text, summary key)``; a key ``a/b`` is ``summary[a][b]`` (results kept by data set)."""
    run, config, model, guide, device, world = (loaded.run, loaded.config, loaded.model, loaded.guide,
                                                loaded.device, loaded.world)
    dataset = loaded.dataset
    if request.data is not None:
        dataset = other_dataset(config, dataset, request.data, request.data_dir)
    key = f"{request.split}_evaluation" if not request.refine else f"{request.split}_evaluation_refined"
    torch.manual_seed(request.seed)
    if request.ood is not None:
        return _score_ood(loaded, dataset, request)
    if request.annealed:
        rows = min(request.limit or math.inf, dataset.split(request.split).shape[0])
        budget.check_rows(f"--chains {request.chains} on {rows} rows", request.chains * rows, dataset.shape,
                          "lower --chains or --limit")
        annealing = {"num_steps": request.steps, "num_chains": request.chains, "leapfrog_steps": request.leapfrog,
                     "schedule": request.schedule}
        result = evaluate_split(model, guide, dataset, request.split, 0, device, run, request.limit, world,
                                request.method, **annealing)
        result["seed"] = request.seed
        return result, format_annealed(request.split, request, result), f"{request.split}_{request.method}"
    refine = {"refine": request.refine} if request.refine else {}
    result = evaluate_split(model, guide, dataset, request.split, request.num_samples, device, run, request.limit,
                            world, request.method, **refine)
    text = format_eval(request.split, result)
    if request.data is not None:
        text = f"{dataset.name}: {text}"
        if dataset.name != config["data"]:
            key = f"evaluations/{dataset.name}/{request.split}"
    scores = disentanglement_or_why(model, guide, dataset, device) if world.is_main else None
    if scores is not None:
        result["disentanglement"] = scores
        text += "\n" + format_disentanglement(scores)
    return result, text, key


def _score_ood(loaded, dataset: Dataset, request: EvaluationRequest) -> tuple[dict[str, Any], str, str]:
    other = other_dataset(loaded.config, dataset, request.ood, request.data_dir)
    batch = 1 if request.ood_batch is None else request.ood_batch
    result, report = ood_split(loaded.model, loaded.guide, dataset, other, request.split, request.num_samples,
                               loaded.device, loaded.run, request.limit, loaded.world, batch)
    if not loaded.world.is_main:
        return result, "", None
    from pprogen.plots import save_ood

    result["picture"] = f"ood-{other.name}.png"
    save_ood(report, [f"in: {result['in']}", f"out: {result['out']}", f"reference: {result['reference']}"],
             loaded.run.path / result["picture"],
             title=f"{loaded.config['model']} ({loaded.config['data']}): -log p(x) per input")
    text = format_ood(result) + f"\npicture: {loaded.run.path / result['picture']}"
    return result, text, f"ood/{result['in']} vs {result['out']}"
