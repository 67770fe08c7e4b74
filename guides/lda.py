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

from ..models.exact import lda as exact
from ..models.lda import LDAParams, batch_entries, corpus_entries
from .nets import MLP

VALID_ELBOS = ("Trace_ELBO", "TraceGraph_ELBO", "TraceEnum_ELBO")
WHY_NOT = "TraceMeanField_ELBO needs a fully reparameterised guide, and z is discrete"


TOPIC_STEPS = ("natural", "gradient")
LEARNING_OFFSET, LEARNING_DECAY = 10.0, 0.7  # rho_t = (tau_0 + t)^(-kappa), as Hoffman et al. and scikit-learn


class _Topics(PyroModule):
    """The shared part: q(beta_k) = Dir(lambda_k) for bayesian topics (nothing for point topics).

    topic_step="gradient": lambda is a parameter like any other, moved by the optimiser along the
    Monte Carlo gradient (beta is sampled, and the reparameterised gradient of E[log beta] is noisy).
    topic_step="natural": lambda takes Hoffman et al.'s stochastic natural-gradient step after each
    optimiser step, lambda <- (1 - rho_t) lambda + rho_t (eta + (D / B) sum_{d in batch} n_dv phi_dvk),
    with the phi the guide used in that step (rho_t = (10 + t)^-0.7); the optimiser moves the rest. The
    natural gradient of the ELBO in lambda is exact given phi, so this is SVI as Hoffman et al. (2013)
    define it for conjugate global parameters; the train loop calls :meth:`after_step`.
    """

    def _init_topics(self, init: LDAParams, topic_step: str = "natural") -> None:
        if topic_step not in TOPIC_STEPS:
            raise ValueError(f"topic_step must be one of {TOPIC_STEPS}, got {topic_step!r}")
        self.num_topics = init.num_topics
        self.eta = init.eta
        self.register_buffer("alpha", init.alpha.detach().clone())
        self.natural = init.bayesian and topic_step == "natural"
        if not init.bayesian:
            self.lam = None
        elif self.natural:
            self.register_buffer("lam", init.lam.detach().clone())
            self.register_buffer("topic_steps", torch.zeros((), dtype=torch.long))
        else:
            self.lam = PyroParam(init.lam.detach().clone(), constraint=constraints.positive)
        self._stats: list[Tensor] = []

    def after_step(self) -> None:
        """The natural-gradient step for lambda (topic_step="natural"), from the statistics of the
        guide's calls since the last step (averaged over particles)."""
        if not self.natural or not self._stats:
            return
        rho = (LEARNING_OFFSET + float(self.topic_steps)) ** -LEARNING_DECAY
        target = self.eta + torch.stack(self._stats).mean(0)
        self.lam.mul_(1 - rho).add_(rho * target)
        self.topic_steps += 1
        self._stats = []

    def _sample_topics(self) -> None:
        if self.lam is not None:
            with pyro.plate("topics", self.num_topics):
                pyro.sample("beta", dist.Dirichlet(self.lam))

    def _sample_z(self, x: Tensor, pos: Tensor, weight: Tensor, logits: Tensor) -> None:
        """z for the step's entries ``pos`` (E_B,), with their ELBO weights and phi logits: (E_B, K)."""
        e = corpus_entries(x)
        if self.natural and self.training:  # (D / B) sum_d n_dv phi_dvk: (K, V), for after_step
            phi = torch.softmax(logits.detach(), -1)
            self._stats.append(torch.zeros_like(self.lam).index_add_(1, e.word[pos], (weight[:, None] * phi).T))
        with pyro.plate("words", pos.shape[0]), poutine.scale(scale=weight):
            pyro.sample("z", dist.Categorical(logits=logits))

    def topic_params(self, params: LDAParams) -> LDAParams:
        """The model's parameters with this guide's lambda filled in (bayesian topics)."""
        return LDAParams(params.alpha, params.eta, params.beta, None if self.lam is None else self.lam)


class MeanField(_Topics):
    """Free gamma: (D, K), phi logits: (E, K) and (bayesian) lambda: (K, V)."""

    def __init__(self, x: Tensor, init: LDAParams, gamma: Tensor, phi_logits: Tensor, topic_step: str = "natural"):
        super().__init__()
        self._init_topics(init, topic_step)
        self.gamma = PyroParam(gamma.detach().clone(), constraint=constraints.positive)
        self.phi_logits = nn.Parameter(phi_logits.detach().clone())

    def forward(self, x: Tensor, subsample_size: int | None = None) -> None:
        self._sample_topics()
        with pyro.plate("docs", x.shape[0], subsample_size=subsample_size) as docs:
            pyro.sample("theta", dist.Dirichlet(self.gamma[docs]))
        pos, _, weight = batch_entries(corpus_entries(x), docs, x.shape[0])
        self._sample_z(x, pos, weight, self.phi_logits[pos])

    @torch.no_grad()
    def variational(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """gamma: (D, K) and phi: (E, K) for every document and entry of x."""
        return self.gamma.detach(), torch.softmax(self.phi_logits, -1).detach()


class Amortised(_Topics):
    """gamma_d = alpha + N_d softmax(MLP(log(1 + x_d))); phi_dv = softmax_k(digamma(gamma_dk) + U_vk)."""

    def __init__(self, x: Tensor, init: LDAParams, hidden: Sequence[int], word_topic: Tensor, refine: int = 0,
                 topic_step: str = "natural"):
        super().__init__()
        self._init_topics(init, topic_step)
        self.net = MLP(x.shape[1], hidden, init.num_topics).to(x.dtype)
        # U: (V, K). Bayesian topics: E_q[log beta]^T of the guide's own lambda (tied, no new parameter);
        # point topics: a learned table (the guide cannot see the model's beta).
        self.word_topic = None if init.bayesian else nn.Parameter(word_topic.detach().clone())
        self.refine = refine

    def word_table(self) -> Tensor:
        """U: (V, K), the word terms of phi's update."""
        if self.word_topic is not None:
            return self.word_topic
        return exact._expected_log_dirichlet(self.lam).T

    def local_params(self, x: Tensor, docs: Tensor, pos: Tensor, local: Tensor) -> tuple[Tensor, Tensor]:
        """gamma: (B, K) of documents ``docs`` and the phi logits: (E_B, K) of their entries ``pos``
        (``local``: each entry's document within ``docs``): the network's proportions, then
        ``refine`` steps of CAVI's document updates phi <- softmax(digamma(gamma) + U), gamma <- alpha +
        sum_v n_dv phi_dv (differentiable; the same map for every document)."""
        e = corpus_entries(x)
        counts = x[docs] if docs.shape[0] < x.shape[0] else x
        gamma = self.alpha + counts.sum(-1, keepdim=True) * torch.softmax(self.net(torch.log1p(counts)), -1)
        u = self.word_table()[e.word[pos]]  # (E_B, K)
        n = e.count[pos][:, None]
        for _ in range(self.refine):
            phi = torch.softmax(torch.digamma(gamma)[local] + u, -1)
            gamma = self.alpha + torch.zeros_like(gamma).index_add_(0, local, n * phi)
        return gamma, torch.digamma(gamma)[local] + u

    def forward(self, x: Tensor, subsample_size: int | None = None) -> None:
        self._sample_topics()
        with pyro.plate("docs", x.shape[0], subsample_size=subsample_size) as docs:
            pos, local, weight = batch_entries(corpus_entries(x), docs, x.shape[0])
            gamma, logits = self.local_params(x, docs, pos, local)
            pyro.sample("theta", dist.Dirichlet(gamma))
        self._sample_z(x, pos, weight, logits)

    @torch.no_grad()
    def variational(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """gamma: (D, K) and phi: (E, K) for every document and entry of x."""
        e = corpus_entries(x)
        gamma, logits = self.local_params(x, torch.arange(x.shape[0]), torch.arange(e.doc.shape[0]), e.doc)
        return gamma, torch.softmax(logits, -1)


def _log_topics(init: LDAParams) -> Tensor:
    """E[log beta] under the initial lambda, or log beta: (K, V)."""
    return exact._expected_log_dirichlet(init.lam) if init.bayesian else torch.log(init.beta)


def _doc_fixed_point(x: Tensor, init: LDAParams) -> Tensor:
    """gamma: (D, K) at CAVI's fixed point with the topics at ``init`` (the E-step of the initial parameters)."""
    k = init.num_topics
    fit = exact.fit_cavi(x, init.alpha, k, beta=torch.exp(_log_topics(init)), max_sweeps=20, doc_iters=10, tol=1e-6)
    return fit.state.gamma


def mean_field(x: Tensor, init: LDAParams, hidden: Sequence[int] = (32,), start: str = "uniform",
               baseline: str = "average", topic_step: str = "natural") -> MeanField:
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
    return MeanField(x, init, gamma, logits, topic_step)


def amortised(x: Tensor, init: LDAParams, hidden: Sequence[int] = (32,), start: str = "uniform",
              baseline: str = "average", refine: int = 0, topic_step: str = "natural") -> Amortised:
    """gamma from an MLP (``hidden`` sizes) on log(1 + x_d); phi by CAVI's update with a learned word
    table U, which starts at E[log beta] of the initial topics. start="posterior" first fits the network
    to CAVI's document fixed point at the initial topics (least squares on the proportions)."""
    if baseline != "average":
        raise ValueError(f"baseline={baseline!r} does not apply to LDA's guides (only the default 'average')")
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}")
    guide = Amortised(x, init, hidden, _log_topics(init).T, refine, topic_step)
    if start == "posterior":
        target = _doc_fixed_point(x, init)
        target = (target - init.alpha) / x.sum(-1, keepdim=True)
        optim = torch.optim.Adam(guide.net.parameters(), lr=0.01)
        for _ in range(300):
            props = torch.softmax(guide.net(torch.log1p(x)), -1)  # the network's part (before refinement)
            loss = ((props - target) ** 2).sum(-1).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
        optim.zero_grad(set_to_none=True)  # leave no gradient behind for the SVI loop to add to
    return guide
