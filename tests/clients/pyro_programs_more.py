r"""Two more programs shaped like Pyro's examples, written the way its examples write them, each with its reference.

- :class:`SemiSupervised`: Kingma et al.'s M2 as Pyro's SS-VAE writes it. One ``pyro.module`` for all networks,
  a ``data`` plate, the label observed when given and latent otherwise,

  .. math::

      z_n \sim \mathcal{N}(0, I), \quad y_n \sim \mathrm{Cat}(\tfrac{1}{C}), \quad
      x_n \mid z_n, y_n \sim \mathrm{Bernoulli}(\sigma(D [z_n; y_n] + d)),

  and a guide that draws the label from an encoder only when it is not given, enumerated
  (``config_enumerate(guide, expand=True)``), then :math:`z_n \sim \mathcal{N}(\mu(x_n, y_n), \sigma(x_n, y_n))`.
  Its references: :func:`semisupervised_log_evidence` sums the label out and integrates the 2-d latent on a
  grid; :func:`enumerated_elbo` is the enumerated-label ELBO written out by hand at given draws of z.
- :class:`TopicModel`: LDA as Pyro's example writes it (global topics, a ``documents`` plate, a ``words`` plate
  nested in it, each word's topic enumerated in the model and indexed ``topic_words[word_topics]``), with an
  amortized guide on each document's topic weights, a Dirichlet (a density) or, as Pyro's example, a ``Delta``.
  With fixed topics the evidence of a document is a sum over every assignment of topics to its words of
  Dirichlet moments (:func:`lda_log_evidence`, brute-force enumeration);
  :func:`lda_log_joint` is log p(w, theta) with the word topics summed by hand. ``genre=True`` adds a corpus-wide
  genre outside every plate, enumerated in the model, that picks the documents' prior
  (:func:`genre_log_evidence` sums it by hand over the per-document sums).

Rows are data points in pprogen (documents here; Pyro's LDA keeps documents along the second axis).

References: Kingma, Rezende, Mohamed & Welling, Semi-Supervised Learning with Deep Generative Models, 2014,
arXiv:1406.5298; Blei, Ng & Jordan, Latent Dirichlet Allocation, JMLR 2003; Pyro's examples (vae/ss_vae_M2.py,
lda.py).
"""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import config_enumerate
from torch import nn
from torch.distributions import constraints

DTYPE = torch.float64


def _linear(generator: torch.Generator, inputs: int, outputs: int, gain: float = 1.0) -> nn.Linear:
    """A float64 layer with weights drawn from ``generator``: the same network for pprogen and for Pyro's SVI."""
    layer = nn.Linear(inputs, outputs).to(DTYPE)
    with torch.no_grad():
        layer.weight.copy_(gain * torch.randn(outputs, inputs, generator=generator, dtype=DTYPE) / math.sqrt(inputs))
        layer.bias.copy_(0.1 * torch.randn(outputs, generator=generator, dtype=DTYPE))
    return layer


def _concat(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenates along the last dim after broadcasting the others (an enumerated label sits left of the rows),
    as the SS-VAE's networks broadcast their inputs."""
    batch = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(batch + t.shape[-1:]) for t in tensors], -1)


# ---------------------------------------------------------------------------------------------------------------
# Semi-supervised VAE (M2)
# ---------------------------------------------------------------------------------------------------------------

PIXELS, CLASSES, LATENT = 6, 3, 2


class SemiSupervised(nn.Module):
    """Kingma et al.'s M2 with Pyro's SS-VAE structure; ``one_hot`` labels (OneHotCategorical, as Pyro's example)
    or integer labels (Categorical, one-hot encoded for the networks)."""

    def __init__(self, one_hot: bool = True, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.one_hot = one_hot
        self.encoder_y = _linear(g, PIXELS, CLASSES, gain=2.0)
        self.encoder_z = _linear(g, PIXELS + CLASSES, 2 * LATENT)
        self.decoder = _linear(g, LATENT + CLASSES, PIXELS, gain=2.0)

    def _label(self, probs_or_logits: torch.Tensor, logits: bool = False):
        kw = {"logits": probs_or_logits} if logits else {"probs": probs_or_logits}
        return dist.OneHotCategorical(**kw) if self.one_hot else dist.Categorical(**kw)

    def encode(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.one_hot else nn.functional.one_hot(y.long(), CLASSES).to(DTYPE)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits of the pixels given (z, y)."""
        return self.decoder(_concat(z, self.encode(y)))

    def encode_z(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.encoder_z(_concat(x, self.encode(y))).chunk(2, -1)
        return loc, nn.functional.softplus(raw_scale) + 0.1

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]):
            zs = pyro.sample("z", dist.Normal(xs.new_zeros(LATENT), 1.0).to_event(1))
            ys = pyro.sample("y", self._label(xs.new_ones(CLASSES) / CLASSES), obs=ys)
            pyro.sample("x", dist.Bernoulli(logits=self.decode(zs, ys)).to_event(1), obs=xs)

    def guide(self, xs, ys=None):
        pyro.module("ss_vae", self)
        with pyro.plate("data", xs.shape[0]):
            if ys is None:
                ys = pyro.sample("y", self._label(self.encoder_y(xs), logits=True))
            loc, scale = self.encode_z(xs, ys)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def enumerated_guide(self):
        """The guide as Pyro's SS-VAE hands it to SVI: its label enumerated, expanded over the rows."""
        return config_enumerate(self.guide, "parallel", expand=True)

    def labels(self, y: torch.Tensor) -> torch.Tensor:
        """Class indices as the program observes them (one-hot rows or indices)."""
        return nn.functional.one_hot(y, CLASSES).to(DTYPE) if self.one_hot else y.to(DTYPE)


def semisupervised_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixels (n, 6), classes (n,))``: a class-dependent pattern with flipped bits."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    patterns = torch.tensor([[1, 1, 0, 0, 0, 1], [0, 1, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=DTYPE)
    flips = (torch.rand(n, PIXELS, generator=g, dtype=DTYPE) < 0.15).to(DTYPE)
    return (patterns[y] + flips) % 2, y


@torch.no_grad()
def semisupervised_log_evidence(program: SemiSupervised, x: torch.Tensor, y: torch.Tensor | None = None,
                                points: int = 201, half_width: float = 7.0) -> torch.Tensor:
    """log p(x_n) (the label summed out), or log p(x_n, y_n) given the classes ``y``: the 2-d latent integrated by
    the trapezoidal rule on a ``points`` x ``points`` grid over [-half_width, half_width]^2."""
    axis = torch.linspace(-half_width, half_width, points, dtype=DTYPE)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 1, LATENT)  # (G, 1, 2)
    weights = torch.ones(points, dtype=DTYPE)
    weights[0] = weights[-1] = 0.5
    log_cell = (weights[:, None] * weights[None, :]).reshape(-1, 1).log() + 2 * math.log(axis[1] - axis[0])
    log_prior_z = dist.Normal(0.0, 1.0).log_prob(grid).sum(-1)  # (G, 1)
    per_class = []
    for c in range(CLASSES):
        label = torch.full((x.shape[0],), c)
        logits = program.decoder(_concat(grid, nn.functional.one_hot(label, CLASSES).to(DTYPE)))
        log_lik = dist.Bernoulli(logits=logits).log_prob(x).sum(-1)  # (G, n)
        per_class.append(math.log(1 / CLASSES) + torch.logsumexp(log_cell + log_prior_z + log_lik, 0))
    per_class = torch.stack(per_class, -1)  # (n, C)
    if y is not None:
        return per_class.gather(-1, y[:, None]).squeeze(-1)
    return torch.logsumexp(per_class, -1)


@torch.no_grad()
def enumerated_elbo(program: SemiSupervised, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""The enumerated-label ELBO of each row at given draws ``z`` ``(C, n, 2)`` (one per label and row), by hand:

    .. math::

        \sum_y q(y \mid x) \big[\log p(y) + \log p(z_y) + \log p(x \mid z_y, y) - \log q(z_y \mid x, y)\big]
        + \mathrm{H}[q(y \mid x)].
    """
    q_y = torch.softmax(program.encoder_y(x), -1).T  # (C, n)
    total = -(q_y * q_y.log()).sum(0)
    for c in range(CLASSES):
        label = nn.functional.one_hot(torch.full((x.shape[0],), c), CLASSES).to(DTYPE)
        loc, raw_scale = program.encoder_z(torch.cat([x, label], -1)).chunk(2, -1)
        scale = nn.functional.softplus(raw_scale) + 0.1
        given = (math.log(1 / CLASSES) + dist.Normal(0.0, 1.0).log_prob(z[c]).sum(-1)
                 + dist.Bernoulli(logits=program.decoder(torch.cat([z[c], label], -1))).log_prob(x).sum(-1)
                 - dist.Normal(loc, scale).log_prob(z[c]).sum(-1))
        total = total + q_y[c] * given
    return total


@torch.no_grad()
def enumerated_log_weight(program: SemiSupervised, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""One importance weight per row with the guide's label summed exactly, at draws ``z`` ``(C, n, 2)``:
    :math:`\log \sum_y p(x, y, z_y) / q(z_y \mid x, y)` (q(y | x) weights each term and divides it: it cancels)."""
    terms = []
    for c in range(CLASSES):
        label = nn.functional.one_hot(torch.full((x.shape[0],), c), CLASSES).to(DTYPE)
        loc, raw_scale = program.encoder_z(torch.cat([x, label], -1)).chunk(2, -1)
        scale = nn.functional.softplus(raw_scale) + 0.1
        terms.append(math.log(1 / CLASSES) + dist.Normal(0.0, 1.0).log_prob(z[c]).sum(-1)
                     + dist.Bernoulli(logits=program.decoder(torch.cat([z[c], label], -1))).log_prob(x).sum(-1)
                     - dist.Normal(loc, scale).log_prob(z[c]).sum(-1))
    return torch.logsumexp(torch.stack(terms), 0)


# ---------------------------------------------------------------------------------------------------------------
# Latent Dirichlet allocation
# ---------------------------------------------------------------------------------------------------------------

TOPICS, VOCABULARY, WORDS = 3, 5, 4
DOC_PRIOR = torch.tensor([0.8, 0.5, 1.2], dtype=DTYPE)  # each document's Dirichlet concentration (fixed topics)
TOPIC_WORDS = torch.tensor([[0.60, 0.25, 0.05, 0.05, 0.05],
                            [0.05, 0.05, 0.60, 0.25, 0.05],
                            [0.10, 0.10, 0.10, 0.10, 0.60]], dtype=DTYPE)
LDA_DATA = torch.tensor([[0, 1, 0, 4], [2, 3, 2, 2], [4, 0, 4, 3], [1, 1, 2, 4]], dtype=DTYPE)
# a corpus-wide genre (one for all documents, summed out) picks the documents' Dirichlet concentration
GENRE_WEIGHTS = torch.tensor([0.3, 0.7], dtype=DTYPE)
GENRE_PRIORS = torch.stack([DOC_PRIOR, torch.tensor([3.0, 0.3, 0.4], dtype=DTYPE)])


class TopicModel(nn.Module):
    """LDA in Pyro's example's shape. ``fixed_topics``: the topics are the constants :data:`TOPIC_WORDS` and each
    document's prior :data:`DOC_PRIOR`, so the evidence splits per document; otherwise Pyro's global
    ``topic_weights`` (Gamma) and ``topic_words`` (Dirichlet), with conjugate-family guides. ``point_mass``: the
    document topics' guide is a Delta, as in Pyro's example."""

    def __init__(self, fixed_topics: bool = True, point_mass: bool = False, genre: bool = False, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fixed_topics = fixed_topics
        self.point_mass = point_mass
        self.genre = genre
        self.predictor = _linear(g, VOCABULARY, TOPICS, gain=0.5)

    def model(self, data, doc_topics=None):
        if self.genre:  # fixed topics, and a genre outside every plate: the evidence is joint
            genre = pyro.sample("genre", dist.Categorical(GENRE_WEIGHTS), infer={"enumerate": "parallel"})
            topic_weights, topic_words = GENRE_PRIORS[genre], TOPIC_WORDS
        elif self.fixed_topics:
            topic_weights, topic_words = DOC_PRIOR, TOPIC_WORDS
        else:
            with pyro.plate("topics", TOPICS):
                topic_weights = pyro.sample("topic_weights", dist.Gamma(data.new_tensor(1.0 / TOPICS), 1.0))
                topic_words = pyro.sample("topic_words", dist.Dirichlet(data.new_ones(VOCABULARY) / VOCABULARY))
        with pyro.plate("documents", data.shape[0], dim=-2):
            if doc_topics is not None:  # given: log p(w, theta)
                doc_topics = doc_topics.unsqueeze(-2)
            doc_topics = pyro.sample("doc_topics", dist.Dirichlet(topic_weights), obs=doc_topics)
            with pyro.plate("words", data.shape[1], dim=-1):
                # summed out by enumeration: the guide leaves it alone
                word_topics = pyro.sample("word_topics", dist.Categorical(doc_topics),
                                          infer={"enumerate": "parallel"})
                pyro.sample("doc_words", dist.Categorical(topic_words[word_topics]), obs=data)

    def guide(self, data, doc_topics=None):
        if not self.fixed_topics:
            weights_posterior = pyro.param("topic_weights_posterior", lambda: data.new_ones(TOPICS),
                                           constraint=constraints.positive)
            words_posterior = pyro.param("topic_words_posterior", lambda: data.new_ones(TOPICS, VOCABULARY),
                                         constraint=constraints.greater_than(0.5))
            with pyro.plate("topics", TOPICS):
                pyro.sample("topic_weights", dist.Gamma(weights_posterior, 1.0))
                pyro.sample("topic_words", dist.Dirichlet(words_posterior))
        pyro.module("predictor", self.predictor)
        with pyro.plate("documents", data.shape[0], dim=-2):
            # the network reads histograms of the words, not their indices
            counts = nn.functional.one_hot(data.long(), VOCABULARY).to(data.dtype).sum(-2)
            concentration = nn.functional.softplus(self.predictor(counts)) + 0.5
            if self.point_mass:
                mean = concentration / concentration.sum(-1, keepdim=True)
                pyro.sample("doc_topics", dist.Delta(mean.unsqueeze(-2), event_dim=1))
            else:
                pyro.sample("doc_topics", dist.Dirichlet(concentration.unsqueeze(-2)))


def _dirichlet_moment(concentration: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """log E[prod_k theta_k^{c_k}] under Dirichlet(concentration)."""
    return (torch.lgamma(concentration.sum()) - torch.lgamma(concentration.sum() + counts.sum())
            + (torch.lgamma(concentration + counts) - torch.lgamma(concentration)).sum())


def lda_log_evidence(data: torch.Tensor, doc_prior: torch.Tensor = DOC_PRIOR) -> torch.Tensor:
    """log p(w_d) of each document with the fixed topics: every assignment of topics to its words, its topic-word
    probabilities times the Dirichlet moment of its topic counts (brute-force enumeration)."""
    out = []
    for words in data.long():
        terms = []
        for topics in itertools.product(range(TOPICS), repeat=len(words)):
            index = torch.tensor(topics)
            counts = torch.bincount(index, minlength=TOPICS).to(DTYPE)
            terms.append(TOPIC_WORDS[index, words].log().sum() + _dirichlet_moment(doc_prior, counts))
        out.append(torch.logsumexp(torch.stack(terms), 0))
    return torch.stack(out)


def lda_log_joint(data: torch.Tensor, doc_topics: torch.Tensor) -> torch.Tensor:
    """log p(w_d, theta_d) with the fixed topics: log Dir(theta_d) + sum_n log sum_k theta_dk phi_{k, w_dn}."""
    words = (doc_topics[:, :, None] * TOPIC_WORDS[:, data.long()].permute(1, 0, 2)).sum(1).log().sum(-1)
    return dist.Dirichlet(DOC_PRIOR).log_prob(doc_topics) + words


def genre_log_evidence(data: torch.Tensor) -> float:
    """log p(w_1..D) with the genre summed out: log sum_g p(g) prod_d p(w_d | g)."""
    per_genre = torch.stack([lda_log_evidence(data, prior).sum() for prior in GENRE_PRIORS])
    return torch.logsumexp(GENRE_WEIGHTS.log() + per_genre, 0).item()
