r"""Latent Dirichlet allocation (Blei, Ng & Jordan 2003), on bags of words.

Generative process, for topics k = 1..K, documents d = 1..D, tokens n = 1..N_d, vocabulary v = 1..V::

    beta_k   ~ Dirichlet(eta 1_V)        (topics = "bayesian")   or   beta: (K, V) point parameters
                                          (topics = "point": "the mixture components are fixed")
    theta_d  ~ Dirichlet(alpha)           alpha: (K,)
    z_dn     ~ Categorical(theta_d)
    w_dn     ~ Categorical(beta_{z_dn})

Graphical model::

      eta --> [beta_k] (K topics)
                 |
      alpha --> [theta_d] --> [z_dn] --> (w_dn)
                              tokens N_d
                  docs D

Counts, not tokens. Only the bag of words n: (D, V) is observed, and q(z_dn) may be taken the same for
every token of word v in document d (CAVI's optimum is), so the model scores each non-zero entry (d, v)
once, with its log-probability terms scaled by n_dv: one z site per entry, not per token. The entries
are a flat plate ``words`` (E = number of non-zero counts), each tied to its document by an index.

Plate subsampling: ``subsample_size = B`` draws B documents per step; Pyro scales the ``docs`` plate by
D / B and the model scales the ``words`` plate by the same factor (it is not nested in ``docs``: a
document's entries are a ragged slice), so every step's ELBO estimate is unbiased for the whole corpus.
Peak memory per step then grows with B, not with D. ``subsample`` gives the B documents instead of drawing them
(model and guides alike: a data-parallel process's own documents, experiments/distributed.py).

Tensor shapes (``Trace.format_shapes()``; B documents in the step, E_B of their non-zero entries)::

     Sample Sites:
      topics dist    |                       (bayesian topics only)
        beta dist  K | V
            value  K | V
        docs dist    |
            value  B |
       theta dist  B | K
            value  B | K
       words dist    |
            value E_B|
           z dist E_B|                      value (K, 1) under parallel enumeration of the guide
           w dist E_B|                      obs: the entries' word ids; log_prob (K, E_B) when enumerated

:mod:`models.exact.lda` holds the closed-form CAVI reference and the tiny-corpus enumeration; this module
also holds the evaluation every method shares: document completion and NPMI.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import Tensor, nn
from torch.distributions.utils import clamp_probs

from .datasets import DataOptions, Dataset, corpora
from .distributions import TopicWord
from .errors import DataError
from .exact import lda as exact
from .exact.lda import Entries

TOPICS = ("bayesian", "point")


@dataclass(frozen=True)
class LDAArgs:
    """``[model_args]`` for LDA.

    num_topics: K.
    topics: "bayesian" (beta_k ~ Dir(eta), q(beta_k) = Dir(lambda_k)) or "point" (beta learned as a
        point estimate: variational EM).
    alpha, eta: symmetric Dirichlet priors on each theta_d and each beta_k; unset means 1 / K, as
        scikit-learn's LatentDirichletAllocation.
    init: the topics' start, shared by CAVI and every guide (:func:`models.exact.lda.initial_lambda`):
        "documents" (the default: noise about the mean count plus K seed documents chosen by greedy
        k-means++ seeding on cosine distance) or "random" (the noise alone, scikit-learn's start). From
        the seeds, CAVI's held-out perplexity is lower on each benchmark corpus (mean of 3 seeds,
        docs/models/lda.md), and on the lda_news config the training ELBO of CAVI and of the amortised
        guide is higher on each of 3 seeds.
    """

    num_topics: int = 10
    topics: str = "bayesian"
    alpha: float | None = None
    eta: float | None = None
    init: str = "documents"

    def __post_init__(self) -> None:
        if self.num_topics < 1:
            raise ValueError(f"model_args.num_topics must be >= 1, got {self.num_topics}")
        if self.topics not in TOPICS:
            raise ValueError(f"model_args.topics must be one of {TOPICS}, got {self.topics!r}")
        if self.init not in exact.INITS:
            raise ValueError(f"model_args.init must be one of {exact.INITS}, got {self.init!r}")
        for key in ("alpha", "eta"):
            value = getattr(self, key)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"model_args.{key} must be a finite number > 0, got {value}")
        if self.topics == "point" and self.eta is not None:
            raise ValueError("model_args.eta applies to topics = 'bayesian' only (point topics have no prior)")

    @property
    def alpha_value(self) -> float:
        return self.alpha if self.alpha is not None else 1.0 / self.num_topics

    @property
    def eta_value(self) -> float:
        return self.eta if self.eta is not None else 1.0 / self.num_topics


@dataclass(frozen=True)
class LDAParams:
    """LDA's parameters, and the fitted topics.

    alpha : (K,)     Dirichlet prior of each theta_d (fixed, not learned)
    eta   : float    Dirichlet prior of each beta_k (bayesian topics), else None
    beta  : (K, V)   point topics (rows on the simplex), else None
    lam   : (K, V)   bayesian topics: the fitted q(beta_k) = Dir(lambda_k) (None in the prior model)
    """

    alpha: Tensor
    eta: float | None = None
    beta: Tensor | None = None
    lam: Tensor | None = None

    @property
    def num_topics(self) -> int:
        return self.alpha.shape[0]

    @property
    def bayesian(self) -> bool:
        return self.beta is None

    def topics(self) -> Tensor:
        """(K, V) point estimate of the topics: beta, or E_q[beta] = lambda / sum_v lambda."""
        if self.beta is not None:
            return self.beta
        if self.lam is None:
            raise ValueError("bayesian LDA parameters without a fitted lambda have no topics")
        return self.lam / self.lam.sum(-1, keepdim=True)

    def detach(self) -> "LDAParams":
        return replace(self, **{k: getattr(self, k).detach().clone() for k in ("alpha", "beta", "lam")
                                if getattr(self, k) is not None})

    def state_dict(self) -> dict[str, Tensor]:
        out = {"alpha": self.alpha}
        if self.eta is not None:
            out["eta"] = self.alpha.new_tensor(self.eta)
        out.update({k: getattr(self, k) for k in ("beta", "lam") if getattr(self, k) is not None})
        return out


# ---------------------------------------------------------------------------------------------------
# the model


_ENTRIES: dict[int, tuple[weakref.ref, int, Entries]] = {}


def corpus_entries(x) -> Entries:
    """The non-zero entries of ``x`` (D, V): a dense or sparse (COO, CSR) tensor, or already :class:`Entries`.

    Computed once per count tensor: cached while that very tensor is alive and unmodified (a weak
    reference and its version counter, never just its address)."""
    if isinstance(x, Entries):
        return x
    hit = _ENTRIES.get(id(x))
    if hit is not None and hit[0]() is x and hit[1] == x._version:
        return hit[2]
    for key in [k for k, (ref, _, _) in _ENTRIES.items() if ref() is None]:
        del _ENTRIES[key]
    e = exact.entries(x)
    _ENTRIES[id(x)] = (weakref.ref(x), x._version, e)
    return e


def counts_shape(x) -> tuple[int, int]:
    """(D, V) of a count tensor (dense or sparse) or of its :class:`Entries`."""
    if isinstance(x, Entries):
        return x.num_docs, x.num_words
    return tuple(x.shape)


def doc_rows(x, docs: Tensor) -> Tensor:
    """The dense (B, V) counts of documents ``docs`` (B,): a minibatch, never the corpus, when x is sparse."""
    if isinstance(x, Tensor) and x.layout == torch.strided:
        return x[docs] if docs.shape[0] < x.shape[0] else x
    return corpus_entries(x).rows(docs).dense()


def batch_entries(e: Entries, docs: Tensor, num_docs: int) -> tuple[Tensor, Tensor, Tensor]:
    """For documents ``docs`` (B,) of a corpus of ``num_docs``: their entries' positions (E_B,), the
    position of each entry's document within ``docs`` (E_B,), and each entry's ELBO weight
    n_dv * D / B (E_B,)."""
    if docs.shape[0] == num_docs:  # the whole corpus, in order
        pos = torch.arange(e.doc.shape[0], device=e.doc.device)
        return pos, e.doc, e.count
    pos = e.positions(docs)
    lengths = e.rowptr[docs + 1] - e.rowptr[docs]
    local = torch.repeat_interleave(torch.arange(docs.shape[0], device=docs.device), lengths, output_size=pos.shape[0])
    return pos, local, e.count[pos] * (num_docs / docs.shape[0])


def model(x: Tensor, params: LDAParams, subsample_size: int | None = None, subsample: Tensor | None = None) -> None:
    r"""LDA on counts x: (D, V); ``subsample_size`` documents per step (None: all), or the given documents
    ``subsample`` (B,) (a data-parallel process's, experiments/distributed.py)."""
    e = corpus_entries(x)
    num_docs, vocab = e.num_docs, e.num_words
    dtype = e.count.dtype
    if params.bayesian:
        with pyro.plate("topics", params.num_topics, device=x.device):
            beta = pyro.sample("beta", dist.Dirichlet(e.count.new_full((vocab,), params.eta)))
        log_beta = torch.log(beta.clamp_min(torch.finfo(dtype).tiny))
    else:
        log_beta = torch.log(params.beta)
    with pyro.plate("docs", num_docs, subsample_size=subsample_size, subsample=subsample, device=x.device) as docs:
        theta = pyro.sample("theta", dist.Dirichlet(params.alpha))  # (B, K)
    pos, local, weight = batch_entries(e, docs, num_docs)
    # Categorical(theta[local])'s log-probabilities, formed per document and looked up per entry: under
    # parallel enumeration (z: (K, 1)) torch's Categorical would broadcast to (K, E_B, K) and its gradient
    # allocate that much (588 MB at 1,024 news documents); the lookup's gradient is (B, K)
    log_theta = torch.log(clamp_probs(theta / theta.sum(-1, keepdim=True)))
    with pyro.plate("words", pos.shape[0], device=x.device), poutine.scale(scale=weight):
        z = pyro.sample("z", TopicWord(log_theta, local))  # (E_B,)
        pyro.sample("w", TopicWord(log_beta, z), obs=e.word[pos])


class LDA(PyroModule):
    """The model with its learnable parameters: the point topics (as logits), or none (bayesian)."""

    def __init__(self, init: LDAParams):
        super().__init__()
        self.register_buffer("alpha", init.alpha.detach().clone())
        self.eta = init.eta
        self.beta_logits = None if init.bayesian else nn.Parameter(torch.log(init.beta.detach().clone()))

    @property
    def params(self) -> LDAParams:
        beta = None if self.beta_logits is None else torch.softmax(self.beta_logits, -1)
        return LDAParams(self.alpha, self.eta, beta)

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> None:
        model(x, self.params, subsample_size, subsample)


# ---------------------------------------------------------------------------------------------------
# parameters, simulation, data


def true_params(num_topics: int, vocab_size: int, seed: int, alpha: float = 0.5, dtype=torch.float64) -> LDAParams:
    """Known topics for synthetic corpora: each topic puts 85% of its mass on its own block of
    ~V / K words (Dirichlet(1)-distributed within the block) and 15% spread over the whole vocabulary
    (Dirichlet(1)), so topics overlap and are identifiable up to relabelling."""
    gen = torch.Generator().manual_seed(seed)
    owner = torch.randperm(vocab_size, generator=gen) % num_topics  # word -> the topic that owns it
    own = torch._standard_gamma(torch.ones(num_topics, vocab_size, dtype=torch.float64), generator=gen)
    own = own * (owner[None, :] == torch.arange(num_topics)[:, None])
    spread = torch._standard_gamma(torch.ones(num_topics, vocab_size, dtype=torch.float64), generator=gen)
    beta = 0.85 * own / own.sum(-1, keepdim=True) + 0.15 * spread / spread.sum(-1, keepdim=True)
    return LDAParams(torch.full((num_topics,), alpha, dtype=dtype), beta=beta.to(dtype))


def simulate(params: LDAParams, num_docs: int, doc_length: float, seed: int) -> tuple[Tensor, Tensor]:
    """Draw a corpus: lengths ~ Poisson(doc_length) (at least 1), theta_d ~ Dir(alpha), then tokens.

    Returns counts x: (D, V) and the topic proportions theta: (D, K). Sampling is per document
    (word distribution theta_d beta, the token topics summed out), all documents at once.
    """
    gen = torch.Generator().manual_seed(seed)
    beta = params.topics().to(torch.float64)
    alpha = params.alpha.to(torch.float64)
    gammas = torch._standard_gamma(alpha.expand(num_docs, -1).contiguous(), generator=gen)
    theta = gammas / gammas.sum(-1, keepdim=True)
    lengths = torch.poisson(torch.full((num_docs,), float(doc_length), dtype=torch.float64), generator=gen).clamp_min(1)
    longest = int(lengths.max())
    words = torch.multinomial(theta @ beta, longest, replacement=True, generator=gen)
    keep = (torch.arange(longest) < lengths[:, None]).to(torch.float64)
    x = torch.zeros(num_docs, beta.shape[1], dtype=torch.float64).scatter_add_(1, words, keep)
    return x.to(params.alpha.dtype), theta.to(params.alpha.dtype)


def validate_data(x) -> Tensor:
    """Word counts (D, V): non-negative integers, no empty document; see :func:`models.datasets.corpora.validate_counts`."""
    return corpora.validate_counts(x)


def init_params(x: Tensor, args: LDAArgs, seed: int) -> LDAParams:
    """Starting point shared by CAVI and every guide: lambda from :func:`models.exact.lda.initial_lambda`
    (bayesian; ``args.init``), or point topics equal to its normalised rows."""
    k = args.num_topics
    e = corpus_entries(x)
    alpha = e.count.new_full((k,), args.alpha_value)
    lam = exact.initial_lambda(e, k, args.eta_value, seed, init=args.init)
    if args.topics == "point":
        return LDAParams(alpha, beta=lam / lam.sum(-1, keepdim=True))
    return LDAParams(alpha, eta=args.eta_value, lam=lam)


def synthetic(opts: DataOptions, args: LDAArgs, seed: int) -> Dataset:
    """``opts.num_points`` documents of mean length ``opts.doc_length`` over ``opts.dim`` words, from
    :func:`true_params` with K = ``args.num_topics`` (known truth; theta as ``labels``)."""
    if opts.dim < args.num_topics:
        raise DataError(f"data.dim={opts.dim} words cannot give each of model_args.num_topics={args.num_topics} synthetic "
                        "topics its own block of words: use data.dim >= num_topics")
    truth = true_params(args.num_topics, opts.dim, seed, alpha=args.alpha_value)
    x, theta = simulate(truth, opts.num_points, opts.doc_length, seed + 1)
    desc = f"synthetic LDA corpus (K={args.num_topics}, V={opts.dim}, D={opts.num_points}, mean length {opts.doc_length})"
    return Dataset(x, desc, tuple(f"w{v}" for v in range(opts.dim)), truth=truth, labels=theta)


# ---------------------------------------------------------------------------------------------------
# the reference fit


class CAVIFit(NamedTuple):
    """params: the fitted parameters (lambda, or the point topics); elbo: the ELBO per document at the
    start and after each sweep (never decreasing after the restarted sweeps); converged: stopped by the
    tolerance; doc_iters: the
    mean number of document updates per document in each sweep."""

    params: LDAParams
    elbo: list[float]
    converged: bool
    doc_iters: list[float] = []

    @property
    def num_iters(self) -> int:
        return len(self.elbo) - 1


def fit_cavi(x, init: LDAParams, max_iter: int = 100, tol: float = 1e-8, doc_tol: float = exact.DOC_TOL,
             max_doc_iters: int = exact.MAX_DOC_ITERS, restart_sweeps: int = 10, seed: int = 0) -> CAVIFit:
    """Closed-form CAVI (bayesian topics) or variational EM (point topics) from ``init``; see
    :func:`models.exact.lda.fit_cavi`. ``tol``: stop when a sweep gains less than this per token; each
    sweep iterates every document to ``doc_tol`` (mean absolute change of gamma_d) first; the first
    ``restart_sweeps`` (counted in ``max_iter``) restart every document from scikit-learn's start, Gamma(100,
    1/100) draws seeded by ``seed`` (:func:`models.exact.lda.restart_gamma`), the rest warm-start."""
    k = init.num_topics
    e = corpus_entries(x)
    restarts = min(restart_sweeps, max_iter)
    kw = {"max_sweeps": max_iter - restarts, "doc_tol": doc_tol, "max_doc_iters": max_doc_iters, "tol": tol,
          "restart_sweeps": restarts, "seed": seed}
    if init.bayesian:
        r = exact.fit_cavi(e, init.alpha, k, eta=init.eta, lam=init.lam, **kw)
        params = LDAParams(init.alpha, eta=init.eta, lam=r.state.lam)
    else:
        r = exact.fit_cavi(e, init.alpha, k, beta=init.beta, update_beta=True, **kw)
        params = LDAParams(init.alpha, beta=torch.exp(r.state.log_beta))
    d = e.num_docs
    return CAVIFit(params, [v / d for v in r.elbo], r.converged, list(r.doc_iters))


def closed_form_elbo(x: Tensor, params: LDAParams, gamma: Tensor, phi: Tensor) -> Tensor:
    """The ELBO (summed over documents) of q = Dir(gamma) Cat(phi) [Dir(lambda)], in closed form.

    gamma: (D, K); phi: (E, K) over the non-zero entries of x in row-major order; lambda from params."""
    e = corpus_entries(x)
    if params.bayesian:
        return exact.elbo_entries(e, params.alpha, gamma, phi, None, lam=params.lam, eta=params.eta)
    return exact.elbo_entries(e, params.alpha, gamma, phi, torch.log(params.beta))


# ---------------------------------------------------------------------------------------------------
# evaluation shared by every method (CAVI, each guide, scikit-learn in the benchmark)


def split_halves(x, seed: int) -> tuple[Entries, Entries]:
    """Split each document's tokens at random into an observed half (floor(N_d / 2) tokens) and a
    held-out half (the rest, at least one token). x: (D, V) counts, dense or sparse; returns the two
    halves as :class:`Entries` (use ``.dense()`` for small corpora).

    A bag of words has no order, so "the first half" is a uniformly random half (seeded), the same
    for every method evaluated. The draw depends only on the entries in row-major order, so a dense and
    a sparse copy of one corpus split identically, on any device (the draw is made on the CPU)."""
    e = corpus_entries(x)
    gen = torch.Generator().manual_seed(seed)
    n = e.count.long()
    device = e.doc.device
    tok_entry = torch.repeat_interleave(torch.arange(e.doc.shape[0], device=device), n)
    tok_doc = e.doc[tok_entry]
    order = torch.argsort(torch.rand(tok_doc.shape[0], generator=gen, dtype=torch.float64, device="cpu").to(device))
    order = order[torch.argsort(tok_doc[order], stable=True)]  # grouped by document, random within
    tok_doc, tok_entry = tok_doc[order], tok_entry[order]
    lengths = torch.bincount(tok_doc, minlength=e.num_docs)
    start = torch.cumsum(lengths, 0) - lengths
    rank = torch.arange(tok_doc.shape[0], device=device) - start[tok_doc]
    first = rank < (lengths // 2)[tok_doc]
    halves = []
    for mask in (first, ~first):
        count = torch.zeros_like(e.count).index_add_(0, tok_entry[mask], e.count.new_ones(int(mask.sum())))
        keep = count > 0
        rowptr = torch.zeros_like(e.rowptr)
        rowptr[1:] = torch.cumsum(torch.bincount(e.doc[keep], minlength=e.num_docs), 0)
        halves.append(Entries(e.doc[keep], e.word[keep], count[keep], rowptr, e.num_words))
    return halves[0], halves[1]


def document_completion(x, topics: Tensor, alpha: Tensor, seed: int = 0) -> dict[str, float]:
    r"""Held-out per-word perplexity by document completion (Wallach et al. 2009), topics fixed.

    For each document of x: (D, V) (dense or sparse), split its tokens (:func:`split_halves`); infer
    q(theta_d) = Dir(gamma_d) on the observed half by CAVI with the topics: (K, V) fixed, every document
    iterated to convergence (mean change of gamma_d < 1e-4); score the held-out half with the
    posterior-mean proportions, log p(w) = sum_v n_dv log sum_k E[theta_dk] beta_kv; report
    perplexity = exp(-log p / number of held-out tokens). Touches only the non-zero entries.
    """
    observed, held = split_halves(x, seed)
    topics = topics.to(held.count.dtype)
    gamma = exact.fixed_topics_gamma(observed, alpha.to(topics.dtype), torch.log(topics), tol=1e-4, max_iters=1000)
    mean = gamma / gamma.sum(-1, keepdim=True)
    log_p = (held.count * torch.log((mean[held.doc] * topics[:, held.word].T).sum(-1))).sum()
    tokens = float(held.count.sum())
    return {"perplexity": math.exp(-float(log_p) / tokens), "log_lik_per_token": float(log_p) / tokens,
            "heldout_tokens": tokens}


def npmi(x, topics: Tensor, num_words: int = 10) -> Tensor:
    r"""Each topic's coherence: the mean NPMI of its top ``num_words`` words over all pairs (K,).

    NPMI(i, j) = log(p(i, j) / (p(i) p(j))) / -log p(i, j), with p the fraction of documents of
    x: (D, V) (dense or sparse) that contain the word(s) (Bouma 2009; Lau et al. 2014); -1 for pairs
    never seen together. Only the top words' columns are made dense: (D, K num_words).
    """
    e = corpus_entries(x)
    k, n = topics.shape[0], min(num_words, topics.shape[1])
    top = torch.argsort(topics, dim=1, descending=True, stable=True)[:, :n]  # (K, n)
    column = torch.full((e.num_words,), -1, dtype=torch.long, device=e.word.device)
    words = torch.unique(top).to(e.word.device)
    column[words] = torch.arange(words.shape[0], device=e.word.device)
    hit = column[e.word] >= 0
    present = torch.zeros(e.num_docs, words.shape[0], dtype=torch.float64, device=e.word.device)
    present[e.doc[hit], column[e.word[hit]]] = 1.0
    sub = present[:, column[top.reshape(-1).to(e.word.device)]].reshape(e.num_docs, k, n)
    joint = torch.einsum("dki,dkj->kij", sub, sub) / e.num_docs  # (K, n, n)
    p = torch.diagonal(joint, dim1=-2, dim2=-1)  # (K, n)
    pmi = torch.log(joint) - torch.log(p[:, :, None] * p[:, None, :])
    score = torch.where(joint > 0, pmi / -torch.log(joint).clamp_max(-1e-12), torch.full_like(pmi, -1.0))
    pairs = torch.triu(torch.ones(n, n, dtype=torch.bool, device=score.device), diagonal=1)
    return score[:, pairs].mean(-1) if n > 1 else score.new_zeros(k)


def stack_entries(*parts) -> Entries:
    """The documents of several corpora (dense, sparse or :class:`Entries`, one vocabulary), one after another."""
    es = [corpus_entries(p) for p in parts]
    device = es[0].doc.device
    offsets = torch.cumsum(torch.tensor([0] + [e.num_docs for e in es], device=device), 0)       # documents before each part
    starts = torch.cumsum(torch.tensor([0] + [e.count.shape[0] for e in es], device=device), 0)  # entries before each part
    rowptr = torch.cat([es[0].rowptr[:1]] + [e.rowptr[1:] + starts[i] for i, e in enumerate(es)])
    return Entries(torch.cat([e.doc + offsets[i] for i, e in enumerate(es)]), torch.cat([e.word for e in es]),
                   torch.cat([e.count for e in es]), rowptr, es[0].num_words)


def topic_usage(x, fitted: LDAParams) -> dict[str, object]:
    """Whether all K topics are in use: each topic's share of the corpus's tokens under q (sum_dv n_dv
    phi_dvk / N, from CAVI's document step with the topics fixed: (K,)), and the largest cosine
    similarity between two topics' word distributions (1.0: a duplicated topic)."""
    e = corpus_entries(x)
    topics = fitted.topics().detach().to(e.count.dtype)
    alpha = fitted.alpha.detach().to(topics.dtype)
    k = topics.shape[0]
    gamma = exact.fixed_topics_gamma(e, alpha, torch.log(topics))
    share = (gamma - alpha).sum(0) / e.count.sum()
    unit = topics / topics.norm(dim=-1, keepdim=True)
    cos = unit @ unit.T - 2 * torch.eye(k, dtype=topics.dtype, device=topics.device)
    return {"topic_shares": [float(v) for v in share], "min_share": float(share.min()),
            "max_cosine": float(cos.max()) if k > 1 else 0.0}


def heldout_metrics(x_train, x_test, fitted: LDAParams, seed: int, **_options) -> dict[str, float]:
    """Document-completion perplexity on x_test and mean NPMI (top 10 words) over the whole corpus
    (x_train and x_test dense or sparse)."""
    topics = fitted.topics().detach()
    out = document_completion(x_test, topics, fitted.alpha.detach(), seed)
    out["npmi"] = float(npmi(stack_entries(x_train, x_test), topics).mean())
    return out


def describe_fit(fits: dict[str, LDAParams], features: tuple[str, ...], num_words: int = 10) -> str:
    """Markdown: for each method, each topic's top words (by E[beta_kv] or beta_kv)."""
    out = []
    for name, p in fits.items():
        topics = p.topics()
        words = corpora.top_words(topics, features, num_words)
        rows = [f"| {k} | " + ", ".join(w) + " |" for k, w in enumerate(words)]
        out.append(f"### {name}: top words of each topic\n\n| topic | top words |\n|---|---|\n" + "\n".join(rows))
    return "\n\n".join(out)
