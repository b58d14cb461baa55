r"""VAE-GAN (Larsen et al. 2016): a VAE whose reconstruction is measured in a discriminator's features.

The generative story is a VAE's, with a stated pixel likelihood, so ``log_marginal`` still gives an importance-
sampled log p(x) (with the encoder as proposal):

.. math::

    z \sim \mathcal{N}(0, I), \qquad x \mid z \sim \mathrm{Bernoulli}(\mathrm{logits} = \mathrm{Dec}(z))
    \ \text{or}\ \mathcal{N}(\sigma(\mathrm{Dec}(z)), \mathrm{diag}\, s^2),

and :math:`q(z \mid x) = \mathcal{N}(\mu(x), \mathrm{diag}\,\sigma^2(x))`. Training follows the paper, through
:class:`~pprogen.inference.AdversarialTrainer`: with :math:`f = \mathrm{Dis}_l` the discriminator's last hidden
layer and :math:`\tilde x = \mathbb{E}[x \mid z]` the decoder's mean image,

- the encoder minimizes :math:`\mathrm{KL}(q(z \mid x) \,\|\, p(z)) + \tfrac12 \|f(\tilde x_q) - f(x)\|^2`
  (the Gaussian "likelihood" of the data in feature space, :math:`z_q \sim q(z \mid x)`) with weight
  ``encoder_feature_weight``: 1 is the paper's :math:`\mathcal{L}_\text{prior} + \mathcal{L}^{\mathrm{Dis}_l}_\text{llike}`;
  the default, :math:`\gamma` as for the decoder, made samples of higher precision on digits28 (README);
- the decoder minimizes :math:`\gamma\, \tfrac12 \|f(\tilde x_q) - f(x)\|^2` plus the generator's adversarial loss on
  both its reconstructions :math:`\mathrm{Dec}(z_q)` and its prior samples :math:`\mathrm{Dec}(z_p)`,
  :math:`z_p \sim p(z)` (the encoder gets no adversarial gradient: the reconstructions enter the game with
  :math:`z_q` detached);
- the discriminator tells data from both kinds of fakes (and is not trained on the feature term);
- the Gaussian likelihood's scale alone is fitted to the pixels of the reconstructions (its term reaches no
  network), so the stated likelihood is a fitted one.

Two options for binary data (README: draws, with ``feature_weight=1``, made samples more precise than the
same-size VAE's on binarized MNIST; the pixel term made them blurry):
``critic_input="draws"`` shows the discriminator straight-through Bernoulli draws of both kinds of fakes instead of
their mean images (binary like the data, so grey levels give fakes away no more), and ``pixel_weight`` adds the stated
likelihood's reconstruction term :math:`-\log p(x \mid z_q)` to the encoder's and decoder's losses (default 0).

With the default ``pixel_weight=0`` the decoder is trained on neither its pixel likelihood nor the ELBO: the stated likelihood makes log p(x)
defined and comparable, not good. Its samples are what the model is for.

Reference: Larsen, Sønderby, Larochelle & Winther, Autoencoding beyond pixels using a learned similarity metric,
ICML 2016, arXiv:1512.09300.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import pyro.distributions as dist
import torch
from torch import nn

from pprogen.models.gan import ConvDiscriminator, check_image_shape
from pprogen.models.vae import VAE, AmortizedNormalGuide, check_sizes
from pprogen.nn import ConvDecoder, ConvEncoder, CriticPair, normal_head
from pprogen.registry import register_model

LIKELIHOODS = ("bernoulli", "gaussian")
CRITIC_INPUTS = ("mean", "draws")


class VAEGAN(VAE):
    """A VAE (encoder, decoder) and a discriminator whose features measure the reconstruction; see the module
    docstring. ``encoder`` lives in the model (the trainer updates it with the decoder) and the guide shares it."""

    conditional = False
    states_likelihood = True  # trained adversarially, yet p(x | z) is stated: importance sampling applies

    def __init__(self, x_shape: Sequence[int], z_dim: int, decoder: nn.Module, encoder: nn.Module,
                 discriminator: ConvDiscriminator, likelihood: str = "gaussian", feature_weight: float = 1.0,
                 kl_weight: float = 1.0, encoder_feature_weight: float | None = None,
                 critic_input: str = "mean", pixel_weight: float = 0.0) -> None:
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r} for vaegan; choose one of {', '.join(LIKELIHOODS)}")
        if critic_input not in CRITIC_INPUTS:
            raise ValueError(f"unknown critic_input {critic_input!r} for vaegan; choose one of {', '.join(CRITIC_INPUTS)}")
        if critic_input == "draws" and likelihood != "bernoulli":
            raise ValueError("critic_input='draws' shows the discriminator binary draws of a Bernoulli likelihood; "
                             "use it with likelihood=bernoulli (binary data)")
        if encoder_feature_weight is None:
            encoder_feature_weight = feature_weight
        for key, value in (("feature_weight", feature_weight), ("kl_weight", kl_weight),
                           ("encoder_feature_weight", encoder_feature_weight), ("pixel_weight", pixel_weight)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{key} must be a non-negative number, got {value!r}")
        super().__init__(x_shape, z_dim, decoder, lambda: encoder, "bernoulli")
        self.likelihood = likelihood
        if likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.full(self.x_shape, math.log(0.1)))
        self.encoder = encoder
        self.discriminator = discriminator
        self.feature_weight, self.kl_weight = float(feature_weight), float(kl_weight)
        self.encoder_feature_weight = float(encoder_feature_weight)
        self.critic_input = critic_input
        self.pixel_weight = float(pixel_weight)

    @property
    def generator(self) -> nn.Module:
        """The decoder plays the generator (no moving average is kept)."""
        return self.decoder

    def default_guide(self) -> AmortizedNormalGuide:
        """q(z | x) with the model's own encoder (shared, so the model's weights hold it)."""
        return AmortizedNormalGuide(self.encoder, self.z_dim)

    def likelihood_dist(self, z: torch.Tensor, **condition: Any) -> dist.TorchDistribution:
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            fn = dist.Bernoulli(logits=out)
        else:
            fn = dist.Normal(torch.sigmoid(out), self.log_scale.exp())
        return fn.to_event(len(self.x_shape))

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z]: the image the discriminator judges, in [0, 1]."""
        return torch.sigmoid(self.decoder(z))

    def judged_image(self, z: torch.Tensor) -> torch.Tensor:
        """The fake the discriminator judges: the mean image E[x | z] (``critic_input="mean"``), or a draw
        x ~ Bernoulli(E[x | z]) passed straight through (``"draws"``: the draw forward, the mean's gradient
        backward). On binary data the draws are binary like the real images, so D cannot tell fakes by their grey
        levels, and the game matches the stated model's marginal p(x) = E_z p(x | z) to the data."""
        mean = self.mean_image(z)
        if self.critic_input == "mean":
            return mean
        draw = (torch.rand_like(mean) < mean).to(mean.dtype)
        return draw + (mean - mean.detach())

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None, mean: bool = True) -> torch.Tensor:
        """``n`` images E[x | z], z ~ N(0, I) (as a GAN's samples are shown); draws of p(x | z) with ``mean=False``."""
        if y is not None:
            raise ValueError("vaegan is not conditional but got labels y")
        z = self.prior_latents(n)
        return self.mean_image(z) if mean else self.likelihood_dist(z).sample()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Dis_l(x): the discriminator's last hidden layer, flattened."""
        return self.discriminator.body(x)

    def _feature_term(self, z_q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """0.5 |Dis_l(E[x | z_q]) - Dis_l(x)|^2 (mean over rows), weighted gamma (``feature_weight``) for the decoder
        and ``encoder_feature_weight`` for the encoder; its value is gamma times the term. Larsen et al. give the
        encoder the whole term (weight 1: L_enc = L_prior + L_llike) and the decoder gamma L_llike - L_GAN; the
        default gives the encoder gamma too, which made better samples here (README)."""
        def term(image):
            return 0.5 * (self.features(image) - target).pow(2).sum(-1).mean()

        gamma, encoder = self.feature_weight, self.encoder_feature_weight
        if gamma > 0:  # the gradient into z_q scaled by encoder / gamma: the encoder gets the term at its weight
            z_in = z_q if encoder == gamma else z_q.detach() + (z_q - z_q.detach()) * (encoder / gamma)
            return gamma * term(self.mean_image(z_in))
        frozen = {k: v.detach() for k, v in self.decoder.named_parameters()}  # gamma 0: the decoder gets none of it
        encoder_part = encoder * term(torch.sigmoid(torch.func.functional_call(self.decoder, frozen, (z_q,))))
        return encoder_part - encoder_part.detach()  # value gamma * term = 0, gradient the encoder's

    def adversarial_terms(
        self, real: torch.Tensor, generator_step: bool, y: torch.Tensor | None = None
    ) -> tuple[list[CriticPair], dict[str, torch.Tensor]]:
        loc, scale = normal_head(self.encoder(real), self.z_dim)
        z_q = loc + scale * torch.randn_like(loc)
        prior = CriticPair(self.discriminator, real, self.judged_image(torch.randn_like(loc)), name="prior")
        if not generator_step:
            return [prior, CriticPair(self.discriminator, real, self.judged_image(z_q), name="recon")], {}
        with torch.no_grad():
            target = self.features(real)
        feature_nll = self._feature_term(z_q, target)
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1 - 2 * scale.log()).sum(-1).mean()
        recon = CriticPair(self.discriminator, real, self.judged_image(z_q.detach()), name="recon")
        extra = {"kl": self.kl_weight * kl, "feature_nll": feature_nll}
        if self.pixel_weight > 0:  # the stated likelihood's reconstruction term, for the encoder and the decoder
            extra["pixel_nll"] = -self.pixel_weight * self.likelihood_dist(z_q).log_prob(real).mean()
        if self.likelihood == "gaussian":  # the stated likelihood's scale, fitted to the reconstructions (only it learns)
            fn = dist.Normal(self.mean_image(z_q).detach(), self.log_scale.exp()).to_event(len(self.x_shape))
            extra["pixel_scale_nll"] = -fn.log_prob(real).mean()
        return [prior, recon], extra

    def check_data(self, data: torch.Tensor, pairing: str | None = None, y: torch.Tensor | None = None) -> None:
        if tuple(data.shape[1:]) != self.x_shape:
            raise ValueError(f"vaegan makes images of shape {self.x_shape} but the data have {tuple(data.shape[1:])}; "
                             "build the model for this data (x_shape)")
        if y is not None:
            raise ValueError("vaegan is not conditional but got labels y")
        if self.likelihood == "bernoulli" and not bool(((data == 0) | (data == 1)).all()):
            raise ValueError("vaegan's likelihood is Bernoulli but the data are not binary; use a binarized data set "
                             "or --set likelihood=gaussian")


@register_model(
    kind="gan",
    reference="Larsen, Sønderby, Larochelle & Winther, Autoencoding beyond pixels using a learned similarity metric, "
    "ICML 2016, arXiv:1512.09300",
    default_data="digits28",
    story="z ~ N(0, I); x | z ~ Normal(sigmoid(Dec(z)), diag s^2) or Bernoulli(Dec(z)) (stated, so log_marginal "
    "gives an importance-sampled log p(x)); guide q(z | x) = N(Enc(x)). Trained adversarially: the reconstruction "
    "measured in the discriminator's features, the decoder also fooling D on prior samples and reconstructions.",
    train_defaults={"loss": "nonsaturating", "epochs": 100, "batch_size": 64, "lr": 3e-4, "lr_d": 3e-4,
                    "betas": [0.5, 0.999], "ema": None},
)
def vaegan(
    x_shape: Sequence[int] = (1, 28, 28),
    z_dim: int = 32,
    hidden_dims: Sequence[int] = (256,),
    channels: Sequence[int] = (32, 64),
    d_channels: int = 32,
    likelihood: str = "gaussian",
    feature_weight: float = 0.1,
    kl_weight: float = 1.0,
    encoder_feature_weight: float | None = None,
    activation: str = "relu",
    critic_input: str = "mean",
    pixel_weight: float = 0.0,
) -> VAEGAN:
    """conv_vae's encoder and decoder (same sizes, so it compares with ``conv_vae``; ``channels`` an int c means
    (c, 2c)) and dcgan's discriminator with ``d_channels``. On binary data (binarized MNIST) these defaults
    collapsed (one image for every z); ``encoder_feature_weight=1`` with ``--r1-weight 1`` trained, and adding
    ``feature_weight=1, critic_input="draws"`` made samples more precise than the same-size VAE's (README)."""
    check_image_shape("vaegan", x_shape)
    if isinstance(channels, int):
        channels = (channels, 2 * channels)
    hidden = check_sizes(z_dim, hidden_dims)
    chans = check_sizes(z_dim, channels, "channels")
    return VAEGAN(x_shape, z_dim, ConvDecoder(z_dim, x_shape, chans[::-1], hidden, activation),
                  ConvEncoder(x_shape, 2 * z_dim, chans, hidden, activation), ConvDiscriminator(x_shape, d_channels),
                  likelihood, feature_weight, kl_weight, encoder_feature_weight, critic_input, pixel_weight)
