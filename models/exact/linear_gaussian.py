r"""Declared models that are linear-Gaussian (factor analysis), in closed form; plain torch.

A declaration qualifies (:func:`applies`) when every latent group is a gaussian root, every observed group
is gaussian with a linear link (no weight constraint) and a shared or fixed scale. Stacking the latent
groups into z: (K,) and the observed ones into x: (D,)::

    z ~ N(m, diag s^2),   x | z ~ N(z W + b, diag sigma^2)         W: (K, D), zero where a group is not a parent

With z = m + s u the model is factor analysis in standard form, u ~ N(0, I), x | u ~ N(u W' + b', Psi),
W' = diag(s) W, b' = m W + b, Psi = diag sigma^2, so everything is exact:

    log p(x_n)   = log N(x_n | b', W'^T W' + Psi)
    p(u | x_n)   = N((x_n - b') Psi^-1 W'^T Sigma, Sigma),  Sigma = (I + W' Psi^-1 W'^T)^-1  (the same for every n)
    ELBO(q)      for a diagonal Gaussian q(z_n) (the generated guides), in closed form; it is the same in z
                 and u (the Jacobian of z = m + s u cancels between log p(x, z) and H(q))
    KL(q || p(z | x_n)) between Gaussians (:func:`models.exact.ppca.kl_gaussian`), by a different route
    best q       the best diagonal Gaussian: the posterior mean, variances 1 / diag(precision)
    EM           exact E-step; M-step: each observed group's [W' b'] by least squares on its parents' E[u],
                 E[u u^T], and its shared sigma^2 in closed form (Rubin & Thayer 1982); the prior m, s stays fixed
                 (it is redundant with W and b)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..declaration import Declaration
from . import em
from .binary import GEMResult
from .declared import DeclaredParams
from .draws import gaussian
from .ppca import GaussianQ, kl_gaussian


def applies(decl: Declaration) -> bool:
    """Whether the declaration is linear-Gaussian in the sense above."""
    roots = all(g.family == "gaussian" and g.name not in decl.links for g in decl.latents)
    leaves = all(g.family == "gaussian" and g.scale != "linked" and decl.links[g.name].kind == "linear"
                 and decl.links[g.name].constraint == "none" for g in decl.observed)
    return roots and leaves


def _offsets(groups) -> dict[str, slice]:
    out, start = {}, 0
    for g in groups:
        out[g.name] = slice(start, start + g.size)
        start += g.size
    return out


def standard_form(decl: Declaration, params: DeclaredParams) -> tuple[Tensor, Tensor, Tensor]:
    """W': (K, D), b': (D,), sigma^2: (D,) of the standard form u ~ N(0, I)."""
    lat, obs = _offsets(decl.latents), _offsets(decl.observed)
    k, d = sum(g.size for g in decl.latents), decl.data_width
    m = torch.cat([params[f"{g.name}.loc"] for g in decl.latents])
    s = torch.cat([params[f"{g.name}.scale"] for g in decl.latents])
    w, b, var = m.new_zeros(k, d), m.new_zeros(d), m.new_zeros(d)
    for g in decl.observed:
        rows = torch.cat([torch.arange(k, device=m.device)[lat[p]] for p in decl.links[g.name].parents])
        w[rows, obs[g.name]] = params[f"{g.name}.weight"]
        b[obs[g.name]] = params[f"{g.name}.bias"]
        scale = params[f"{g.name}.scale"] if g.scale == "shared" else m.new_full((g.size,), float(g.scale))
        var[obs[g.name]] = scale**2
    return s[:, None] * w, m @ w + b, var


def log_evidence_per_point(decl: Declaration, params: DeclaredParams, x: Tensor) -> Tensor:
    """log p(x_n): (N,), by the Cholesky factor of W'^T W' + Psi."""
    w, b, var = standard_form(decl, params)
    chol = torch.linalg.cholesky(w.T @ w + torch.diag(var))
    r = torch.linalg.solve_triangular(chol, (x - b).T, upper=False)
    return -0.5 * ((r**2).sum(0) + 2 * torch.log(torch.diagonal(chol)).sum() + x.shape[1] * math.log(2 * math.pi))


def log_evidence(decl: Declaration, params: DeclaredParams, x: Tensor) -> Tensor:
    return log_evidence_per_point(decl, params, x).sum()


def posterior_u(decl: Declaration, params: DeclaredParams, x: Tensor) -> GaussianQ:
    """p(u_n | x_n): mean (N, K), covariance (N, K, K) (shared)."""
    w, b, var = standard_form(decl, params)
    k = w.shape[0]
    cov = torch.linalg.inv(torch.eye(k, dtype=w.dtype, device=w.device) + (w / var) @ w.T)
    mean = ((x - b) / var) @ w.T @ cov
    return GaussianQ(mean, cov.expand(x.shape[0], k, k))


def draws(decl: Declaration, params: DeclaredParams, x: Tensor, num_samples: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Exact posterior draws of every latent group, z = m + s u with u ~ p(u | x_n): group -> (S, N, size)."""
    post = posterior_u(decl, params, x)
    u = gaussian(post.mean, post.cov, num_samples, generator)
    return {g.name: params[f"{g.name}.loc"] + params[f"{g.name}.scale"] * u[..., sl] for g, sl in
            zip(decl.latents, _offsets(decl.latents).values())}


def _q_in_u(decl: Declaration, params: DeclaredParams, q: dict) -> GaussianQ:
    m = torch.cat([params[f"{g.name}.loc"] for g in decl.latents])
    s = torch.cat([params[f"{g.name}.scale"] for g in decl.latents])
    loc = torch.cat([q[g.name][0] for g in decl.latents], -1)
    scale = torch.cat([q[g.name][1] for g in decl.latents], -1)
    return GaussianQ((loc - m) / s, (scale / s) ** 2)


def elbo(decl: Declaration, params: DeclaredParams, x: Tensor, q: dict) -> Tensor:
    """ELBO of the diagonal Gaussian q (group -> (loc, scale), each (N, size)) in closed form: a scalar."""
    w, b, var = standard_form(decl, params)
    qu = _q_in_u(decl, params, q)
    k, d = w.shape
    resid = x - qu.mean @ w - b
    expected_lik = -0.5 * ((resid**2 + qu.cov @ w**2) / var).sum(-1) - 0.5 * torch.log(2 * math.pi * var).sum()
    expected_prior = -0.5 * ((qu.mean**2).sum(-1) + qu.cov.sum(-1)) - 0.5 * k * math.log(2 * math.pi)
    entropy = 0.5 * torch.log(qu.cov).sum(-1) + 0.5 * k * (1 + math.log(2 * math.pi))
    return (expected_lik + expected_prior + entropy).sum()


def kl_to_posterior(decl: Declaration, params: DeclaredParams, x: Tensor, q: dict) -> Tensor:
    """KL(q(z_n) || p(z_n | x_n)) summed over points (computed in u: KL is invariant under z = m + s u)."""
    return kl_gaussian(_q_in_u(decl, params, q), posterior_u(decl, params, x)).sum()


def best_mean_field(decl: Declaration, params: DeclaredParams, x: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """The best diagonal Gaussian q(z_n) (the guides' family) in closed form: for a Gaussian posterior N(mu, Lambda^-1),
    KL(q || p) over diagonal q is minimised by the posterior mean and variances 1 / Lambda_kk (not the
    posterior's marginal variances, which are larger when the factors are correlated). Mapped back to z = m + s u.
    Returns group -> (loc, scale), each (N, size)."""
    post = posterior_u(decl, params, x)
    precision_diag = torch.diagonal(torch.linalg.inv(post.cov[0]))
    m = torch.cat([params[f"{g.name}.loc"] for g in decl.latents])
    s = torch.cat([params[f"{g.name}.scale"] for g in decl.latents])
    loc = m + s * post.mean
    scale = (s / precision_diag.sqrt()).expand_as(loc)
    return {g: (loc[:, sl], scale[:, sl]) for g, sl in _offsets(decl.latents).items()}


def fit_em(decl: Declaration, x: Tensor, init: DeclaredParams, max_iter: int = 1000, tol: float = 1e-8) -> GEMResult:
    """Exact EM for the standard form (module docstring); the prior m, s and fixed scales are kept.
    Stops when log p(x) per point changes by less than ``tol`` (:func:`models.exact.em.iterate`, rule "abs")."""
    n = x.shape[0]
    lat, obs = _offsets(decl.latents), _offsets(decl.observed)
    kk = sum(g.size for g in decl.latents)
    m = torch.cat([init[f"{g.name}.loc"] for g in decl.latents])
    s = torch.cat([init[f"{g.name}.scale"] for g in decl.latents])

    def step(params: DeclaredParams) -> tuple[DeclaredParams, float]:
        post = posterior_u(decl, params, x)
        mu = post.mean
        suu = n * post.cov[0] + mu.T @ mu  # sum_n E[u u^T]: (K, K)
        new = dict(params.tensors)
        for g in decl.observed:
            rows = torch.cat([torch.arange(kk, device=x.device)[lat[p]] for p in decl.links[g.name].parents])
            xo = x[:, obs[g.name]]
            mu_p = mu[:, rows]
            a = x.new_zeros(len(rows) + 1, len(rows) + 1)
            a[:-1, :-1] = suu[rows][:, rows]
            a[:-1, -1] = a[-1, :-1] = mu_p.sum(0)
            a[-1, -1] = n
            rhs = torch.cat([mu_p, x.new_ones(n, 1)], -1).T @ xo  # (P + 1, D_o)
            coef = torch.linalg.solve(a, rhs)
            w_std, b_std = coef[:-1], coef[-1]
            weight = w_std / s[rows, None]
            new[f"{g.name}.weight"] = weight
            new[f"{g.name}.bias"] = b_std - m[rows] @ weight
            if g.scale == "shared":
                var = ((xo**2).sum(0) - (coef * rhs).sum(0)) / n
                new[f"{g.name}.scale"] = var.clamp_min(1e-12 * xo.var(0).clamp_min(1e-300)).sqrt()
        params = DeclaredParams(new, params.slots)
        return params, float(log_evidence(decl, params, x)) / n

    run = em.iterate(step, init, max_iter=max_iter, tol=tol, rule="abs", initial=float(log_evidence(decl, init, x)) / n,
                     name="linear_gaussian.fit_em")
    return GEMResult(run.state, run.trace, run.converged)
