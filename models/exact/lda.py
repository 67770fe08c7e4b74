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


class CAVIResult(NamedTuple):
    """state: the fitted variational parameters; elbo: the ELBO after each sweep (first: at the start)."""

    state: CAVIState
    elbo: list[float]


def fit_cavi(
    counts: Tensor,
    alpha: Tensor,
    num_topics: int,
    eta: float | None = None,
    beta: Tensor | None = None,
    max_sweeps: int = 100,
    doc_iters: int = 20,
    tol: float = 1e-8,
    seed: int = 0,
) -> CAVIResult:
    """CAVI for LDA on counts: (D, V), alpha: (K,).

    Bayesian topics: pass ``eta`` (lambda starts at eta + Gamma(100, 1/100) noise * (D / K), seeded).
    Fixed topics: pass ``beta``: (K, V). Each sweep runs ``doc_iters`` alternating phi/gamma updates for
    every document at once, then (Bayesian) the lambda update; stops when a sweep gains less than
    ``tol`` per token.
    """
    if (eta is None) == (beta is None):
        raise ValueError("pass exactly one of eta (Bayesian topics) or beta (fixed topics)")
    d, v = counts.shape
    dtype = counts.dtype
    lam = None
    if eta is not None:
        gen = torch.Generator().manual_seed(seed)
        noise = torch._standard_gamma(torch.full((num_topics, v), 100.0, dtype=dtype), generator=gen) / 100.0
        lam = eta + noise * counts.sum() / (num_topics * v)
    log_beta = _topic_terms(lam, beta)
    gamma = alpha + (counts.sum(-1, keepdim=True) / num_topics).expand(d, num_topics)
    state = CAVIState(gamma.clone(), lam, log_beta)
    history = [float(elbo(counts, alpha, state, eta))]
    num_tokens = float(counts.sum())
    for _ in range(max_sweeps):
        for _ in range(doc_iters):
            doc_k, _ = _doc_stats(counts, _expected_log_dirichlet(gamma), log_beta)
            gamma = alpha + doc_k
        if lam is not None:
            _, topic_v = _doc_stats(counts, _expected_log_dirichlet(gamma), log_beta)
            lam = eta + topic_v
            log_beta = _topic_terms(lam, None)
        state = CAVIState(gamma, lam, log_beta)
        history.append(float(elbo(counts, alpha, state, eta)))
        if history[-1] - history[-2] < tol * num_tokens:
            break
    return CAVIResult(state, history)


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
