"""NUTS over a model's global latents (its ``posterior``): the draws are kept (``posterior.safetensors``, as the
guide :class:`~pprogen.inference.guides.PosteriorDraws` replays them), with ArviZ's summary
(``posterior_summary.csv``), the chains (``posterior.nc``) and their trace picture (``trace.png``). A NUTS run
neither resumes nor ships: start a new one with more ``--draws``, copy the folder."""

from __future__ import annotations

import math
import time
from typing import Any

from pprogen.data import Dataset
from pprogen.engine.config import build
from pprogen.engine.options import NUTS
from pprogen.engine.report import format_eval
from pprogen.engine.trainer import Trainer, register_trainer, single_process_setup, to_device
from pprogen.inference.loop import History
from pprogen.runs import Run, RunError, atomic_write


def _finite(value) -> float | None:  # r_hat needs two chains: NaN (JSON null) with one
    return float(value) if math.isfinite(float(value)) else None


@register_trainer
class NUTSTrainer(Trainer):
    name = NUTS
    opt_in = True
    resumable = False
    ships_weights = False
    banner = ", NUTS"

    @classmethod
    def resume_refusal(cls, run: Run) -> str:
        return f"{run.path.name} holds NUTS draws, which do not resume; start a new run with more --draws"

    @classmethod
    def ship_refusal(cls, path: str, config: dict[str, Any], model: Any) -> str | None:
        return f"{path} holds NUTS draws (posterior.safetensors), not weights; copy the run folder instead"

    @classmethod
    def load(cls, run: Run, config: dict[str, Any], dataset: Dataset, device):
        from safetensors.torch import load_file

        from pprogen.inference.guides import PosteriorDraws

        dataset, model, _ = build(config, dataset)
        path = run.path / "posterior.safetensors"
        if not path.is_file():
            raise RunError(f"{path} is missing: the NUTS run did not finish; start it again")
        guide = PosteriorDraws(load_file(path))  # the guide replays the run's NUTS draws
        run.load_weights("model", model)
        return dataset, to_device(model, device), to_device(guide, device)

    def __init__(self, config: dict[str, Any], dataset: Dataset | None, device, world, progress: bool,
                 resumed: bool) -> None:
        self.dataset, self.model, _ = single_process_setup(
            self, config, dataset, device, world, "nuts", f"{config['model']} has no NUTS posterior over global "
            "latents; --trainer nuts samples bayesian_gmm (train this model with --trainer svi)")
        self.model.to(device)
        self.guide = None
        self.summary: dict[str, Any] = {}

    def train(self, run: Run | None, resume):
        import arviz as az
        from safetensors.torch import save_file

        from pprogen.inference.guides import PosteriorDraws

        s = self.settings
        started = time.perf_counter()
        idata, mcmc = self.model.posterior(self.dataset.train.to(self.device), num_samples=s.num_samples,
                                           warmup_steps=s.warmup_steps, num_chains=s.num_chains,
                                           seed=self.config["seed"])
        draws = {k: v.detach().cpu().contiguous() for k, v in mcmc.get_samples().items()}
        self.guide = PosteriorDraws(draws).to(self.device)
        table = az.summary(idata, var_names=sorted(draws))
        divergences = int(idata.sample_stats["diverging"].values.sum()) if "diverging" in idata.sample_stats else 0
        self.summary = {"draws": next(iter(draws.values())).shape[0], "chains": s.num_chains,
                        "divergences": divergences, "r_hat_max": _finite(table["r_hat"].max()),
                        "ess_bulk_min": _finite(table["ess_bulk"].min())}
        history = History(records=[{"epoch": 1, "train_loss": None, "valid_loss": None,
                                    "seconds": time.perf_counter() - started}])
        if run is not None:
            run.materialize()
            atomic_write(run.path / "posterior.safetensors", lambda tmp: save_file(draws, tmp))
            run.save_weights("model", self.model)  # its constants (the priors' settings)
            atomic_write(run.path / "posterior_summary.csv", lambda tmp: table.to_csv(tmp))
            atomic_write(run.path / "posterior.nc", idata.to_netcdf)
            run.write_metrics(history.records)
        return history

    def history_summary(self, history: History) -> dict[str, Any]:
        return dict(self.summary)

    def trained_what(self, summary: dict[str, Any]) -> str:
        return f"{summary.get('draws')} NUTS draws"

    def pictures(self, run: Run, split: str) -> list[str]:
        from pprogen import plots

        plots.save_trace(run.path / "posterior.nc", run.path / "trace.png",
                         title=f"{self.config['model']}: NUTS chains ({self.summary['draws']} draws)")
        samples = self.model.sample(2500 if tuple(self.dataset.shape) == (2,) else 64, guide=self.guide)
        plots.save_samples(samples, self.dataset.image_shape or self.dataset.shape, run.path / "samples.png",
                           title=f"{self.config['model']}: posterior predictive draws (one NUTS draw of the globals)")
        return ["trace.png", "samples.png"]

    def format(self, split: str, result: dict[str, Any]) -> str:
        s = self.summary
        r_hat = "n/a with one chain" if s["r_hat_max"] is None else f"{s['r_hat_max']:.3f}"
        ess = "n/a" if s["ess_bulk_min"] is None else f"{s['ess_bulk_min']:.0f}"
        return (f"NUTS: {s['draws']} draws, {s['divergences']} divergent transitions, max r_hat {r_hat}, "
                f"min bulk ESS {ess} (ArviZ summary in posterior_summary.csv)\n" + format_eval(split, result))
