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


def elbo(counts: Tensor, alpha: Tensor, state: CAVIState, eta: float | None = None) -> Tensor:
    """The ELBO (summed over documents) at the optimal phi for ``state``'s gamma and lambda: a scalar."""
    e_log_theta = _expected_log_dirichlet(state.gamma)  # (D, K)
    shift_t = e_log_theta.max(-1, keepdim=True).values
    shift_b = state.log_beta.max(0, keepdim=True).values
    z = torch.exp(e_log_theta - shift_t) @ torch.exp(state.log_beta - shift_b)  # (D, V), scaled
    log_z = torch.log(z) + shift_t + shift_b
    tokens = torch.where(counts > 0, counts * log_z, torch.zeros_like(log_z)).sum()
    doc = (_log_dirichlet_norm(alpha) - _log_dirichlet_norm(state.gamma)
           + ((alpha - state.gamma) * e_log_theta).sum(-1)).sum()
    out = tokens + doc
    if state.lam is not None:
        v = state.lam.shape[-1]
        eta_t = torch.full((v,), float(eta), dtype=state.lam.dtype)
        out = out + (_log_dirichlet_norm(eta_t) - _log_dirichlet_norm(state.lam)
                     + ((eta - state.lam) * state.log_beta).sum(-1)).sum()
    return out


def _doc_stats(counts: Tensor, e_log_theta: Tensor, log_beta: Tensor) -> tuple[Tensor, Tensor]:
    """sum_v n_dv phi_dvk: (D, K) and sum_d n_dv phi_dvk: (K, V), at the optimal phi."""
    shift_t = e_log_theta.max(-1, keepdim=True).values
    shift_b = log_beta.max(0, keepdim=True).values
    a, b = torch.exp(e_log_theta - shift_t), torch.exp(log_beta - shift_b)
    ratio = counts / (a @ b)  # n_dv / Z_dv (scaled consistently)
    return a * (ratio @ b.T), b * (a.T @ ratio)


class Entries(NamedTuple):
    r"""A count matrix (D, V) as its non-zero entries, in row-major order (documents, then words).

    doc, word: (E,) long indices of the E non-zero entries; count: (E,) their counts n_dv;
    rowptr: (D + 1,) long, the entries of document d are ``rowptr[d]:rowptr[d + 1]`` (CSR layout).
    Every token of word v in document d shares one q(z) (phi_dv), so entries stand in for tokens.
    """

    doc: Tensor
    word: Tensor
    count: Tensor
    rowptr: Tensor

    @property
    def num_docs(self) -> int:
        return self.rowptr.shape[0] - 1

    def positions(self, docs: Tensor) -> Tensor:
        """The entry positions (E_b,) of documents ``docs`` (B,) in that order, each document's words
        ascending: the same order as :func:`entries` of ``counts[docs]``."""
        starts = self.rowptr[docs]
        lengths = self.rowptr[docs + 1] - starts
        offsets = torch.cumsum(lengths, 0) - lengths
        total = int(lengths.sum())
        return torch.repeat_interleave(starts - offsets, lengths, output_size=total) + torch.arange(total)


def entries(counts: Tensor) -> Entries:
    """The non-zero entries of counts: (D, V), row-major."""
    doc, word = counts.nonzero(as_tuple=True)
    rowptr = torch.zeros(counts.shape[0] + 1, dtype=torch.long)
    rowptr[1:] = torch.cumsum(torch.bincount(doc, minlength=counts.shape[0]), 0)
    return Entries(doc, word, counts[doc, word], rowptr)


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
        eta_t = torch.full((lam.shape[-1],), float(eta), dtype=lam.dtype)
        out = out + (_log_dirichlet_norm(eta_t) - _log_dirichlet_norm(lam) + ((eta - lam) * log_beta).sum(-1)).sum()
    return out


class CAVIResult(NamedTuple):
    """state: the fitted variational parameters; elbo: the ELBO after each sweep (first: at the start);
    converged: the tolerance stopped it (False: it ran all ``max_sweeps``)."""

    state: CAVIState
    elbo: list[float]
    converged: bool = False


def initial_lambda(counts: Tensor, num_topics: int, eta: float, seed: int) -> Tensor:
    """A starting lambda: (K, V): eta + Gamma(100, 1/100) noise times the mean count per topic and word
    (the usual symmetric-breaking start, as in Hoffman et al.'s online LDA), from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    v = counts.shape[1]
    noise = torch._standard_gamma(torch.full((num_topics, v), 100.0, dtype=torch.float64), generator=gen) / 100.0
    return (eta + noise * float(counts.sum()) / (num_topics * v)).to(counts.dtype)


def fit_cavi(
    counts: Tensor,
    alpha: Tensor,
    num_topics: int,
    eta: float | None = None,
    beta: Tensor | None = None,
    lam: Tensor | None = None,
    update_beta: bool = False,
    max_sweeps: int = 100,
    doc_iters: int = 20,
    tol: float = 1e-8,
    seed: int = 0,
) -> CAVIResult:
    """CAVI for LDA on counts: (D, V), alpha: (K,).

    Bayesian topics: pass ``eta``; lambda starts at ``lam`` or :func:`initial_lambda` (seeded).
    Point topics: pass ``beta``: (K, V); with ``update_beta`` each sweep ends with the closed-form M-step
    beta_kv ∝ sum_d n_dv phi_dvk (variational EM), otherwise beta stays fixed. Each sweep runs
    ``doc_iters`` alternating phi/gamma updates for every document at once, then the topic update;
    stops when a sweep gains less than ``tol`` per token (:func:`models.exact.em.iterate`, rule "gain": a
    sweep that lowers the ELBO also stops it, and warns).
    """
    if (eta is None) == (beta is None):
        raise ValueError("pass exactly one of eta (Bayesian topics) or beta (fixed topics)")
    d, v = counts.shape
    if eta is not None and lam is None:
        lam = initial_lambda(counts, num_topics, eta, seed)
    log_beta = _topic_terms(lam, beta)
    gamma = alpha + (counts.sum(-1, keepdim=True) / num_topics).expand(d, num_topics)
    state = CAVIState(gamma.clone(), lam, log_beta)

    def sweep(state: CAVIState) -> tuple[CAVIState, float]:
        gamma, lam, log_beta = state
        for _ in range(doc_iters):
            doc_k, _ = _doc_stats(counts, _expected_log_dirichlet(gamma), log_beta)
            gamma = alpha + doc_k
        if lam is not None:
            _, topic_v = _doc_stats(counts, _expected_log_dirichlet(gamma), log_beta)
            lam = eta + topic_v
            log_beta = _topic_terms(lam, None)
        elif update_beta:
            _, topic_v = _doc_stats(counts, _expected_log_dirichlet(gamma), log_beta)
            log_beta = torch.log(topic_v) - torch.log(topic_v.sum(-1, keepdim=True))
        state = CAVIState(gamma, lam, log_beta)
        return state, float(elbo(counts, alpha, state, eta))

    run = em.iterate(sweep, state, max_iter=max_sweeps, tol=tol, rule="gain", scale=float(counts.sum()),
                     initial=float(elbo(counts, alpha, state, eta)), name="lda.fit_cavi")
    return CAVIResult(run.state, run.trace, run.converged)


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
