"""What pprogen's trainers, evaluators and command line may ask of a model, declared in one place.

A model declares a capability with an attribute (or property) of the name in the table; :func:`capabilities`
reads them all, with their defaults, and nothing else in pprogen reads these attributes (``tests/test_layers.py``
holds that rule for every name in the table). A user's Pyro program
that declares none is a latent-variable model: trained by SVI with its guide, scored by importance sampling.

=========================  ==========  ======================================================================
attribute                  default     meaning
=========================  ==========  ======================================================================
``log_prob(x)``            absent      a method giving log p(x) per row; scored with it when exact (below)
``has_exact_log_prob``     True        False when ``log_prob`` exists but is not log p(x) of the data
                                       (Dirichlet tables shared by every row): then importance sampling
``log_prob_method``        "exact"     how ``log_prob`` is computed, as reported ("dequantization bound ...")
``predictive_log_prob``    absent      ``(x, guide, K)``: log p(x_n | training data) under the guide's
                                       posterior, for models whose latents are all global
``reports_bits_per_dim``   False       report bits/dim next to nats (dequantized image flows)
``conditional``            False       the model and guide take the data's labels as ``y``
``invertible``             True        False for flows that cannot score data (planar, radial) and GANs
``accepts_missing``        False       NaN entries are summed out (Bayesian networks)
``fitted_network(guide)``  absent      a Bayesian network that writes its learned tables
``discriminator``          absent      a GAN: trained adversarially, scored by sample metrics
``mix(z_a, z_b, k)``       absent      a style-based generator: coarse styles from z_a, fine from z_b (with
                                       ``sample_at(z, psi)`` for truncation); its pictures show both
``states_likelihood``      False       a model trained adversarially that still states p(x | z) and has a guide
                                       (VAE-GAN): scored by importance sampling too
``from_latent(z, mean)``   absent      examples made from given latents, with ``latent_shape`` and
                                       ``prior_latents(n)`` (:mod:`pprogen.latent`: interpolation, traversal)
``has_latent_mean``        True        False when x is a function of z (flows, GANs): no likelihood mean
``latent_site``            absent      the guide's site of that latent (encodings of data, KL ordering)
``fit_em(x, num_iters)``   absent      closed-form expectation-maximization (``--trainer em``)
``posterior(x, ...)``      absent      NUTS over the global latents, ``(InferenceData, MCMC)`` (``--trainer nuts``)
``reconstruction_error``   absent      ``(x, guide)``: an autoencoder with no likelihood, scored by reconstruction
                                       error per row (``squared_error``, ``loss``), never by log p(x)
``translator``, ``split``  absent      an image-to-image translation model (CycleGAN, pix2pix): its data are
                                       (A, B) pairs stacked in the channels, ``split`` cuts them apart
``init_from_data(x)``      absent      starts its parameters at data (mixtures' components at data points) before
                                       a new run trains
=========================  ==========  ======================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCORING = ("exact", "predictive", "importance sampling", "adversarial metrics", "reconstruction error")


@dataclass(frozen=True)
class Capabilities:
    exact_log_prob: bool = False
    log_prob_method: str = "exact"
    predictive: bool = False
    bits_per_dim: bool = False
    conditional: bool = False
    invertible: bool = True
    accepts_missing: bool = False
    fitted_network: bool = False
    adversarial: bool = False
    latent: bool = False
    latent_mean: bool = False
    em: bool = False
    nuts: bool = False
    reconstruction: bool = False
    stated_likelihood: bool = False
    style_mixing: bool = False
    latent_site: str | None = None
    translates: bool = False
    init_from_data: bool = False

    @property
    def scoring(self) -> str:
        """How log p(x) of data is scored: one of :data:`SCORING`."""
        if self.adversarial and not self.stated_likelihood:
            return "adversarial metrics"
        if self.reconstruction:
            return "reconstruction error"
        if self.exact_log_prob:
            return "exact"
        if self.predictive:
            return "predictive"
        return "importance sampling"


def capabilities(model: Any) -> Capabilities:
    """The :class:`Capabilities` ``model`` declares (see the module docstring); defaults for a plain program."""
    has_log_prob = callable(getattr(model, "log_prob", None))
    return Capabilities(
        exact_log_prob=has_log_prob and bool(getattr(model, "has_exact_log_prob", True)),
        log_prob_method=str(getattr(model, "log_prob_method", "exact")),
        predictive=callable(getattr(model, "predictive_log_prob", None)),
        bits_per_dim=bool(getattr(model, "reports_bits_per_dim", False)),
        conditional=bool(getattr(model, "conditional", False)),
        invertible=bool(getattr(model, "invertible", True)),
        accepts_missing=bool(getattr(model, "accepts_missing", False)),
        fitted_network=callable(getattr(model, "fitted_network", None)),
        adversarial=getattr(model, "discriminator", None) is not None,
        latent=callable(getattr(model, "from_latent", None)),
        latent_mean=callable(getattr(model, "from_latent", None)) and bool(getattr(model, "has_latent_mean", True)),
        em=callable(getattr(model, "fit_em", None)),
        nuts=callable(getattr(model, "posterior", None)),
        reconstruction=callable(getattr(model, "reconstruction_error", None)),
        stated_likelihood=bool(getattr(model, "states_likelihood", False)),
        style_mixing=callable(getattr(model, "mix", None)),
        latent_site=getattr(model, "latent_site", None),
        translates=hasattr(model, "split") and hasattr(model, "translator"),
        init_from_data=callable(getattr(model, "init_from_data", None)),
    )
