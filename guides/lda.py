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

``local = "cavi"`` gives both guides Hoffman et al.'s (2013) schedule for the local factors: for the
step's documents, q(theta_d) and q(z_d) are set by CAVI's document updates iterated to convergence per
document (:func:`models.exact.lda.doc_step`), then lambda takes the natural step. The two guides differ
only in where each document's iterations start: ``mean_field`` from about gamma = 1, scikit-learn's
Gamma(100, 1/100) draws (Hoffman et al.'s SVI,
scikit-learn's online LDA; gamma_d is kept for :meth:`variational` only); ``amortised`` from the
network's gamma, and the network is fitted (least squares on the
proportions, in :meth:`after_step`) to the converged gamma of each step's documents, so no parameter
grows with the corpus and the start improves as training goes on. Nothing local then takes a
gradient step, and the counts are touched only through their non-zero entries (x may be sparse).

``finish_sweeps`` (either guide, natural topic step): after the last SVI step, full-corpus CAVI sweeps from
the SVI lambda (:meth:`_Topics.finish`, run once at the first :meth:`topic_params` or :meth:`variational`),
the first ``finish_restarts`` restarting every document (amortised: from the network's gamma; mean-field:
from about gamma = 1). This semi-amortised hybrid is batch CAVI seeded by SVI; on the news corpus it keeps every
topic alive but does not reach scikit-learn's batch perplexity at its CPU time (docs/models/lda.md).

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
from . import sharding
from .nets import MLP

VALID_ELBOS = ("Trace_ELBO", "TraceGraph_ELBO", "TraceEnum_ELBO")
WHY_NOT = "TraceMeanField_ELBO needs a fully reparameterised guide, and z is discrete"


TOPIC_STEPS = ("natural", "gradient")
LOCAL_STEPS = {"mean_field": ("gradient", "cavi"), "amortised": ("network", "cavi")}
LEARNING_OFFSET, LEARNING_DECAY = 10.0, 0.7  # rho_t = (tau_0 + t)^(-kappa), as Hoffman et al. and scikit-learn


class _Topics(PyroModule):
    """The shared part: q(beta_k) = Dir(lambda_k) for bayesian topics (nothing for point topics).

    topic_step="gradient": lambda is a parameter like any other, moved by the optimiser along the
    Monte Carlo gradient (beta is sampled, and the reparameterised gradient of E[log beta] is noisy).
    topic_step="natural": lambda takes Hoffman et al.'s stochastic natural-gradient step after each
    optimiser step, lambda <- (1 - rho_t) lambda + rho_t (eta + (D / B) sum_{d in batch} n_dv phi_dvk),
    with the phi the guide used in that step (rho_t = (tau_0 + t)^-kappa, by default (10 + t)^-0.7);
    the optimiser moves the rest. The
    natural gradient of the ELBO in lambda is exact given phi, so this is SVI as Hoffman et al. (2013)
    define it for conjugate global parameters; the train loop calls :meth:`after_step`.
    """

    def _init_topics(self, init: LDAParams, topic_step: str = "natural", learning_offset: float = LEARNING_OFFSET,
                     learning_decay: float = LEARNING_DECAY, x=None, finish_sweeps: int = 0,
                     finish_restarts: int | None = None) -> None:
        if topic_step not in TOPIC_STEPS:
            raise ValueError(f"topic_step must be one of {TOPIC_STEPS}, got {topic_step!r}")
        if not (learning_offset >= 0 and 0.5 < learning_decay <= 1):
            raise ValueError(f"learning_offset must be >= 0 and learning_decay in (0.5, 1], got {learning_offset}, {learning_decay}")
        self.learning_offset, self.learning_decay = float(learning_offset), float(learning_decay)
        self.num_topics = init.num_topics
        self.eta = init.eta
        self.register_buffer("alpha", init.alpha.detach().clone())
        self.natural = init.bayesian and topic_step == "natural"
        if not init.bayesian:
            self.lam = None
        elif self.natural:
            self.register_buffer("lam", init.lam.detach().clone())
            self.register_buffer("topic_steps", torch.zeros((), dtype=torch.long, device=init.alpha.device))
        else:
            self.lam = PyroParam(init.lam.detach().clone(), constraint=constraints.positive)
        self._stats: list[Tensor] = []
        if finish_sweeps < 0:
            raise ValueError(f"finish_sweeps must be >= 0, got {finish_sweeps}")
        if finish_sweeps and not self.natural:
            raise ValueError("finish_sweeps needs bayesian topics and topic_step = 'natural'")
        self.finish_sweeps = int(finish_sweeps)
        self.finish_restarts = self.finish_sweeps if finish_restarts is None else int(finish_restarts)
        if self.finish_restarts < 1 and finish_sweeps:
            raise ValueError(f"finish_restarts must be >= 1, got {finish_restarts}")
        self._corpus = x if finish_sweeps else None  # the training corpus, for the finishing sweeps (not state)
        if finish_sweeps:  # state (a resumed run must not finish twice); absent otherwise, as in older checkpoints
            self.register_buffer("finished", torch.zeros((), dtype=torch.bool, device=init.alpha.device))
        else:
            self.finished = torch.zeros((), dtype=torch.bool, device=init.alpha.device)

    @torch.no_grad()
    def finish(self) -> None:
        """The semi-amortised finish (``finish_sweeps`` > 0), run once, after the last SVI step (the first call
        of :meth:`topic_params` or :meth:`variational`): ``finish_sweeps`` full-corpus CAVI sweeps from the SVI
        lambda, each document converged (:func:`models.exact.lda.doc_step`), each sweep ending with
        lambda = eta + sum_d n_dv phi_dvk. The first ``finish_restarts`` sweeps (default: all) start every
        document afresh from :meth:`_finish_start` (the amortised guide: the network's gamma, the network as
        SVI left it; the mean-field guide: its fixed Gamma(100, 1/100) draws, as scikit-learn's batch E-step); the later ones warm
        start from the previous sweep (cheaper; warm starts from the first sweeps lock documents into the
        topics they first took). This is batch CAVI seeded by SVI, and costs
        ``finish_sweeps`` passes over the corpus; the local factors of training documents then come from
        the last sweep."""
        if not self.finish_sweeps or bool(self.finished):
            return
        e = corpus_entries(self._corpus)
        gamma = None
        for sweep in range(self.finish_sweeps):
            start = self._finish_start(e) if sweep < self.finish_restarts else gamma
            step = exact.doc_step(e, self.alpha, self._e_log_topics(), start, self.doc_tol, self.max_doc_iters)
            gamma = step.gamma
            self.lam.copy_(self.eta + step.topic_stats)
        self._finished_gamma = step.gamma
        self.finished.fill_(True)

    def after_step(self) -> None:
        """The natural-gradient step for lambda (topic_step="natural"), from the statistics of the
        guide's calls since the last step (averaged over particles)."""
        if not self.natural or not self._stats:
            return
        rho = (self.learning_offset + float(self.topic_steps)) ** -self.learning_decay
        target = self.eta + torch.stack(self._stats).mean(0)
        self.lam.mul_(1 - rho).add_(rho * target)
        self.topic_steps += 1
        self._stats = []

    def step_statistics(self) -> list[Tensor]:
        """The statistics :meth:`after_step` will use (one (K, V) table per guide call since the last step): a
        data-parallel run (experiments/distributed.py) combines them over the processes, in place, as it does
        the gradients, so every process takes the same natural step."""
        return self._stats

    def _sample_topics(self) -> None:
        if self.lam is not None:
            with pyro.plate("topics", self.num_topics, device=self.lam.device):
                pyro.sample("beta", dist.Dirichlet(self.lam))

    def _e_log_topics(self, params_beta: Tensor | None = None) -> Tensor:
        """E[log beta]: (K, V) under q(beta) (bayesian topics)."""
        return exact._expected_log_dirichlet(self.lam)

    def _local_cavi(self, x, docs: Tensor, pos: Tensor, local: Tensor, start: Tensor) -> tuple[Tensor, Tensor]:
        """Converged CAVI for documents ``docs`` from gamma ``start``: (B, K), topics at q(beta) fixed;
        returns gamma: (B, K) and the phi logits: (E_B, K) of their entries (no gradient)."""
        if self.lam is None:
            raise ValueError("local = 'cavi' needs bayesian topics (q(beta) = Dir(lambda))")
        e = corpus_entries(x)
        rows = e if docs.shape[0] == e.num_docs else e.rows(docs)
        log_beta = self._e_log_topics()
        step = exact.doc_step(rows, self.alpha, log_beta, start.detach(), self.doc_tol, self.max_doc_iters, topic_stats=False)
        self.doc_iters = float(step.iters.double().mean())
        gamma = step.gamma
        return gamma, torch.digamma(gamma)[local] + log_beta[:, e.word[pos]].T

    def _sample_z(self, x, pos: Tensor, weight: Tensor, logits: Tensor) -> None:
        """z for the step's entries ``pos`` (E_B,), with their ELBO weights and phi logits: (E_B, K)."""
        e = corpus_entries(x)
        if self.natural and self.training:  # (D / B) sum_d n_dv phi_dvk: (K, V), for after_step
            phi = torch.softmax(logits.detach(), -1)
            self._stats.append(torch.zeros_like(self.lam).index_add_(1, e.word[pos], (weight[:, None] * phi).T))
        with pyro.plate("words", pos.shape[0], device=x.device), poutine.scale(scale=weight):
            pyro.sample("z", dist.Categorical(logits=logits))

    def topic_params(self, params: LDAParams) -> LDAParams:
        """The model's parameters with this guide's lambda filled in (bayesian topics; after the finishing
        sweeps, when ``finish_sweeps`` > 0)."""
        self.finish()
        return LDAParams(params.alpha, params.eta, params.beta, None if self.lam is None else self.lam)


class MeanField(_Topics):
    """Free gamma: (D, K), phi logits: (E, K) and (bayesian) lambda: (K, V).

    local="cavi": gamma is set by converged CAVI document updates (from about gamma = 1, :attr:`restart`, as
    Hoffman et al. and scikit-learn's online LDA; a warm start from its last value locks documents into early topics)
    each time the document is in the step, and phi is CAVI's optimum for it (not stored)."""

    def __init__(self, x, init: LDAParams, gamma: Tensor, phi_logits: Tensor | None, topic_step: str = "natural",
                 local: str = "gradient", doc_tol: float = exact.DOC_TOL, max_doc_iters: int = exact.MAX_DOC_ITERS,
                 learning_offset: float = LEARNING_OFFSET, learning_decay: float = LEARNING_DECAY, finish_sweeps: int = 0,
                 finish_restarts: int | None = None):
        super().__init__()
        self._init_topics(init, topic_step, learning_offset, learning_decay, x, finish_sweeps, finish_restarts)
        self.local, self.doc_tol, self.max_doc_iters = local, doc_tol, max_doc_iters
        if local == "cavi":  # a parameter the optimiser never moves (no gradient reaches it): CAVI does
            self.gamma = nn.Parameter(gamma.detach().clone())
            self.phi_logits = None
        else:
            self.gamma = PyroParam(gamma.detach().clone(), constraint=constraints.positive)
            self.phi_logits = nn.Parameter(phi_logits.detach().clone())
        # free per document (gamma) and per word entry (phi): experiments/param_groups.py
        self.local_parameters = ("gamma",) if local == "cavi" else ("gamma", "phi_logits")
        # where CAVI restarts each document (local="cavi", finishing sweeps): scikit-learn's Gamma(100, 1/100)
        # start, one fixed draw per document and topic (seed 0: the same on every process and after a resume;
        # not state); exactly gamma = 1 would hold short documents at the symmetric fixed point
        if local == "cavi" or finish_sweeps:
            e = corpus_entries(x)
            self.register_buffer("restart", exact.restart_gamma(e.num_docs, self.num_topics, gamma,
                                                                torch.Generator().manual_seed(0)), persistent=False)

    def _finish_start(self, e) -> Tensor:
        """gamma: (D, K) where each restarted finishing sweep starts every document (:attr:`restart`)."""
        return self.restart

    def local_row_points(self, name: str, x) -> Tensor | None:
        """The document of each row of local parameter ``name``: phi's rows are the entries of x (guides/sharding.py);
        gamma's are the documents themselves (None)."""
        return corpus_entries(x).doc if name == "phi_logits" else None

    def forward(self, x, subsample_size: int | None = None, subsample: Tensor | None = None) -> None:
        self._sample_topics()
        e = corpus_entries(x)
        with pyro.plate("docs", e.num_docs, subsample_size=subsample_size, subsample=subsample, device=x.device) as docs:
            pos, local, weight = batch_entries(e, docs, e.num_docs)
            if self.local == "cavi":  # Hoffman et al.'s local step: each document from its restart, to convergence
                gamma, logits = self._local_cavi(x, docs, pos, local, self.restart[docs])
                gamma = gamma + 0.0 * self.gamma[docs]  # zero gradient: keeps the ELBO differentiable for train_svi
                if self.training:
                    with torch.no_grad():
                        self.gamma[docs] = gamma
            else:
                gamma, logits = sharding.rows(self, "gamma", docs), sharding.rows(self, "phi_logits", pos)
            pyro.sample("theta", dist.Dirichlet(gamma))
        self._sample_z(x, pos, weight, logits)

    @torch.no_grad()
    def variational(self, x) -> tuple[Tensor, Tensor]:
        """gamma: (D, K) and phi: (E, K) for every document and entry of x."""
        self.finish()
        if self.finished and x is self._corpus and self.local == "cavi" and hasattr(self, "_finished_gamma"):
            self.gamma.copy_(self._finished_gamma)
        if self.local == "cavi":
            e = corpus_entries(x)
            return self.gamma.detach(), torch.softmax(torch.digamma(self.gamma)[e.doc] + self._e_log_topics()[:, e.word].T, -1)
        return self.gamma.detach(), torch.softmax(self.phi_logits, -1).detach()


class Amortised(_Topics):
    """gamma_d = alpha + N_d softmax(MLP(log(1 + x_d))); phi_dv = softmax_k(digamma(gamma_dk) + U_vk)."""

    def __init__(self, x, init: LDAParams, hidden: Sequence[int], word_topic: Tensor, refine: int = 0,
                 topic_step: str = "natural", local: str = "network", doc_tol: float = exact.DOC_TOL,
                 max_doc_iters: int = exact.MAX_DOC_ITERS, learning_offset: float = LEARNING_OFFSET,
                 learning_decay: float = LEARNING_DECAY, net_lr: float = 1e-3, finish_sweeps: int = 0,
                 finish_restarts: int | None = None):
        super().__init__()
        self._init_topics(init, topic_step, learning_offset, learning_decay, x, finish_sweeps, finish_restarts)
        self.local, self.doc_tol, self.max_doc_iters = local, doc_tol, max_doc_iters
        e = corpus_entries(x)
        self.net = MLP(e.num_words, hidden, init.num_topics, device=e.count.device).to(e.count.dtype)
        self._fit: list[tuple] = []  # (x, docs, converged proportions) of the step, for after_step
        # the network's own optimiser (local="cavi": fitted to the converged proportions, not by the ELBO)
        self.net_optim = torch.optim.Adam(self.net.parameters(), lr=net_lr) if local == "cavi" else None
        # U: (V, K). Bayesian topics: E_q[log beta]^T of the guide's own lambda (tied, no new parameter);
        # point topics: a learned table (the guide cannot see the model's beta).
        self.word_topic = None if init.bayesian else nn.Parameter(word_topic.detach().clone())
        self.refine = refine

    def _finish_start(self, e) -> Tensor:
        """The network's gamma_d = alpha + N_d softmax(f(log(1 + x_d))) for every document."""
        return self.alpha + e.lengths[:, None] * self.proportions(e, torch.arange(e.num_docs, device=e.doc.device))

    def word_table(self) -> Tensor:
        """U: (V, K), the word terms of phi's update."""
        if self.word_topic is not None:
            return self.word_topic
        return exact._expected_log_dirichlet(self.lam).T

    def proportions(self, x, docs: Tensor) -> Tensor:
        """The network's topic proportions softmax(f(log(1 + x_d))): (B, K) for documents ``docs``. The
        first layer is a sparse product on the documents' non-zero entries: nothing (B, V) is formed."""
        e = corpus_entries(x)
        rows = e if docs.shape[0] == e.num_docs else e.rows(docs)
        layers = list(self.net)
        inputs = torch.sparse_coo_tensor(torch.stack([rows.doc, rows.word]), torch.log1p(rows.count),
                                         (rows.num_docs, rows.num_words), check_invariants=False)
        h = torch.sparse.mm(inputs, layers[0].weight.T) + layers[0].bias
        for layer in layers[1:]:
            h = layer(h)
        return torch.softmax(h, -1)

    def local_params(self, x, docs: Tensor, pos: Tensor, local: Tensor) -> tuple[Tensor, Tensor]:
        """gamma: (B, K) of documents ``docs`` and the phi logits: (E_B, K) of their entries ``pos``
        (``local``: each entry's document within ``docs``): the network's proportions, then
        ``refine`` steps of CAVI's document updates phi <- softmax(digamma(gamma) + U), gamma <- alpha +
        sum_v n_dv phi_dv (differentiable; the same map for every document), or (local="cavi") CAVI's
        document updates to convergence, without gradient."""
        e = corpus_entries(x)
        lengths = e.count.new_zeros(docs.shape[0]).index_add_(0, local, e.count[pos])[:, None]
        props = self.proportions(x, docs)
        gamma = self.alpha + lengths * props
        if self.local == "cavi":
            gamma, logits = self._local_cavi(x, docs, pos, local, gamma)
            if self.training and torch.is_grad_enabled():  # an SVI step (not variational())
                self._fit.append((x, docs, (gamma - self.alpha) / lengths))
            # a zero-weight term: the network gets an exact zero gradient from the ELBO (it is fitted in
            # after_step), and the ELBO stays differentiable, as train_svi's differentiable_loss requires
            return gamma + 0.0 * props, logits
        u = self.word_table()[e.word[pos]]  # (E_B, K)
        n = e.count[pos][:, None]
        for _ in range(self.refine):
            phi = torch.softmax(torch.digamma(gamma)[local] + u, -1)
            gamma = self.alpha + torch.zeros_like(gamma).index_add_(0, local, n * phi)
        return gamma, torch.digamma(gamma)[local] + u

    def forward(self, x, subsample_size: int | None = None, subsample: Tensor | None = None) -> None:
        self._sample_topics()
        e = corpus_entries(x)
        with pyro.plate("docs", e.num_docs, subsample_size=subsample_size, subsample=subsample, device=x.device) as docs:
            pos, local, weight = batch_entries(e, docs, e.num_docs)
            gamma, logits = self.local_params(x, docs, pos, local)
            pyro.sample("theta", dist.Dirichlet(gamma))
        self._sample_z(x, pos, weight, logits)

    def after_step(self) -> None:
        """The natural step of lambda; with local="cavi", also one step of the network's own optimiser
        towards the converged proportions of the step's documents (least squares, as the "posterior"
        start's pre-fit)."""
        super().after_step()
        if self.net_optim is None or not self._fit:
            self._fit = []
            return
        with torch.enable_grad():
            loss = sum(((self.proportions(x, docs) - target) ** 2).sum(-1).mean() for x, docs, target in self._fit)
            self.net_optim.zero_grad()
            loss.backward()
            self.net_optim.step()
            self.net_optim.zero_grad(set_to_none=True)
        self._fit = []

    @torch.no_grad()
    def variational(self, x) -> tuple[Tensor, Tensor]:
        """gamma: (D, K) and phi: (E, K) for every document and entry of x."""
        self.finish()
        e = corpus_entries(x)
        every, entries = torch.arange(e.num_docs, device=e.doc.device), torch.arange(e.doc.shape[0], device=e.doc.device)
        gamma, logits = self.local_params(x, every, entries, e.doc)
        return gamma, torch.softmax(logits, -1)


def _log_topics(init: LDAParams) -> Tensor:
    """E[log beta] under the initial lambda, or log beta: (K, V)."""
    return exact._expected_log_dirichlet(init.lam) if init.bayesian else torch.log(init.beta)


def _doc_fixed_point(x, init: LDAParams) -> Tensor:
    """gamma: (D, K) at CAVI's fixed point with the topics at ``init`` (the E-step of the initial parameters)."""
    return exact.fixed_topics_gamma(x, init.alpha, _log_topics(init))


def _check_local(kind: str, local: str | None, init: LDAParams) -> str:
    """The guide's local step (None: its default, the first of LOCAL_STEPS[kind]), checked."""
    local = LOCAL_STEPS[kind][0] if local is None else local
    if local not in LOCAL_STEPS[kind]:
        raise ValueError(f"local must be one of {LOCAL_STEPS[kind]} for the {kind} guide, got {local!r}")
    if local == "cavi" and not init.bayesian:
        raise ValueError("local = 'cavi' needs bayesian topics (model_args.topics = 'bayesian')")
    return local


def mean_field(x, init: LDAParams, hidden: Sequence[int] = (32,), start: str = "uniform",
               baseline: str = "average", topic_step: str = "natural", local: str | None = "gradient",
               doc_tol: float = exact.DOC_TOL, max_doc_iters: int = exact.MAX_DOC_ITERS,
               learning_offset: float = LEARNING_OFFSET, learning_decay: float = LEARNING_DECAY,
               finish_sweeps: int = 0, finish_restarts: int | None = None) -> MeanField:
    """Free gamma and phi per document and entry. start="uniform": phi uniform and gamma = alpha + N_d / K
    (CAVI's start); "posterior": gamma and phi at CAVI's document fixed point for the initial topics.
    local="gradient": gamma and phi move by the optimiser; "cavi": Hoffman et al.'s SVI, gamma by
    converged CAVI document updates each time its document is drawn (``doc_tol``, ``max_doc_iters``),
    lambda by the natural step with rho_t = (learning_offset + t)^-learning_decay. ``finish_sweeps``,
    ``finish_restarts``: full-corpus CAVI sweeps after SVI (:meth:`_Topics.finish`).
    ``hidden`` and ``baseline`` do not apply (TraceGraph_ELBO uses no baseline for z here)."""
    if baseline != "average":
        raise ValueError(f"baseline={baseline!r} does not apply to LDA's guides (only the default 'average')")
    local = _check_local("mean_field", local, init)
    e = corpus_entries(x)
    k = init.num_topics
    if start == "posterior":
        gamma = _doc_fixed_point(e, init)
        logits = torch.digamma(gamma)[e.doc] + _log_topics(init)[:, e.word].T
    else:
        gamma = init.alpha + e.lengths[:, None] / k
        logits = e.count.new_zeros(e.doc.shape[0], k)
    return MeanField(x, init, gamma, None if local == "cavi" else logits, topic_step, local, doc_tol, max_doc_iters,
                     learning_offset, learning_decay, finish_sweeps, finish_restarts)


def amortised(x, init: LDAParams, hidden: Sequence[int] = (32,), start: str = "uniform",
              baseline: str = "average", refine: int = 0, topic_step: str = "natural", local: str | None = "network",
              doc_tol: float = exact.DOC_TOL, max_doc_iters: int = exact.MAX_DOC_ITERS,
              learning_offset: float = LEARNING_OFFSET, learning_decay: float = LEARNING_DECAY,
              net_lr: float = 1e-3, finish_sweeps: int = 0, finish_restarts: int | None = None) -> Amortised:
    """gamma from an MLP (``hidden`` sizes) on log(1 + x_d); phi by CAVI's update with a learned word
    table U, which starts at E[log beta] of the initial topics. start="posterior" first fits the network
    to CAVI's document fixed point at the initial topics (least squares on the proportions).
    local="network": then ``refine`` differentiable CAVI document updates, the network trained by the
    ELBO's gradient; "cavi": CAVI document updates to convergence from the network's gamma, the network
    fitted to where they converge (its own Adam, ``net_lr``), lambda by the natural step. ``finish_sweeps``,
    ``finish_restarts``: full-corpus CAVI sweeps after SVI, restarts from the network (:meth:`_Topics.finish`)."""
    if baseline != "average":
        raise ValueError(f"baseline={baseline!r} does not apply to LDA's guides (only the default 'average')")
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}")
    local = _check_local("amortised", local, init)
    guide = Amortised(x, init, hidden, _log_topics(init).T, refine, topic_step, local, doc_tol, max_doc_iters,
                      learning_offset, learning_decay, net_lr, finish_sweeps, finish_restarts)
    if start == "posterior":
        e = corpus_entries(x)
        target = _doc_fixed_point(e, init)
        target = (target - init.alpha) / e.lengths[:, None]
        optim = torch.optim.Adam(guide.net.parameters(), lr=0.01)
        every = torch.arange(e.num_docs, device=e.doc.device)
        for _ in range(300):
            props = guide.proportions(e, every)  # the network's part (before refinement)
            loss = ((props - target) ** 2).sum(-1).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
        optim.zero_grad(set_to_none=True)  # leave no gradient behind for the SVI loop to add to
    return guide
