"""The contract every zoo model keeps; parametrized over the registry, so a new model is tested at once."""

import inspect

import pyro
import pytest
import torch
from safetensors.torch import load_file, save_file

import pprogen
from pprogen.inference import make_elbo, make_guide
from pprogen.models.autoencoder import Autoencoder
from pprogen.models.flows import EnergyTarget
from pprogen.registry import get_card

SMALL = {"x_dim": 6, "x_shape": (1, 8, 8), "z_dim": 2, "hidden_dims": (8,), "channels": (4, 8), "num_components": 3,
         "hidden_channels": 8, "hidden_dim": 8}


LIKELIHOOD_MODELS = [n for n in pprogen.list_models() if get_card(n).kind != "gan"]  # GANs: tests/models/test_gan.py


def small_model(name):
    params = inspect.signature(get_card(name).factory).parameters
    return pprogen.create_model(name, **{k: v for k, v in SMALL.items() if k in params})


def quadratic(z):
    return 0.5 * z.pow(2).sum(-1)


def examples(model, n):
    """``n`` examples the model trains on: its own samples, or (autoencoders, which have no prior) random data
    of its shape."""
    if isinstance(model, Autoencoder):
        return (torch.rand(n, *model.x_shape) < 0.5).float()
    return model.sample(n)


def program(model, x):
    """The (model, guide, data, per-datum keyword arguments) a zoo model trains with. Flows without an
    inverse (planar, radial) cannot score data: they train as the guide of an unnormalized target, by
    reverse KL. Conditional models get labels."""
    if not getattr(model, "invertible", True):
        return EnergyTarget(quadratic, dim=model.x_shape[0]), model.as_guide("z"), torch.zeros_like(x), {}
    kw = {"y": torch.arange(x.shape[0]) % model.num_classes} if getattr(model, "conditional", False) else {}
    return model, make_guide("default", model), x, kw


def elbo_for(model_name):
    return make_elbo(get_card(model_name).train_defaults.get("elbo", "trace"))


def loss_of(name, model, guide, x, seed=1, **kw):
    pyro.set_rng_seed(seed)
    return elbo_for(name)(model, guide)(x, **kw)


@pytest.mark.parametrize("name", [n for n in LIKELIHOOD_MODELS if get_card(n).kind != "autoencoder"])
def test_sample_shape_matches_the_data_shape(name):
    model = small_model(name)
    x = model.sample(5)
    assert x.shape == (5, *model.x_shape)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", LIKELIHOOD_MODELS)
def test_loss_is_finite_and_gradients_reach_every_parameter(name):
    zoo_model = small_model(name)
    model, guide, x, kw = program(zoo_model, examples(zoo_model, 7))
    loss_module = elbo_for(name)(model, guide)
    loss = loss_module(x, **kw)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for pname, param in loss_module.named_parameters():
        assert param.grad is not None, f"no gradient reaches {pname}"
        assert torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, f"zero gradient at {pname}"


@pytest.mark.parametrize("name", LIKELIHOOD_MODELS)
def test_save_load_round_trip_reproduces_the_loss(name, tmp_path):
    zoo_model = small_model(name)
    model, guide, x, kw = program(zoo_model, examples(zoo_model, 4))
    before = loss_of(name, model, guide, x, **kw)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "m.safetensors")
    save_file({k: v.contiguous() for k, v in guide.state_dict().items()}, tmp_path / "g.safetensors")
    pyro.set_rng_seed(123)  # a different initialisation, overwritten by the load
    model2, guide2, _, _ = program(small_model(name), x)
    model2.load_state_dict(load_file(tmp_path / "m.safetensors"))
    guide2.load_state_dict(load_file(tmp_path / "g.safetensors"))
    assert torch.equal(loss_of(name, model2, guide2, x, **kw), before)


@pytest.mark.parametrize("name", pprogen.list_models())
def test_declared_capabilities_hold(name):
    """Every registered model's capabilities (pprogen.capabilities) agree with its card and its methods."""
    from pprogen.capabilities import SCORING, capabilities

    card = get_card(name)
    model = pprogen.create_model(name) if card.kind == "gan" else small_model(name)
    caps = capabilities(model)
    assert caps.scoring in SCORING
    assert caps.adversarial == (card.kind == "gan")
    assert caps.bits_per_dim <= (card.kind == "flow")
    assert caps.fitted_network == caps.accepts_missing == (card.kind == "bayesnet")
    assert caps.conditional <= isinstance(getattr(model, "num_classes", None), int)
    assert caps.predictive <= (card.kind == "mixture")
    if caps.scoring == "exact" and caps.invertible:
        x = model.sample(5)
        with torch.no_grad():
            log_prob = model.log_prob(x)
        assert log_prob.shape == (5,) and torch.isfinite(log_prob).all()
    if not caps.invertible:
        assert card.kind in ("flow", "gan")
    if caps.scoring == "exact":
        assert caps.log_prob_method == "exact" or "bound" in caps.log_prob_method
    assert caps.reconstruction == (card.kind == "autoencoder")
    if caps.stated_likelihood:  # trained adversarially, scored by importance sampling with its own guide
        assert caps.adversarial and caps.scoring == "importance sampling" and callable(model.default_guide)
    if caps.reconstruction:  # no prior: codes come from data only, and there is no log p(x) to compute
        with pytest.raises(ValueError, match="no prior"):
            model.prior_latents(3)
        assert not hasattr(model, "sample") and not hasattr(model, "log_prob")
        assert tuple(model.from_latent(torch.zeros(3, *model.latent_shape)).shape) == (3, *model.x_shape)
    elif caps.latent:  # VAEs, flows (z = the base variable) and noise-to-data GANs
        z = model.prior_latents(3)
        assert tuple(z.shape) == (3, *model.latent_shape)
        x = model.from_latent(z, **({"mean": True} if caps.latent_mean else {}))
        assert x.shape[0] == 3 and torch.isfinite(x).all()
        assert caps.latent_mean == (card.kind == "latent" or caps.stated_likelihood)  # VAE-GAN states p(x | z)
    else:
        assert card.kind not in ("latent", "flow") or name == "ppca"


def test_capabilities_are_read_in_one_place():
    """Only pprogen.capabilities reads the capability attributes of a model; everything else asks it."""
    import re
    from pathlib import Path

    names = ("has_exact_log_prob", "log_prob_method", "predictive_log_prob", "reports_bits_per_dim",
             "conditional", "invertible", "accepts_missing", "fitted_network", "from_latent", "has_latent_mean",
             "discriminator", "mix", "states_likelihood", "fit_em", "posterior", "reconstruction_error",
             "latent_site", "translator", "init_from_data")
    reads = re.compile(r"(getattr|hasattr)\(\s*(self\.)?model\s*,\s*[\"'](" + "|".join(names) + r")[\"']")
    flags = ("has_exact_log_prob", "log_prob_method", "reports_bits_per_dim", "conditional", "invertible",
             "accepts_missing", "has_latent_mean", "states_likelihood", "latent_site")  # read as values, not called
    direct = re.compile(r"\bmodel\.(" + "|".join(flags) + r")\b")
    root = Path(pprogen.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "capabilities.py" and reads.search(p.read_text())]
    offenders += [str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "capabilities.py"
                  and "models" not in p.relative_to(root).parts and direct.search(p.read_text())]
    assert offenders == []
    import pprogen.capabilities as declared

    documented = declared.__doc__
    assert all(f"``{name}" in documented for name in names)  # the module declares every one it reads
