r"""Closed-form coordinate ascent (CAVI) for LDA, and exact enumeration on tiny corpora; plain torch.

Model (Blei, Ng & Jordan 2003), documents d = 1..D as word counts n: (D, V), topics k = 1..K::

    theta_d ~ Dir(alpha);   z_dn ~ Cat(theta_d);   w_dn ~ Cat(beta_{z_dn})
    beta_k ~ Dir(eta)  (the Bayesian variant)   or   beta: (K, V) point parameters (fixed topics)

Mean-field family: q(theta_d) = Dir(gamma_d), q(z_dn) = Cat(phi_dn), q(beta_k) = Dir(lambda_k). Every
token of word v in document d shares one phi_dv (its update depends only on (d, v)), so counts stand in
for tokens and repeated words cost once. The updates (the lecture notes' seed):

    phi_dvk   ∝ exp(E[log theta_dk] + E[log beta_kv])
    gamma_dk  = alpha_k + sum_v n_dv phi_dvk
    lambda_kv = eta + sum_d n_dv phi_dvk
    E[log theta_dk] = digamma(gamma_dk) - digamma(sum_k gamma_dk)
    E[log beta_kv]  = digamma(lambda_kv) - digamma(sum_v lambda_kv)      (log beta_kv for fixed topics)

phi is never stored: with a_dk = exp E[log theta_dk] and b_kv = exp E[log beta_kv], the normaliser is
Z_dv = (a b)_dv and sum_v n_dv phi_dvk = a_dk ((n / Z) b^T)_dk, all (D, K) and (K, V) products. At the
optimal phi for the current gamma and lambda, the ELBO's token terms collapse to sum_dv n_dv log Z_dv:

    ELBO = sum_dv n_dv log Z_dv
         + sum_d [log Γ(Σα) - Σ_k log Γ(α_k) + Σ_k (α_k - γ_dk) E log θ_dk + Σ_k log Γ(γ_dk) - log Γ(Σ_k γ_dk)]
         + sum_k [log Γ(Vη) - V log Γ(η) + Σ_v (η - λ_kv) E log β_kv + Σ_v log Γ(λ_kv) - log Γ(Σ_v λ_kv)]
           (the last line only in the Bayesian variant)

and each update (phi, then gamma, ... then lambda) maximises it in its block, so it never decreases.
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from . import em


def _expected_log_dirichlet(conc: Tensor) -> Tensor:
    """E[log x] under Dir(conc), along the last dimension."""
    return torch.digamma(conc) - torch.digamma(conc.sum(-1, keepdim=True))


def _log_dirichlet_norm(conc: Tensor) -> Tensor:
    """log Γ(Σ conc) - Σ log Γ(conc), along the last dimension."""
    return torch.lgamma(conc.sum(-1)) - torch.lgamma(conc).sum(-1)


class CAVIState(NamedTuple):
    """gamma: (D, K) Dirichlet parameters of q(theta_d); lam: (K, V) of q(beta_k), or None with fixed
    topics; log_beta: (K, V) E[log beta] (the fixed topics' log beta)."""

    gamma: Tensor
    lam: Tensor | None
    log_beta: Tensor


def _topic_terms(lam: Tensor | None, beta: Tensor | None) -> Tensor:
    return _expected_log_dirichlet(lam) if lam is not None else torch.log(beta)


def _scaled_exp(log_values: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """exp(log_values - shift) and the shift (the max along ``dim``): no overflow, no underflow to 0 rows."""
    shift = log_values.max(dim, keepdim=True).values
    return torch.exp(log_values - shift), shift


def elbo(counts, alpha: Tensor, state: CAVIState, eta: float | None = None) -> Tensor:
    """The ELBO (summed over documents) at the optimal phi for ``state``'s gamma and lambda: a scalar.

    counts: (D, V) dense or sparse, or its :class:`Entries`; only the non-zero entries are touched."""
    e = entries(counts)
    e_log_theta = _expected_log_dirichlet(state.gamma)  # (D, K)
    tokens = (e.count * _log_normaliser(e, e_log_theta, state.log_beta)).sum()
    doc = (_log_dirichlet_norm(alpha) - _log_dirichlet_norm(state.gamma)
           + ((alpha - state.gamma) * e_log_theta).sum(-1)).sum()
    out = tokens + doc
    if state.lam is not None:
        out = out + _topic_elbo(state.lam, state.log_beta, eta)
    return out


def _topic_elbo(lam: Tensor, e_log_beta: Tensor, eta: float) -> Tensor:
    eta_t = lam.new_full((lam.shape[-1],), float(eta))
    return (_log_dirichlet_norm(eta_t) - _log_dirichlet_norm(lam) + ((eta - lam) * e_log_beta).sum(-1)).sum()


def _log_normaliser(e: "Entries", e_log_theta: Tensor, log_beta: Tensor) -> Tensor:
    """log Z_dv = log sum_k exp(E log theta_dk + E log beta_kv) for every entry: (E,)."""
    a, shift_t = _scaled_exp(e_log_theta, -1)   # (D, K), (D, 1)
    b, shift_b = _scaled_exp(log_beta, 0)       # (K, V), (1, V)
    if a.requires_grad or b.requires_grad:      # differentiable: (E, K) gathers
        z = (a[e.doc] * b[:, e.word].T).sum(-1)
    else:                                       # a sampled product on the counts' pattern: nothing (E, K)
        z = _sampled_products(e.rowptr, e.word, a, b)
    return torch.log(z) + shift_t[e.doc, 0] + shift_b[0, e.word]


class Entries(NamedTuple):
    r"""A count matrix (D, V) as its non-zero entries, in row-major order (documents, then words).

    doc, word: (E,) long indices of the E non-zero entries; count: (E,) their counts n_dv;
    rowptr: (D + 1,) long, the entries of document d are ``rowptr[d]:rowptr[d + 1]`` (CSR layout);
    num_words: V. Every token of word v in document d shares one q(z) (phi_dv), so entries stand in for
    tokens; nothing here is (D, V), so memory grows with E.
    """

    doc: Tensor
    word: Tensor
    count: Tensor
    rowptr: Tensor
    num_words: int = -1

    @property
    def num_docs(self) -> int:
        return self.rowptr.shape[0] - 1

    @property
    def lengths(self) -> Tensor:
        """N_d: (D,) the number of tokens of each document."""
        return self.count.new_zeros(self.num_docs).index_add_(0, self.doc, self.count)

    def positions(self, docs: Tensor) -> Tensor:
        """The entry positions (E_b,) of documents ``docs`` (B,) in that order, each document's words
        ascending: the same order as :func:`entries` of ``counts[docs]``."""
        starts = self.rowptr[docs]
        lengths = self.rowptr[docs + 1] - starts
        offsets = torch.cumsum(lengths, 0) - lengths
        total = int(lengths.sum())
        return torch.repeat_interleave(starts - offsets, lengths, output_size=total) + torch.arange(total, device=docs.device)

    def rows(self, docs: Tensor) -> "Entries":
        """The entries of documents ``docs`` (B,), as a corpus of B documents (``counts[docs]``)."""
        pos = self.positions(docs)
        lengths = self.rowptr[docs + 1] - self.rowptr[docs]
        rowptr = lengths.new_zeros(docs.shape[0] + 1)
        rowptr[1:] = torch.cumsum(lengths, 0)
        doc = torch.repeat_interleave(torch.arange(docs.shape[0], device=docs.device), lengths, output_size=pos.shape[0])
        return Entries(doc, self.word[pos], self.count[pos], rowptr, self.num_words)

    def dense(self) -> Tensor:
        """The (D, V) count matrix (for small corpora and minibatches only)."""
        out = self.count.new_zeros(self.num_docs, self.num_words)
        out[self.doc, self.word] = self.count
        return out

    def sparse(self) -> Tensor:
        """The counts as a torch sparse CSR tensor (D, V)."""
        return torch.sparse_csr_tensor(self.rowptr, self.word, self.count, (self.num_docs, self.num_words),
                                       check_invariants=False)  # built from valid entries


def entries(counts) -> Entries:
    """The non-zero entries of counts: (D, V), row-major; counts dense, sparse (COO or CSR) or already Entries."""
    if isinstance(counts, Entries):
        return counts
    d, v = counts.shape
    if counts.layout == torch.sparse_csr:
        rowptr, word, count = counts.crow_indices().long(), counts.col_indices().long(), counts.values()
        keep = count != 0
        if not bool(keep.all()):  # explicit zeros
            return entries(counts.to_sparse_coo())
        doc = torch.repeat_interleave(torch.arange(d, device=rowptr.device), rowptr[1:] - rowptr[:-1], output_size=word.shape[0])
        return Entries(doc, word, count, rowptr, v)
    if counts.layout == torch.sparse_coo:
        c = counts.coalesce()
        keep = c.values() != 0
        doc, word, count = c.indices()[0][keep], c.indices()[1][keep], c.values()[keep]
    else:
        doc, word = counts.nonzero(as_tuple=True)
        count = counts[doc, word]
    rowptr = torch.zeros(d + 1, dtype=torch.long, device=doc.device)
    rowptr[1:] = torch.cumsum(torch.bincount(doc, minlength=d), 0)
    return Entries(doc, word, count, rowptr, v)


def elbo_entries(e: Entries, alpha: Tensor, gamma: Tensor, phi: Tensor, log_beta: Tensor,
                 lam: Tensor | None = None, eta: float | None = None) -> Tensor:
    r"""The ELBO of any mean-field q (summed over documents), in closed form; a scalar.

    e: the corpus's entries; gamma: (D, K); phi: (E, K), q(z) of each entry's tokens (rows sum to 1);
    log_beta: (K, V) the point topics' log beta, or with ``lam``: (K, V) and ``eta`` the Bayesian
    topics (log_beta is then ignored and E[log beta] used).

        ELBO = sum_e n_e sum_k phi_ek (E log theta_{d_e k} + E log beta_{k w_e} - log phi_ek)
             + sum_d [log B(alpha) terms, as in :func:`elbo`] (+ the topics' terms)
    """
    e_log_theta = _expected_log_dirichlet(gamma)
    if lam is not None:
        log_beta = _expected_log_dirichlet(lam)
    inner = e_log_theta[e.doc] + log_beta[:, e.word].T  # (E, K)
    expected = torch.where(phi > 0, phi * inner, torch.zeros_like(inner)).sum(-1) - torch.special.xlogy(phi, phi).sum(-1)
    tokens = (e.count * expected).sum()
    out = tokens + (_log_dirichlet_norm(alpha) - _log_dirichlet_norm(gamma) + ((alpha - gamma) * e_log_theta).sum(-1)).sum()
    if lam is not None:
        out = out + _topic_elbo(lam, log_beta, eta)
    return out


# ---------------------------------------------------------------------------------------------------
# the document step, converged per document


DOC_TOL, MAX_DOC_ITERS = 1e-3, 100  # scikit-learn's mean_change_tol and max_doc_update_iter


class DocStep(NamedTuple):
    """The E-step's result. gamma: (D, K); topic_stats: sum_d n_dv phi_dvk: (K, V) at the last phi
    (or None when not asked for); iters: (D,) the document updates each document took; log_z: (E,)
    log Z_dv at the returned gamma (the ELBO's token term is sum_e n_e log Z_e)."""

    gamma: Tensor
    topic_stats: Tensor | None
    iters: Tensor
    log_z: Tensor


def _csr(rowptr: Tensor, word: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A torch sparse CSR matrix on given (already valid) indices: no checks, no beta-state warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        return torch.sparse_csr_tensor(rowptr, word, values, shape, check_invariants=False)


def _sampled_products(rowptr: Tensor, word: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Z_e = sum_k a_{d_e k} b_{k w_e} for the entries of a CSR pattern: (E,), never the (D, V) product."""
    pattern = _csr(rowptr, word, a.new_ones(word.shape[0]), (a.shape[0], b.shape[1]))
    return torch.sparse.sampled_addmm(pattern, a, b, beta=0.0).values()


BLOCK_ENTRIES = 1 << 14  # padded entries per block of documents: x K float64 = 2.5 MB at K = 20, cache-sized
DROP_FRACTION = 0.125    # a block drops its stopped documents once they are this share of its working set
HAND_BACK = 0.125        # and hands its moving documents back, to be re-blocked, below this share of its start


def _length_blocks(lengths: Tensor, budget: int) -> list[Tensor]:
    """Documents (indices, by ascending length) cut into consecutive blocks of at most ``budget`` padded
    entries (block size times its longest document; a longer document is a block of its own)."""
    order = torch.argsort(lengths.cpu(), stable=True)
    sizes = lengths.cpu()[order].tolist()
    blocks, start = [], 0
    for i, size in enumerate(sizes):
        if i > start and (i - start + 1) * max(size, 1) > budget:
            blocks.append(order[start:i])
            start = i
    if start < len(sizes):
        blocks.append(order[start:])
    return [block.to(lengths.device) for block in blocks]


def _padded(e: Entries, docs: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The entries of documents ``docs`` (n,) padded to the longest, L: counts (n, L, 1) (0 in the padding)
    and the columns of b: (K, V) at their words, b_cols: (n, L, K) (the padding repeats a real word's
    column, so every Z > 0 and the padding's n / Z = 0)."""
    starts, lengths = e.rowptr[docs], e.rowptr[docs + 1] - e.rowptr[docs]
    steps = torch.arange(int(lengths.max()), device=docs.device)
    inside = steps[None, :] < lengths[:, None]                                  # (n, L)
    pos = torch.where(inside, starts[:, None] + steps[None, :], 0)
    count = torch.where(inside, e.count[pos], e.count.new_zeros(()))
    return count[:, :, None], b.T[e.word[pos]]


def _block_updates(count: Tensor, b_cols: Tensor, alpha: Tensor, gamma: Tensor, iters: Tensor, tol: float,
                   max_iters: int) -> tuple[Tensor, Tensor, Tensor]:
    """Document updates for one block, each document until it stops: gamma (n, K), the updates each
    document has had (n,), counting ``iters``, those it came with, and which documents still move (n,).
    count: (n, L, 1), b_cols: (n, L, K) from :func:`_padded`. A document stops when its mean absolute
    change is below ``tol`` or after ``max_iters`` updates in all; stopped documents are frozen, and
    dropped from the working set once they are ``DROP_FRACTION`` of it. Once fewer than ``HAND_BACK``
    of the block's documents move (and at least 8 did), the block returns: the caller re-blocks the
    stragglers of all blocks together, so a few slow documents never run a block's loop alone."""
    n = gamma.shape[0]
    out, iters = gamma.clone(), iters.clone()
    moving_out = torch.zeros(n, dtype=torch.bool, device=gamma.device)
    rows = torch.arange(n, device=gamma.device)     # the working set's rows of out
    g, live = gamma, iters < max_iters
    while bool(live.any()):
        a, _ = _scaled_exp(_expected_log_dirichlet(g), -1)                     # (m, K)
        z = torch.bmm(b_cols, a[:, :, None])                                    # (m, L, 1): Z_dv
        new = alpha + a * torch.bmm((count / z).transpose(1, 2), b_cols)[:, 0]
        moving = (new - g).abs().mean(-1) >= tol
        g = torch.where(live[:, None], new, g)
        iters[rows] += live
        live = live & moving & (iters[rows] < max_iters)
        num_live = int(live.sum())
        if n >= 8 and num_live < HAND_BACK * n:
            moving_out[rows] = live
            break
        if DROP_FRACTION * live.shape[0] <= live.shape[0] - num_live:    # drop the stopped documents
            out[rows] = g
            rows, g, count, b_cols = rows[live], g[live], count[live], b_cols[live]
            live = live[live]
    out[rows] = g
    return out, iters, moving_out


def doc_step(e: Entries, alpha: Tensor, log_beta: Tensor, gamma: Tensor, tol: float = DOC_TOL,
             max_iters: int = MAX_DOC_ITERS, topic_stats: bool = True,
             block_entries: int = BLOCK_ENTRIES) -> DocStep:
    r"""CAVI's local updates, each document iterated to its own convergence.

    With a_dk = exp E[log theta_dk] and b_kv = exp E[log beta_kv] (log_beta: (K, V), fixed here), the
    optimal phi_dvk = a_dk b_kv / Z_dv, Z_dv = sum_k a_dk b_kv, so one document update is

        gamma_dk <- alpha_k + a_dk sum_v (n_dv / Z_dv) b_kv

    on the document's non-zero entries only. Document d stops when the mean absolute change of gamma_d
    falls below ``tol`` or after ``max_iters`` updates (scikit-learn's and gensim's rule). Each update
    maximises the ELBO in (phi_d, gamma_d), so the ELBO never decreases, from any start ``gamma``:
    (D, K) (warm starts are the caller's choice). a and b are rescaled (per document, per word) before
    the exponential; the scales cancel in phi.

    Layout (scikit-learn's loop order, batched): the documents, sorted by length, are cut into blocks
    of at most ``block_entries`` padded entries; a block's columns of b are gathered once,
    b_cols: (n, L, K), and the block iterated with two batched products per update, Z = b_cols a and
    (n / Z) b_cols, on data that stays in cache, until its documents stop (the last few slow ones are
    re-blocked with the other blocks' and carry on from where they were: the same updates, fewer loops).
    Memory: one block, O(block_entries K), beside O(E) for the counts and Z; never (D, V).
    """
    num_docs, k = gamma.shape
    b, shift_b = _scaled_exp(log_beta, 0)              # (K, V): each word's column scaled to max 1
    gamma = gamma.clone()
    iters = torch.zeros(num_docs, dtype=torch.long, device=gamma.device)
    lengths = e.rowptr[1:] - e.rowptr[:-1]
    pending = torch.arange(num_docs, device=gamma.device)
    while pending.shape[0] and max_iters > 0:  # rounds: every block, then the stragglers of all, re-blocked
        stragglers = []
        for block in _length_blocks(lengths[pending], block_entries):
            docs = pending[block]
            count, b_cols = _padded(e, docs, b)
            gamma[docs], iters[docs], moving = _block_updates(count, b_cols, alpha, gamma[docs], iters[docs], tol, max_iters)
            stragglers.append(docs[moving])
        pending = torch.cat(stragglers)
    # phi at the final gamma, for the topics' statistics and the ELBO
    a, shift_t = _scaled_exp(_expected_log_dirichlet(gamma), -1)
    z = _sampled_products(e.rowptr, e.word, a, b)
    log_z = torch.log(z) + shift_t[e.doc, 0] + shift_b[0, e.word]
    stats = None
    if topic_stats:  # sum_d n_dv phi_dvk = b_kv sum_d a_dk n_dv / Z_dv: (K, V)
        stats = _transposed_product(e, e.count / z, a).T * b
    return DocStep(gamma, stats, iters, log_z)


def _transposed_product(e: Entries, values: Tensor, a: Tensor) -> Tensor:
    """R^T a: (V, K) for the sparse R: (D, V) with ``values`` at the entries of e, and a: (D, K)."""
    r_t = torch.sparse_coo_tensor(torch.stack([e.word, e.doc]), values, (e.num_words, e.num_docs), check_invariants=False)
    return torch.sparse.mm(r_t, a)


def fixed_topics_gamma(counts, alpha: Tensor, log_beta: Tensor, tol: float = DOC_TOL,
                       max_iters: int = MAX_DOC_ITERS) -> Tensor:
    """q(theta_d) = Dir(gamma_d): (D, K) for fixed topics (log_beta: (K, V)), converged per document from
    CAVI's start gamma = alpha + N_d / K."""
    e = entries(counts)
    k = log_beta.shape[0]
    gamma = alpha + (e.lengths[:, None] / k).expand(-1, k)
    return doc_step(e, alpha, log_beta, gamma, tol, max_iters, topic_stats=False).gamma


class CAVIResult(NamedTuple):
    """state: the fitted variational parameters; elbo: the ELBO after each sweep (first: at the start);
    converged: the tolerance stopped it (False: it ran all ``max_sweeps``); doc_iters: the mean number
    of document updates per document in each sweep."""

    state: CAVIState
    elbo: list[float]
    converged: bool = False
    doc_iters: tuple[float, ...] | list[float] = ()


INITS = ("random", "documents")
DOCUMENT_WEIGHT = 0.1  # init="documents": the share of the corpus's tokens put on the seed documents


def initial_lambda(counts, num_topics: int, eta: float, seed: int, init: str = "random",
                   document_weight: float = DOCUMENT_WEIGHT) -> Tensor:
    """A starting lambda: (K, V), from a seeded generator (drawn on the CPU and moved to the counts'
    device: the same start on every device).

    init="random": eta + Gamma(100, 1/100) noise times the mean count per topic and word (the usual
    symmetric-breaking start, as in Hoffman et al.'s online LDA and scikit-learn).
    init="documents": that start plus, for topic k, ``document_weight`` N / K tokens spread as seed
    document d_k's words (N the corpus's tokens), the K seed documents chosen by greedy k-means++ seeding
    (Arthur & Vassilvitskii, 2007; scikit-learn's greedy variant) on the documents' word distributions
    with cosine distance (:func:`seed_documents`): a data-driven start that puts topics apart from the
    first sweep."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    gen = torch.Generator().manual_seed(seed)
    e = entries(counts)
    v = e.num_words
    noise = torch._standard_gamma(torch.full((num_topics, v), 100.0, dtype=torch.float64, device="cpu"), generator=gen) / 100.0
    tokens = float(e.count.sum())
    lam = eta + noise.to(e.count.device) * tokens / (num_topics * v)
    if init == "documents":
        freq = (e.count / e.lengths[e.doc]).to(torch.float64)       # (E,): each document's word distribution
        seeds = _document_rows(e, freq, seed_documents(e, freq, num_topics, gen)).to(lam.dtype)
        lam = lam + document_weight * tokens / num_topics * seeds
    return lam.to(e.count.dtype)


def _document_rows(e: Entries, values: Tensor, docs: Tensor) -> Tensor:
    """(B, V): the dense rows of per-entry ``values`` (E,) for documents ``docs`` (B,), in that order."""
    rows = e.rows(docs)
    return values.new_zeros(docs.shape[0], e.num_words).index_put_((rows.doc, rows.word), values[e.positions(docs)])


def seed_documents(e: Entries, freq: Tensor, num: int, generator: torch.Generator, trials: int | None = None) -> Tensor:
    """``num`` documents (indices: (num,)) by greedy k-means++ seeding on cosine distance (Arthur &
    Vassilvitskii, 2007; the greedy variant is scikit-learn's ``kmeans_plusplus``): the first uniformly
    among non-empty documents; for each next one, ``trials`` candidates (default 2 + floor(ln num), as
    scikit-learn) drawn with probability proportional to the square of their distance to the nearest
    already chosen (1 - cosine of the word distributions ``freq``: (E,)), and of those the one that leaves
    the smallest potential (the sum of squared distances to the nearest chosen). ``trials = 1`` is plain
    D^2 sampling. Draws on the CPU from ``generator``; one sparse product per pick, O(E + (D + V) trials)
    memory (float64 ``freq``). Where every non-empty document is as close as 0 to a chosen one (fewer
    distinct documents than ``num``), the next candidates are drawn uniformly among the non-empty ones."""
    trials = 2 + int(math.log(num)) if trials is None else int(trials)
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    d = e.num_docs
    weights = _csr(e.rowptr, e.word, freq, (d, e.num_words))
    norms = freq.new_zeros(d).index_add_(0, e.doc, freq ** 2).sqrt()
    nonempty = (norms > 0).to(freq.dtype)
    if not bool(nonempty.any()):
        raise ValueError("the corpus has no tokens: there is no document to seed a topic with")
    safe_norms = torch.where(norms > 0, norms, 1.0)
    dist = nonempty.clone()                                         # empty documents: never drawn
    chosen: list[int] = []
    for _ in range(num):
        p = dist ** 2 if chosen else nonempty
        if not bool((p > 0).any()):
            p = nonempty
        tries = trials if chosen else 1
        cands = torch.multinomial((p / p.sum()).cpu(), tries, replacement=True, generator=generator).to(e.doc.device)
        cols = _document_rows(e, freq, cands).T.contiguous()       # (V, T): each candidate's word distribution
        cosine = (weights @ cols) / (safe_norms[:, None] * norms[cands])           # (D, T)
        after = torch.minimum(dist[:, None], (1 - cosine).clamp_min(0) * nonempty[:, None])
        best = int((after ** 2).sum(0).argmin())                     # the first of the smallest potentials
        chosen.append(int(cands[best]))
        dist = after[:, best].contiguous()
    return torch.tensor(chosen, device=e.doc.device)


RESTART_SEED_OFFSET = 0x5EED  # the restarts' generator: seed + this, a stream apart from initial_lambda's


def restart_gamma(num_docs: int, num_topics: int, like: Tensor, generator: torch.Generator) -> Tensor:
    """A restarted sweep's start, scikit-learn's batch E-step's: gamma_dk ~ Gamma(100, 1/100) (mean 1,
    sd 0.1): (D, K), drawn on the CPU from ``generator`` and moved to ``like``'s device and dtype. Exactly
    gamma = 1 is a fixed point of a short document's updates whenever its words weigh the topics alike
    (every topic's update is the same); the jitter lets it leave. On the health tweets (about 7 words
    each), 30 restarted sweeps from scikit-learn's initial lambda reach a held-out perplexity of 2,996
    from gamma = 1 and scikit-learn's own 2,859.7 from these draws (its generator's)."""
    shape = torch.full((num_docs, num_topics), 100.0, dtype=torch.float64, device="cpu")
    return (torch._standard_gamma(shape, generator=generator) / 100.0).to(device=like.device, dtype=like.dtype)


def fit_cavi(
    counts,
    alpha: Tensor,
    num_topics: int,
    eta: float | None = None,
    beta: Tensor | None = None,
    lam: Tensor | None = None,
    update_beta: bool = False,
    max_sweeps: int = 100,
    doc_tol: float = DOC_TOL,
    max_doc_iters: int = MAX_DOC_ITERS,
    tol: float = 1e-8,
    seed: int = 0,
    restart_sweeps: int = 0,
) -> CAVIResult:
    """CAVI for LDA on counts: (D, V) (dense, sparse, or :class:`Entries`), alpha: (K,).

    Bayesian topics: pass ``eta``; lambda starts at ``lam`` or :func:`initial_lambda` (seeded).
    Point topics: pass ``beta``: (K, V); with ``update_beta`` each sweep ends with the closed-form M-step
    beta_kv ∝ sum_d n_dv phi_dvk (variational EM), otherwise beta stays fixed. Each sweep is
    :func:`doc_step` (every document iterated to ``doc_tol``, at most ``max_doc_iters`` updates, warm
    started from the previous sweep's gamma), then the topic update lambda = eta + sum_d n_dv phi_dvk;
    stops when a sweep gains less than ``tol`` per token (:func:`models.exact.em.iterate`, rule "gain": a
    sweep that lowers the ELBO also stops it, and warns). Memory: O(E K + K V), never (D, V).

    ``restart_sweeps``: the first sweeps restart every document from fresh Gamma(100, 1/100) draws
    (:func:`restart_gamma`, scikit-learn's start; generator seeded by ``seed`` + ``RESTART_SEED_OFFSET``)
    instead of warm-starting. Warm starts from the first sweeps
    lock documents into the topics of the random start (on the news corpus, 30 warm sweeps end at a
    held-out perplexity 14% worse than 10 restarted sweeps followed by 20 warm ones). A restarted sweep
    may lower the ELBO (each document goes to the optimum its fresh start reaches), so the monotone
    loop, and the count of ``max_sweeps``, begin after them; their ELBOs head the trace.
    """
    if (eta is None) == (beta is None):
        raise ValueError("pass exactly one of eta (Bayesian topics) or beta (fixed topics)")
    e = entries(counts)
    d = e.num_docs
    if eta is not None and lam is None:
        lam = initial_lambda(e, num_topics, eta, seed)
    log_beta = _topic_terms(lam, beta)
    gamma = alpha + (e.lengths[:, None] / num_topics).expand(d, num_topics)
    state = CAVIState(gamma.clone(), lam, log_beta)
    doc_iters: list[float] = []
    restarts = torch.Generator().manual_seed(seed + RESTART_SEED_OFFSET)

    def sweep(state: CAVIState, restart: bool = False) -> tuple[CAVIState, float]:
        gamma, lam, log_beta = state
        start = restart_gamma(d, num_topics, gamma, restarts) if restart else gamma
        step = doc_step(e, alpha, log_beta, start, doc_tol, max_doc_iters, topic_stats=lam is not None or update_beta)
        doc_iters.append(float(step.iters.double().mean()))
        gamma = step.gamma
        if lam is not None:
            lam = eta + step.topic_stats
            log_beta = _topic_terms(lam, None)
        elif update_beta:
            log_beta = torch.log(step.topic_stats) - torch.log(step.topic_stats.sum(-1, keepdim=True))
        state = CAVIState(gamma, lam, log_beta)
        return state, float(elbo(e, alpha, state, eta))

    head = [float(elbo(e, alpha, state, eta))]
    for _ in range(restart_sweeps):
        state, value = sweep(state, restart=True)
        head.append(value)
    run = em.iterate(sweep, state, max_iter=max_sweeps, tol=tol, rule="gain", scale=float(e.count.sum()),
                     initial=head[-1], name="lda.fit_cavi")
    return CAVIResult(run.state, head[:-1] + run.trace, run.converged, doc_iters)


def log_evidence_fixed_topics(words: list[list[int]], alpha: Tensor, beta: Tensor) -> Tensor:
    r"""log p(w) for fixed topics by enumerating every topic assignment z (K^N per document): tiny corpora.

    p(w_d) = sum_z p(z) prod_n beta_{z_n, w_n},  p(z) = Γ(Σα) / Γ(Σα + N) prod_k Γ(α_k + m_k) / Γ(α_k)
    (theta integrated out; m_k = #{n : z_n = k}).
    """
    k = alpha.shape[0]
    total = torch.zeros((), dtype=beta.dtype)
    for doc in words:
        terms = []
        for z in itertools.product(range(k), repeat=len(doc)):
            m = torch.bincount(torch.tensor(z), minlength=k).to(beta.dtype)
            log_pz = (torch.lgamma(alpha.sum()) - torch.lgamma(alpha.sum() + len(doc))
                      + (torch.lgamma(alpha + m) - torch.lgamma(alpha)).sum())
            terms.append(log_pz + sum(torch.log(beta[zn, wn]) for zn, wn in zip(z, doc)))
        total = total + torch.logsumexp(torch.stack(terms), 0)
    return total


def kl_fixed_topics(words: list[list[int]], alpha: Tensor, beta: Tensor, gamma: Tensor, phi: list[Tensor]) -> Tensor:
    r"""KL(q(theta, z) || p(theta, z | w)) for fixed topics, exactly, by enumerating z: tiny corpora.

    q = prod_d Dir(theta_d | gamma_d) prod_n Cat(z_dn | phi_dn) (phi[d]: (N_d, K), one row per token).
    The posterior is p(z | w) Dir(theta | alpha + m(z)), so
    KL = sum_z q(z) [log q(z) - log p(z | w)] + E_q(z) KL-free part:
         E_q[log Dir(theta | gamma)] - E_q[log Dir(theta | alpha + m(z))] under q(theta) = Dir(gamma).
    """
    k = alpha.shape[0]
    total = torch.zeros((), dtype=beta.dtype)
    for d, doc in enumerate(words):
        e_log_theta = _expected_log_dirichlet(gamma[d])
        neg_entropy_theta = _log_dirichlet_norm(gamma[d]) + ((gamma[d] - 1) * e_log_theta).sum()
        configs, log_joint, log_q = [], [], []
        for z in itertools.product(range(k), repeat=len(doc)):
            m = torch.bincount(torch.tensor(z), minlength=k).to(beta.dtype)
            log_pz = (torch.lgamma(alpha.sum()) - torch.lgamma(alpha.sum() + len(doc))
                      + (torch.lgamma(alpha + m) - torch.lgamma(alpha)).sum())
            log_joint.append(log_pz + sum(torch.log(beta[zn, wn]) for zn, wn in zip(z, doc)))
            log_q.append(sum(torch.log(phi[d][n, zn]) for n, zn in enumerate(z)))
            configs.append(m)
        log_joint_t, log_q_t = torch.stack(log_joint), torch.stack(log_q)
        log_post = log_joint_t - torch.logsumexp(log_joint_t, 0)
        q = torch.exp(log_q_t)
        cross = torch.stack([_log_dirichlet_norm(alpha + m) + ((alpha + m - 1) * e_log_theta).sum() for m in configs])
        total = total + (q * (log_q_t - log_post + neg_entropy_theta - cross)).sum()
    return total


def elbo_fixed_topics_tokens(words: list[list[int]], alpha: Tensor, beta: Tensor, gamma: Tensor,
                             phi: list[Tensor]) -> Tensor:
    """The ELBO of an arbitrary (gamma, phi) for fixed topics, token by token (not at the optimal phi)."""
    total = torch.zeros((), dtype=beta.dtype)
    for d, doc in enumerate(words):
        e = _expected_log_dirichlet(gamma[d])
        total = total + _log_dirichlet_norm(alpha) - _log_dirichlet_norm(gamma[d]) + ((alpha - gamma[d]) * e).sum()
        for n, w in enumerate(doc):
            p = phi[d][n]
            total = total + (p * (e + torch.log(beta[:, w]) - torch.log(p))).sum()
    return total
