r"""Exact inference and closed-form EM for the Gaussian mixture, in plain torch (no Pyro).

Every quantity is computed by summing over the K values of each z_n, in log space.

    log p(x_n, z_n = k) = log pi_k + log N(x_n | mu_k, diag(sigma_k^2))
    log p(x)            = sum_n logsumexp_k log p(x_n, k)
    p(z_n = k | x_n)    = exp(log p(x_n, k) - log p(x_n))
    ELBO(q)             = sum_n sum_k q_nk (log p(x_n, k) - log q_nk)
    KL(q || p(z|x))     = sum_n sum_k q_nk (log q_nk - log p(k | x_n))  =  log p(x) - ELBO(q)

EM is coordinate ascent on ELBO(q, theta): the E-step sets q = p(z | x; theta), where the
bound touches log p(x; theta); the M-step maximises the bound in theta in closed form:

    N_k = sum_n r_nk,  pi_k = N_k / N,  mu_k = sum_n r_nk x_n / N_k,
    sigma_k^2 = sum_n r_nk (x_n - mu_k)^2 / N_k + reg_covar      (spherical: mean over d)

The update and the stopping rule (change of the mean log-likelihood per point below ``tol``)
follow scikit-learn's ``GaussianMixture`` so the two can be compared step for step.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from . import em, mixture

_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class GMMParams:
    """Parameters of a Gaussian mixture.

    weights : (K,)   mixing proportions pi, on the simplex
    locs    : (K, D) component means mu
    scales  : (K, D) component standard deviations sigma (> 0)
    """

    weights: Tensor
    locs: Tensor
    scales: Tensor

    @property
    def num_components(self) -> int:
        return self.weights.shape[-1]

    @property
    def dim(self) -> int:
        return self.locs.shape[-1]

    def _map(self, fn) -> "GMMParams":
        return GMMParams(*(fn(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def to(self, dtype: torch.dtype) -> "GMMParams":
        return self._map(lambda t: t.to(dtype))

    def detach(self) -> "GMMParams":
        return self._map(lambda t: t.detach().clone())

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors, loadable with ``torch.load(..., weights_only=True)``."""
        return {f.name: getattr(self, f.name).detach().clone() for f in dataclasses.fields(self)}

    def permute(self, order: Tensor) -> "GMMParams":
        """Reorder components (to compare fits up to label switching)."""
        return GMMParams(self.weights[order], self.locs[order], self.scales[order])


def log_joint(x: Tensor, params: GMMParams) -> Tensor:
    """log p(x_n, z_n = k) for every point and component.

    x: (N, D) -> (N, K). Uses the expansion sum_d (x - mu)^2 / s^2 = x^2 . s^-2 - 2 x . mu s^-2 + mu^2 . s^-2
    as two fused matrix products (``addmm``) onto a per-component constant, so the cost is O(N K D)
    with no (N, K, D) intermediate.
    """
    prec, weighted_locs, const = component_terms(params)
    out = torch.addmm(const, x * x, prec.T, alpha=-0.5)  # const_k - x^2 . s_k^-2 / 2
    return out.addmm_(x, weighted_locs.T)  # + x . mu_k s_k^-2


def component_terms(params: GMMParams) -> tuple[Tensor, Tensor, Tensor]:
    """The (K, D) and (K,) pieces of log p(x_n, k) that do not depend on n.

    prec = s^-2, weighted_locs = mu s^-2 and
    const = log pi - D/2 log(2 pi) - sum_d log s - 1/2 sum_d mu^2 s^-2,
    so that log p(x_n, k) = const_k + x_n . weighted_locs_k - 1/2 x_n^2 . prec_k.
    """
    prec = params.scales.pow(-2)  # (K, D)
    weighted_locs = params.locs * prec  # (K, D)
    log_det = params.scales.log().sum(-1)  # (K,)
    const = params.weights.log() - 0.5 * params.dim * _LOG_2PI - log_det - 0.5 * (params.locs * weighted_locs).sum(-1)
    return prec, weighted_locs, const


def features(x: Tensor) -> Tensor:
    """[x, x^2]: (N, 2D), the per-point sufficient statistics of a diagonal Gaussian."""
    return torch.cat([x, x * x], dim=-1)


def log_joint_features(feats: Tensor, params: GMMParams) -> Tensor:
    """:func:`log_joint` from precomputed ``feats = [x, x^2]``: one fused matrix product, (N, K)."""
    prec, weighted_locs, const = component_terms(params)
    return torch.addmm(const, feats, torch.cat([weighted_locs, -0.5 * prec], dim=-1).T)


def weighted_sums(resp: Tensor, feats: Tensor, block: int = 4096) -> Tensor:
    """resp.T @ feats: (K, F) for resp: (N, K), feats: (N, F), summed block by block over n.

    The same sum as one matrix product, computed as a batched product over row blocks plus a sum
    over blocks: a single product with a long inner dimension N and tiny K, F runs several times
    slower on CPU BLAS than the batched form.
    """
    num_points, num_components = resp.shape
    num_blocks = num_points // block
    if num_blocks < 2:
        return resp.T @ feats
    head = num_blocks * block
    r = resp[:head].reshape(num_blocks, block, num_components).transpose(1, 2)  # (B, K, block)
    f = feats[:head].reshape(num_blocks, block, feats.shape[-1])  # (B, block, F)
    out = torch.bmm(r, f).sum(0)
    if head < num_points:
        out += resp[head:].T @ feats[head:]
    return out


def log_evidence(x: Tensor, params: GMMParams) -> Tensor:
    """log p(x) = sum_n log p(x_n), a scalar."""
    return mixture.log_evidence(log_joint(x, params))


def posterior(x: Tensor, params: GMMParams) -> Tensor:
    """p(z_n = k | x_n): (N, K), rows sum to one."""
    return mixture.posterior(log_joint(x, params))


def elbo(x: Tensor, params: GMMParams, q: Tensor) -> Tensor:
    """ELBO(q) = E_q[log p(x, z) - log q(z)], exact, for q(z_n = k) = q[n, k]; a scalar."""
    return mixture.elbo(log_joint(x, params), q)


def kl_to_posterior(x: Tensor, params: GMMParams, q: Tensor) -> Tensor:
    """KL(q || p(z | x)) = sum_n sum_k q_nk (log q_nk - log p(k | x_n)), exact; a scalar."""
    return mixture.kl_to_posterior(log_joint(x, params), q)


class EStep(NamedTuple):
    """resp: p(z_n = k | x_n), (N, K). mean_log_likelihood: log p(x) / N, a scalar."""

    resp: Tensor
    mean_log_likelihood: Tensor


def e_step(x: Tensor, params: GMMParams) -> EStep:
    return e_step_features(None, params, log_joint(x, params))


def e_step_features(feats: Tensor | None, params: GMMParams, lj: Tensor | None = None) -> EStep:
    """E-step from ``feats = [x, x^2]`` (or from a precomputed log joint ``lj``, which is overwritten).

    Normalises log p(x_n, k) in place: with m_n = max_k log p(x_n, k) and s_n = sum_k exp(. - m_n),
    p(k | x_n) = exp(log p(x_n, k) - m_n) / s_n and log p(x_n) = m_n + log s_n (a logsumexp), with
    no further (N, K) allocation. When ``lj`` requires grad it is normalised out of place instead.
    """
    if lj is None:
        lj = log_joint_features(feats, params)
    if lj.requires_grad:
        log_px = torch.logsumexp(lj, dim=-1, keepdim=True)  # (N, 1)
        return EStep((lj - log_px).exp(), log_px.mean())
    m = lj.amax(-1, keepdim=True)  # (N, 1)
    resp = lj.sub_(m).exp_()
    s = resp.sum(-1, keepdim=True)  # (N, 1)
    resp.div_(s)
    return EStep(resp, s.log_().add_(m).mean())


def m_step(x: Tensor, resp: Tensor, covariance: str, reg_covar: float) -> GMMParams:
    """Closed-form maximiser of the ELBO in theta for fixed responsibilities ``resp``: (N, K)."""
    return m_step_features(features(x), resp, covariance, reg_covar)


def m_step_features(feats: Tensor, resp: Tensor, covariance: str, reg_covar: float) -> GMMParams:
    """:func:`m_step` from ``feats = [x, x^2]``: both weighted sums in one pass over the data."""
    if covariance not in ("diag", "spherical"):
        raise ValueError(f"covariance must be 'diag' or 'spherical', got {covariance!r}")
    dim = feats.shape[-1] // 2
    nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps  # (K,), as scikit-learn guards empty components
    moments = weighted_sums(resp, feats) / nk[:, None]  # (K, 2D): [sum_n r_nk x_n, sum_n r_nk x_n^2] / N_k
    locs = moments[:, :dim].contiguous()  # (K, D)
    avg_x2 = moments[:, dim:]
    var = (avg_x2 - locs.pow(2)).clamp_min(0.0) + reg_covar  # (K, D)
    if covariance == "spherical":
        var = var.mean(-1, keepdim=True).expand_as(var)
    return GMMParams(nk / nk.sum(), locs, var.sqrt())


class EMResult(NamedTuple):
    """Result of :func:`fit_em`.

    params: the final parameters (after the last M-step).
    log_likelihood: (num_iters + 1,) log p(x; theta_t) / N for t = 0..num_iters (theta_0 = init);
        entry t comes from the E-step at theta_t, so it is also the ELBO right after that E-step.
    converged: whether the change fell below ``tol`` within ``max_iter`` iterations.
    """

    params: GMMParams
    log_likelihood: Tensor
    converged: bool

    @property
    def num_iters(self) -> int:
        return self.log_likelihood.numel() - 1


def fit_em(
    x: Tensor,
    init: GMMParams,
    covariance: str = "diag",
    reg_covar: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-3,
) -> EMResult:
    """Exact EM from ``init``, iterated as scikit-learn's ``GaussianMixture.fit`` does.

    Each iteration is an E-step at theta_{t-1} followed by an M-step to theta_t; it stops once the
    change in mean log-likelihood between consecutive E-steps is below ``tol`` (or after ``max_iter``
    M-steps), then runs a final E-step so the last entry of the trace scores the returned parameters.
    The loop is :func:`models.exact.em.iterate` with the two-sided rule ``"abs"``; with ``reg_covar > 0``
    the M-step is not the exact maximiser, so the monotonicity check can (rarely) warn near convergence.
    """
    feats = features(x)  # [x, x^2], computed once and shared by every E- and M-step

    def step(params: GMMParams) -> tuple[GMMParams, Tensor]:  # scores theta_{t-1}, moves to theta_t
        estep = e_step_features(feats, params)
        return m_step_features(feats, estep.resp, covariance, reg_covar), estep.mean_log_likelihood

    def final(params: GMMParams, converged: bool) -> tuple[GMMParams, Tensor]:
        return params, e_step_features(feats, params).mean_log_likelihood

    run = em.iterate(step, init, max_iter=max_iter, tol=tol, rule="abs", final=final, name="gmm.fit_em")
    return EMResult(run.state, torch.stack(run.trace), run.converged)


class _MixtureLogLikelihood(torch.autograd.Function):
    """log p(x_n) = logsumexp_k (feats_n . W_k + c_k) for feats = [x, x^2]: (N, 2D), W: (K, 2D), c: (K,).

    The backward pass reuses the responsibilities r_nk = p(k | x_n) saved by the forward pass:
    d/dW_k = sum_n g_n r_nk feats_n and d/dc_k = sum_n g_n r_nk (Fisher's identity: the gradient of
    log p(x) is the E-step's expected sufficient statistics). One forward + backward costs about one
    EM iteration, with no (N, K, D) tensor and no autograd graph over (N, K) intermediates.
    """

    @staticmethod
    def forward(ctx, feats: Tensor, weights_mat: Tensor, const: Tensor) -> Tensor:
        lj = torch.addmm(const, feats, weights_mat.T)  # (N, K)
        m = lj.amax(-1, keepdim=True)
        resp = lj.sub_(m).exp_()
        s = resp.sum(-1, keepdim=True)
        resp.div_(s)
        ctx.save_for_backward(feats, resp)
        return s.log_().add_(m).squeeze(-1)  # (N,)

    @staticmethod
    def backward(ctx, grad: Tensor):
        feats, resp = ctx.saved_tensors
        g_resp = resp * grad.unsqueeze(-1)  # (N, K)
        return None, weighted_sums(g_resp, feats), g_resp.sum(0)


def mixture_log_likelihood(feats: Tensor, params: GMMParams) -> Tensor:
    """log p(x_n) for every point, (N,), from ``feats = features(x)``, differentiable in ``params``.

    Equal to ``logsumexp(log_joint(x, params), -1)``, with a hand-written backward pass (see
    :class:`_MixtureLogLikelihood`); tests check both values and gradients against autograd.
    """
    prec, weighted_locs, const = component_terms(params)
    return _MixtureLogLikelihood.apply(feats, torch.cat([weighted_locs, -0.5 * prec], -1), const)
