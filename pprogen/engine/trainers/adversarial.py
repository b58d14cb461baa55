"""GANs by :class:`~pprogen.inference.AdversarialTrainer`: a grid of samples each epoch (and the modes found, on
the 2-D mixtures), sample metrics at the end (a VAE-GAN adds its stated likelihood). Its runs score by sample
metrics, not log p(x), and ship only as whole folders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from pprogen.capabilities import capabilities
from pprogen.data import Dataset
from pprogen.engine.config import condition_of, load_data
from pprogen.engine import options as opts
from pprogen.engine.options import ADVERSARIAL
from pprogen.engine.pictures import gan_pictures, style_pictures
from pprogen.engine.report import format_gan_eval
from pprogen.engine.scoring import evaluate_split
from pprogen.engine.trainer import Trainer, register_trainer, to_device
from pprogen.inference.metrics import evaluate_samples
from pprogen.registry import ModelCard, create_model
from pprogen.runs import Run, seed_everything

if TYPE_CHECKING:
    from pyro.nn import PyroModule

    from pprogen.distributed import World
    from pprogen.inference.adversarial import AdversarialTrainer


def gan_evaluation(model: PyroModule, dataset: Dataset, split: str, num_samples: int, device: torch.device,
                   run: Run | None = None, limit: int | None = None, num_particles: int = 1000) -> dict[str, Any]:
    """A GAN's sample metrics on ``split`` from ``num_samples`` samples; a model that also states a likelihood
    (VAE-GAN) adds its importance-sampled NLL with its own guide (``num_particles`` per row)."""
    result = evaluate_samples(model, dataset.subset(limit), split, num_samples, device)
    if capabilities(model).stated_likelihood:
        was = model.training
        model.eval()
        try:
            scored = evaluate_split(model, model.default_guide(), dataset, split, num_particles, device, run, limit)
        finally:
            model.train(was)
        result["likelihood"] = scored
    return result


def gan_trainer(model: PyroModule, train: dict[str, Any], device: torch.device, seed: int, progress: bool,
                world: World | None = None) -> AdversarialTrainer:
    """The :class:`~pprogen.inference.AdversarialTrainer` a run's ``config["train"]`` describes."""
    from pprogen.inference.adversarial import AdversarialTrainer

    s = opts.settings(ADVERSARIAL, train)
    return AdversarialTrainer(
        model, loss=s.loss, critic_steps=s.critic_steps, lr_g=s.lr, lr_d=s.lr_d, betas=tuple(s.betas),
        gp_weight=s.gp_weight, r1_weight=s.r1_weight, spectral_norm=s.spectral_norm, ema=s.ema, schedule=s.schedule,
        batch_size=s.batch_size, device=device, seed=seed, progress=progress, world=world, autocast=s.autocast,
        compile=s.compile,
    )


@register_trainer
class AdversarialTrainerSession(Trainer):
    name = ADVERSARIAL

    @classmethod
    def default_for_kind(cls, kind: str | None) -> bool:
        return kind == "gan"

    @classmethod
    def refusal(cls, card: ModelCard) -> str | None:
        if card.kind != "gan":
            return f"--trainer adversarial does not train {card.name} (a {card.kind} model); only GANs train adversarially"
        return None

    @classmethod
    def stray_message(cls, stray: list[str], card: ModelCard, resuming: bool = False) -> str:
        return (f"{', '.join(stray)} {'does' if len(stray) == 1 else 'do'} not apply to {card.name} (a {card.kind} "
                f"model, trained by the adversarial trainer); drop {'it' if len(stray) == 1 else 'them'}")

    @classmethod
    def load(cls, run: Run, config: dict[str, Any], dataset: Dataset, device):
        from pprogen.nn import apply_spectral_norm

        dataset = dataset.flat() if config.get("flatten") else dataset
        model = create_model(config["model"], **config["model_args"])
        if config["train"].get("spectral_norm"):
            apply_spectral_norm(model.discriminator)
        run.load_weights("model", model)
        model = to_device(model, device)
        guide = model.default_guide() if capabilities(model).stated_likelihood else None  # VAE-GAN: its encoder
        return dataset, model, guide

    @classmethod
    def ship_refusal(cls, path: str, config: dict[str, Any], model: Any) -> str | None:
        if capabilities(model).stated_likelihood:
            return (f"{path} is a run of {config['model']}, which is trained adversarially, not on its stated "
                    "likelihood; only models trained on their likelihood ship this way (copy the run folder)")
        return (f"{path} is a run of {config['model']}, which has no likelihood; only models with a likelihood "
                "ship this way (copy the run folder instead)")

    @classmethod
    def score(cls, loaded: Any, request: Any) -> tuple[dict[str, Any], str, str]:
        """Sample metrics (and a VAE-GAN's stated likelihood); other data, outliers and annealing are refused."""
        name, caps = loaded.run.path.name, capabilities(loaded.model)
        if request.other_data:
            if not caps.stated_likelihood:
                raise ValueError(f"{name} is a GAN: it has no likelihood to score other data or outliers with")
            raise ValueError(f"{name} is a {loaded.config['model']} run, trained adversarially: scoring other data or "
                             "outliers is offered for models trained on their likelihood only")
        if request.refine:
            raise ValueError(f"{name} is a GAN run: --refine refines the guide of importance sampling; drop it")
        if request.method != "auto":
            what = ("its stated likelihood is scored by importance sampling with its encoder (--num-samples sets K)"
                    if caps.stated_likelihood else "a GAN has no likelihood to estimate")
            raise ValueError(f"{what}; evaluate {name} without --method")
        if not loaded.world.is_main:  # the sample-based GAN metrics run on rank 0 alone
            return {}, "", None
        torch.manual_seed(request.seed)
        result = gan_evaluation(loaded.model, loaded.dataset, request.split, request.num_samples, loaded.device,
                                loaded.run, request.limit, num_particles=request.num_samples)
        return result, format_gan_eval(result), f"{request.split}_evaluation"

    def __init__(self, config: dict[str, Any], dataset: Dataset | None, device, world, progress: bool,
                 resumed: bool) -> None:
        from pprogen.data import MODES

        train = config["train"]
        seed_everything(config["seed"])
        self.dataset = load_data(config) if dataset is None else (dataset.flat() if config.get("flatten") else dataset)
        self.model = create_model(config["model"], **config["model_args"])
        self.trainer = gan_trainer(self.model, train, device, config["seed"], progress, world)  # checks the settings
        self.condition = condition_of(self.model, self.dataset, "train")  # the data: checked by the trainer's fit
        self.config, self.device, self.world = config, device, world
        self.guide = None
        self.modes = MODES.get(self.dataset.name) if not self.dataset.is_image else None
        self.banner = f", {train['loss']} loss"

    def train(self, run: Run | None, resume):
        from pprogen.inference.metrics import mode_metrics

        def each_epoch(epoch: int, record: dict) -> None:
            run.materialize()  # the folder and config.json before the first picture
            if self.modes is not None:
                with torch.no_grad():
                    found = mode_metrics(self.model.sample(2500), *self.modes)
                record.update(modes=found["modes"], high_quality=found["high_quality"])
            gan_pictures(run, self.model, self.dataset, self.device, run.path / "grids" / f"epoch-{epoch:03d}.png")

        return self.trainer.fit(self.dataset, epochs=self.settings.epochs, condition=self.condition,
                                run=run, resume=resume, callback=each_epoch if run is not None else None)

    def evaluate(self, split: str, run: Run | None) -> dict[str, Any]:
        if not self.world.is_main:  # the sample-based metrics run on rank 0 alone
            return {}
        return gan_evaluation(self.model, self.dataset, split, self.config.get("eval_samples", 2500), self.device, run)

    def pictures(self, run: Run, split: str) -> list[str]:
        from pprogen import plots

        gan_pictures(run, self.model, self.dataset, self.device, run.path / "samples.png", split)
        plots.save_curves(run.read_metrics(), run.path / "curves.png", ylabel="loss per step",
                          keys=("d_loss", "g_adv", "cycle", "l1", "high_quality", "feature_nll", "kl"))
        made = ["samples.png", "curves.png", "grids"]
        if capabilities(self.model).style_mixing:
            made += style_pictures(self.model, run.path, run.config["model"])
        return made

    def format(self, split: str, result: dict[str, Any]) -> str:
        return format_gan_eval(result)
