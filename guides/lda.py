r"""Guides for LDA (:mod:`models.lda`): the mean-field family of Blei, Ng & Jordan, free or amortised.

Both guides have the family

    q(beta, theta, z) = prod_k Dir(beta_k | lambda_k) prod_d Dir(theta_d | gamma_d) prod_{d,v} Cat(z_dv | phi_dv)

(q(beta) only with bayesian topics), one phi_dv shared by the n_dv tokens of word v in document d, as at
CAVI's optimum. They differ in where gamma and phi come from:

* ``mean_field``: gamma: (D, K) and phi: (E, K) (one row per non-zero count) are free parameters.
  With plate subsampling only the step's documents get gradients; the rest keep drifting on Adam's
  momentum for a few steps (this is the cost of local parameters that amortisation removes).
* ``amortised``: gamma_d = alpha + N_d softmax(f(log(1 + x_d))), an MLP f of the bag of words
  (sum_k gamma_dk = sum_k alpha_k + N_d holds at every CAVI fixed point, so only the proportions are
  learned), and phi_dv = softmax_k(digamma(gamma_dk) + U_vk), CAVI's own phi update with a learned word
  table U: (V, K) in place of E[log beta_kv] (CAVI's optimum is in the family: U = E[log beta]^T).
  No parameter grows with the corpus except lambda's fixed (K, V).

lambda (bayesian topics) is a free global parameter in both: there is one per corpus, nothing to amortise.

Valid estimators: Trace_ELBO and TraceGraph_ELBO (score-function gradients for z, reparameterised
Dirichlet samples for theta and beta) and TraceEnum_ELBO (z summed out exactly in the guide: only theta
and beta are sampled; the configs use it). Not TraceMeanField_ELBO: z is discrete.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch import Tensor, nn

from guides.nets import MLP
from models.exact import lda as exact
from models.lda import LDAParams, batch_entries, corpus_entries

VALID_ELBOS = ("Trace_ELBO", "TraceGraph_ELBO", "TraceEnum_ELBO")
WHY_NOT = "TraceMeanField_ELBO needs a fully reparameterised guide, and z is discrete"


class _Topics(PyroModule):
    """The shared part: q(beta_k) = Dir(lambda_k) for bayesian topics (nothing for point topics)."""

    def _init_topics(self, init: LDAParams) -> None:
        self.num_topics = init.num_topics
        self.register_buffer("alpha", init.alpha.detach().clone())
        self.lam = PyroParam(init.lam.detach().clone(), constraint=constraints.positive) if init.bayesian else None

    def _sample_topics(self) -> None:
        if self.lam is not None:
            with pyro.plate("topics", self.num_topics):
                pyro.sample("beta", dist.Dirichlet(self.lam))

    def _sample_local(self, x: Tensor, docs: Tensor, gamma: Tensor, phi_logits) -> None:
        """theta for the step's documents (gamma: (B, K)), then z for their entries; ``phi_logits``
        maps (positions, local document index) to the entries' (E_B, K) logits."""
        pos, local, weight = batch_entries(corpus_entries(x), docs, x.shape[0])
        with pyro.plate("words", pos.shape[0]), poutine.scale(scale=weight):
            pyro.sample("z", dist.Categorical(logits=phi_logits(pos, local)))

    def topic_params(self, params: LDAParams) -> LDAParams:
        """The model's parameters with this guide's lambda filled in (bayesian topics)."""
        return LDAParams(params.alpha, params.eta, params.beta, None if self.lam is None else self.lam)


class MeanField(_Topics):
    """Free gamma: (D, K), phi logits: (E, K) and (bayesian) lambda: (K, V)."""

    def __init__(self, x: Tensor, init: LDAParams, gamma: Tensor, phi_logits: Tensor):
        super().__init__()
        self._init_topics(init)
        self.gamma = PyroParam(gamma.detach().clone(), constraint=constraints.positive)
        self.phi_logits = nn.Parameter(phi_logits.detach().clone())

    def forward(self, x: Tensor, subsample_size: int | None = None) -> None:
        self._sample_topics()
        with pyro.plate("docs", x.shape[0], subsample_size=subsample_size) as docs:
            gamma = self.gamma[docs]
            pyro.sample("theta", dist.Dirichlet(gamma))
        self._sample_local(x, docs, gamma, lambda pos, local: self.phi_logits[pos])

    @torch.no_grad()
    def variational(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """gamma: (D, K) and phi: (E, K) for every document and entry of x."""
        return self.gamma.detach(), torch.softmax(self.phi_logits, -1).detach()


class Amortised(_Topics):
    """gamma_d = alpha + N_d softmax(MLP(log(1 + x_d))); phi_dv = softmax_k(digamma(gamma_dk) + U_vk)."""

    def __init__(self, x: Tensor, init: LDAParams, hidden: Sequence[int], word_topic: Tensor):
        super().__init__()
        self._init_topics(init)
        self.net = MLP(x.shape[1], hidden, init.num_topics).to(x.dtype)
        self.word_topic = nn.Parameter(word_topic.detach().clone())  # U: (V, K)

    def doc_gamma(self, counts: Tensor) -> Tensor:
        """gamma: (B, K) for documents counts: (B, V)."""
        length = counts.sum(-1, keepdim=True)
        return self.alpha + length * torch.softmax(self.net(torch.log1p(counts)), -1)

    def _phi_logits(self, x: Tensor, gamma: Tensor, pos: Tensor, local: Tensor) -> Tensor:
        return torch.digamma(gamma)[local] + self.word_topic[corpus_entries(x).word[pos]]

    def forward(self, x: Tensor, subsample_size: int | None = None) -> None:
        self._sample_topics()
        with pyro.plate("docs", x.shape[0], subsample_size=subsample_size) as docs:
            gamma = self.doc_gamma(x[docs] if subsample_size else x)
            pyro.sample("theta", dist.Dirichlet(gamma))
        self._sample_local(x, docs, gamma, lambda pos, local: self._phi_logits(x, gamma, pos, local))

    @torch.no_grad()
    def variational(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """gamma: (D, K) and phi: (E, K) for every document and entry of x."""
        gamma = self.doc_gamma(x)
        e = corpus_entries(x)
        return gamma, torch.softmax(torch.digamma(gamma)[e.doc] + self.word_topic[e.word], -1)


def _log_topics(init: LDAParams) -> Tensor:
    """E[log beta] under the initial lambda, or log beta: (K, V)."""
    return exact._expected_log_dirichlet(init.lam) if init.bayesian else torch.log(init.beta)


def _doc_fixed_point(x: Tensor, init: LDAParams) -> Tensor:
    """gamma: (D, K) at CAVI's fixed point with the topics at ``init`` (the E-step of the initial parameters)."""
    k = init.num_topics
    fit = exact.fit_cavi(x, init.alpha, k, beta=torch.exp(_log_topics(init)), max_sweeps=20, doc_iters=10, tol=1e-6)
    return fit.state.gamma


def mean_field(x: Tensor, init: LDAParams, hidden: Sequence[int] = (32,), start: str = "uniform",
               baseline: str = "average") -> MeanField:
    """Free gamma and phi per document and entry. start="uniform": phi uniform and gamma = alpha + N_d / K
    (CAVI's start); "posterior": gamma and phi at CAVI's document fixed point for the initial topics.
    ``hidden`` and ``baseline`` do not apply (TraceGraph_ELBO uses no baseline for z here)."""
    if baseline != "average":
        raise ValueError(f"baseline={baseline!r} does not apply to LDA's guides (only the default 'average')")
    e = corpus_entries(x)
    k = init.num_topics
    if start == "posterior":
        gamma = _doc_fixed_point(x, init)
        logits = torch.digamma(gamma)[e.doc] + _log_topics(init)[:, e.word].T
    else:
        gamma = init.alpha + x.sum(-1, keepdim=True) / k
        logits = torch.zeros(e.doc.shape[0], k, dtype=x.dtype)
    return MeanField(x, init, gamma, logits)


def amortised(x: Tensor, init: LDAParams, hidden: Sequence[int] = (32,), start: str = "uniform",
              baseline: str = "average") -> Amortised:
    """gamma from an MLP (``hidden`` sizes) on log(1 + x_d); phi by CAVI's update with a learned word
    table U, which starts at E[log beta] of the initial topics. start="posterior" first fits the network
    to CAVI's document fixed point at the initial topics (least squares on the proportions)."""
    if baseline != "average":
        raise ValueError(f"baseline={baseline!r} does not apply to LDA's guides (only the default 'average')")
    guide = Amortised(x, init, hidden, _log_topics(init).T)
    if start == "posterior":
        target = _doc_fixed_point(x, init)
        target = (target - init.alpha) / x.sum(-1, keepdim=True)
        optim = torch.optim.Adam(guide.net.parameters(), lr=0.01)
        for _ in range(300):
            props = torch.softmax(guide.net(torch.log1p(x)), -1)
            loss = ((props - target) ** 2).sum(-1).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
    return guide
