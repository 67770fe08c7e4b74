r"""Guides for the log-linear tagger (:mod:`models.pos_tagger`): q over each sentence's tag path.

* ``mean_field``, fully factorised: q(t_n) = prod_i Cat(t_{n,i} | softmax(logits_{n,i})), free logits (N, T, K)
  per token. Its best member at fixed parameters is the coordinate-ascent fixed point
  (:func:`models.exact.pos_tagger.fit_mean_field`); it is not the posterior (the tags of neighbouring words are
  dependent a posteriori), so it has an approximation gap.
* ``structured_mean_field``: a Markov chain per sentence, q(t_n) proportional to pi^q[t_1] prod_i A^q[t_i, t_{i+1}]
  prod_i exp(h_{n,i}[t_i]), free pseudo-emissions h (N, T, K) and guide-owned pi^q, A^q (started at the model's).
  With one chain of tags this family contains the exact posterior (h = log theta[w_i], A^q = A), so its
  approximation gap is zero and its gap is all optimisation.
* ``amortised``: the chain family with h = g(sentence; lambda): each token's features (identity, suffixes,
  flags) embedded and summed, a bidirectional GRU over the sentence, a linear read-out to K per token; shared
  across sentences. Its gap is all amortisation gap.

In Pyro the whole path is one site ``t`` (:class:`models.pos_tagger.LinearChain`: exact log q(t), sampled by
forward filtering, backward sampling).

Valid estimators:
* ``Analytic_ELBO``, what the configs use: no sampling; the ELBO in closed form from q's marginals, expected
  transition counts and entropy (:func:`models.exact.pos_tagger.elbo`), plus the MAP prior log p(theta),
  differentiated exactly;
* ``Trace_ELBO`` and ``TraceGraph_ELBO``: score-function gradients for the sampled paths.
Not valid: ``TraceEnum_ELBO`` (one site holds a whole path: K^T values) and ``TraceMeanField_ELBO``
(needs reparameterised sites).

Every guide gives ``variational(x)``: the :class:`models.exact.pos_tagger.Variational` the exact reference
scores (``probs(x, params)`` is the same, for the runner).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor, nn
from torch.distributions import constraints

from ..models.exact import pos_tagger as exact
from ..models.exact.pos_tagger import TaggerParams, Variational
from ..models.pos_tagger import LinearChain

VALID_ELBOS = ("Analytic_ELBO", "Trace_ELBO", "TraceGraph_ELBO")
WHY_NOT = ("TraceEnum_ELBO would sum over the K^T tag paths of a sentence (one site holds the whole path) and "
           "TraceMeanField_ELBO needs reparameterised sites; Analytic_ELBO is the exact, sampling-free path")


class _PathGuide(PyroModule):
    """Shared scoring and sampling: subclasses give ``potentials(x) -> (log_init, log_trans, log_unary)`` of
    their linear chain (log_trans = 0 for the factorised family). With Bayesian transitions
    (:func:`models.pos_tagger.model_vb`, :meth:`with_dirichlet`) the guide also holds q(A) = prod_j Dir(A_j | beta_j),
    beta: (K, K) free and positive, independent of q(t) (mean field between A and the tags)."""

    factorised = False
    bayesian = False  # holds q(A) (with_dirichlet)

    def with_dirichlet(self, x: Tensor, init: TaggerParams) -> "_PathGuide":
        """Give the guide q(A): beta_j starts at concentration + (the data's transitions / K) A_j, the prior plus
        the pseudo-counts of the starting A with every tag equally used."""
        _, lengths, _ = exact.word_ids(x)
        moves = float((lengths - 1).clamp_min(0).sum())
        a = torch.softmax(init.trans_logits.detach(), -1)
        self.beta = PyroParam((init.concentration + moves / init.num_tags * a).to(x.dtype), constraint=constraints.positive)
        self.bayesian = True
        return self

    def fitted_params(self, params: TaggerParams) -> TaggerParams:
        """The model's parameters with trans_logits = E_q[log A] under q(A) (unchanged without q(A)), as
        :func:`models.exact.pos_tagger.fit_vb` reports its fit."""
        if not self.bayesian:
            return params
        return params._replace(trans_logits=exact.expected_log_dirichlet(self.beta))

    def potentials(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def variational(self, x: Tensor) -> Variational:
        _, lengths, mask = exact.word_ids(x)
        log_init, log_trans, log_unary = self.potentials(x)
        if self.factorised:
            return exact.factorised(torch.softmax(log_unary, -1), lengths)
        return exact.chain_variational(log_init, log_trans, log_unary * mask[..., None], lengths)

    def probs(self, x: Tensor, params: TaggerParams | None = None) -> Variational:
        return self.variational(x)

    def analytic_elbo(self, x: Tensor, params: TaggerParams) -> Tensor:
        """sum_n ELBO_n(q) + log p(theta) in closed form (differentiable): the Analytic_ELBO objective (MAP). With
        q(A): the variational-Bayes bound (:func:`models.exact.pos_tagger.vb_elbo`), params.trans_logits unused."""
        if self.bayesian:
            return exact.vb_elbo(x, params, self.variational(x), self.beta)
        return exact.elbo(x, params, self.variational(x)).sum() + exact.log_prior(params)

    def forward(self, x: Tensor) -> None:
        _, lengths, mask = exact.word_ids(x)
        if self.bayesian:
            pyro.sample("A", dist.Dirichlet(self.beta).to_event(1))
        log_init, log_trans, log_unary = self.potentials(x)
        with pyro.plate("sentences", x.shape[0], dim=-1, device=x.device):
            pyro.sample("t", LinearChain(log_init, log_trans, log_unary * mask[..., None], lengths))


class MeanField(_PathGuide):
    """Fully factorised: q(t_{n,i}) = softmax(logits[n, i]); logits: (N, T, K), free."""

    factorised = True
    local_parameters = ("logits",)  # free per sentence (experiments/param_groups.py)

    def __init__(self, logits: Tensor):
        super().__init__()
        self.logits = PyroParam(logits.detach().clone())

    def potentials(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _check_size(x, self.logits.shape[0])
        k = self.logits.shape[-1]
        zeros = self.logits.new_zeros(k)
        return zeros, self.logits.new_zeros(k, k), torch.log_softmax(self.logits, -1)


class Structured(_PathGuide):
    """A Markov chain per sentence with free pseudo-emissions h: (N, T, K) and guide-owned init (K,) and
    transition (K, K) logits."""

    local_parameters = ("unary",)  # free per sentence (experiments/param_groups.py)

    def __init__(self, unary: Tensor, init: TaggerParams):
        super().__init__()
        self.unary = PyroParam(unary.detach().clone())
        self.init_logits = PyroParam(init.init_logits.detach().clone())
        self.trans_logits = PyroParam(init.trans_logits.detach().clone())

    def potentials(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        _check_size(x, self.unary.shape[0])
        return self.init_logits, self.trans_logits, self.unary


class Amortised(_PathGuide):
    """The chain family with h = Linear(BiGRU(sum of the token's feature embeddings)): (N, T, K). The feature
    embeddings have hidden[0] dimensions, the GRU hidden[0] units per direction and len(hidden) layers; the
    read-out starts at zero (q = the guide's own chain prior)."""

    def __init__(self, init: TaggerParams, hidden: Sequence[int] = (32,)):
        super().__init__()
        size = hidden[0]
        dtype, device = init.weights.dtype, init.weights.device
        self.register_buffer("features", init.features.clone())
        self.embed = nn.EmbeddingBag(init.weights.shape[0], size, mode="sum", device=device).to(dtype)
        self.rnn = nn.GRU(size, size, num_layers=len(hidden), batch_first=True, bidirectional=True, device=device).to(dtype)
        self.readout = nn.Linear(2 * size, init.num_tags, device=device).to(dtype)
        nn.init.zeros_(self.readout.weight)
        nn.init.zeros_(self.readout.bias)
        self.init_logits = PyroParam(init.init_logits.detach().clone())
        self.trans_logits = PyroParam(init.trans_logits.detach().clone())

    def unary(self, x: Tensor) -> Tensor:
        words, lengths, _ = exact.word_ids(x)
        ids = self.features[words.reshape(-1)]  # (N T, J)
        present = (ids >= 0).to(self.readout.weight.dtype)
        emb = self.embed(ids.clamp_min(0), per_sample_weights=present).reshape(words.shape + (-1,))
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)  # lengths: CPU
        out, _ = self.rnn(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.readout(out)

    def potentials(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.init_logits, self.trans_logits, self.unary(x)


def _check_size(x: Tensor, n: int) -> None:
    if x.shape[0] != n:
        raise ValueError(f"this guide was built for {n} sentences, got {x.shape[0]}: free per-sentence parameters do not "
                         "transfer to new data (use the amortised guide)")


def _posterior_unary(x: Tensor, init: TaggerParams) -> Tensor:
    """log theta[w_i] per token: the pseudo-emissions at which the chain family is the exact posterior."""
    return exact.token_log_emission(x, init)


def mean_field(x: Tensor, init: TaggerParams, start: str = "uniform") -> MeanField:
    """start="posterior": the logits of the factorised fixed point at ``init``."""
    logits = x.new_zeros(x.shape[0], x.shape[1], init.num_tags)
    if start == "posterior":
        logits = torch.log(exact.fit_mean_field(x, init.to(x.dtype), max_sweeps=100).q.marginals.clamp_min(1e-30))
    return MeanField(logits)


def structured_mean_field(x: Tensor, init: TaggerParams, start: str = "uniform") -> Structured:
    """start="posterior": pseudo-emissions log theta[w_i] (with A^q = A: the exact posterior at ``init``)."""
    unary = x.new_zeros(x.shape[0], x.shape[1], init.num_tags)
    if start == "posterior":
        unary = _posterior_unary(x, init.to(x.dtype))
    return Structured(unary, init.to(x.dtype))


def amortised(x: Tensor, init: TaggerParams, hidden: Sequence[int] = (32,)) -> Amortised:
    return Amortised(init.to(x.dtype), hidden)


# Bayesian transitions (models.pos_tagger.model_vb): the same families of q(t), times q(A) = prod_j Dir(beta_j)


def mean_field_vb(x: Tensor, init: TaggerParams, start: str = "uniform") -> MeanField:
    return mean_field(x, init, start).with_dirichlet(x, init)


def structured_mean_field_vb(x: Tensor, init: TaggerParams, start: str = "uniform") -> Structured:
    return structured_mean_field(x, init, start).with_dirichlet(x, init)


def amortised_vb(x: Tensor, init: TaggerParams, hidden: Sequence[int] = (32,)) -> Amortised:
    return amortised(x, init, hidden).with_dirichlet(x, init)
