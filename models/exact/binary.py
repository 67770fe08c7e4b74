r"""Exact inference for models with K binary latents per point, by enumerating all 2^K configurations.

The models (:mod:`models.noisy_or`, :mod:`models.lfdm`) share one form::

    z_n ∈ {0, 1}^K,   p(z_n) = prod_k Bern(z_nk | sigmoid(a_k)),   x_n | z_n ~ p(x_n | z_n; theta)

and differ only in the likelihood, which each supplies as a function

    log_lik(configs) -> (N, C):  log p(x_n | z = c) for a chunk of C configurations c: (C, K).

Everything here streams over chunks of configurations with running log-sum-exp accumulators, so the
memory held is O(N * chunk) whatever K is (K = 20 is 2^20 = 1,048,576 configurations):

    log p(x_n)          = logsumexp_c [log p(c) + log p(x_n | c)]
    p(z_nk = 1 | x_n)   = sum_c p(c | x_n) c_k                               (marginals)
    E[z_ni z_nj | x_n]  = sum_c p(c | x_n) c_i c_j                           (second moments)
    ELBO(q)             = sum_n sum_c q_n(c) log p(x_n, c) + H(q_n)
    KL(q || p(z|x))     = sum_n sum_c q_n(c) (log q_n(c) - log p(c | x_n))

for a mean-field q_n(c) = prod_k b_nk^{c_k} (1 - b_nk)^{1 - c_k}, given as the (N, K) table b.
ELBO and KL are computed by different routes (the entropy in closed form for the ELBO, q log q summed
over configurations for the KL), so ``ELBO + KL = log p(x)`` is a check, not a tautology.

Also here: the best mean-field q per point (coordinate ascent, CAVI, with expectations by enumeration),
which sets the approximation gap, and generalised EM (exact E-step, closed-form prior update, gradient
M-step with backtracking so the expected complete log-likelihood, and so log p(x), never decreases).
Plain torch; no Pyro.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import em
from .draws import from_table

MAX_LATENTS = 20
"""Largest K for which exact enumeration is offered (2^20 configurations per point)."""

MAX_PARALLEL_LATENTS = 12
"""Largest K for TraceEnum_ELBO, which holds all 2^K configurations of every point in memory at once."""

CHUNK_ELEMENTS = 2**22
"""Target size (elements) of one chunk's (N, C) table and of its (C, width) intermediates: 32 MiB in float64."""

MAX_TABLE = 2**25
"""Largest N * 2^K held as one table (CAVI, cached E-step responsibilities): 256 MiB in float64."""

LogLik = Callable[[Tensor], Tensor]


def check_enumerable(num_latents: int, field: str = "num_latents") -> None:
    """Refuse K beyond :data:`MAX_LATENTS` with a message that names the limit (not an out-of-memory crash)."""
    if num_latents > MAX_LATENTS:
        raise ValueError(
            f"{field}={num_latents} is too large for exact enumeration: the limit is {MAX_LATENTS} "
            f"(2^{MAX_LATENTS} = {2**MAX_LATENTS:,} configurations per point; 2^{num_latents} = {2**num_latents:,})"
        )


def configurations(num_latents: int, start: int = 0, stop: int | None = None, dtype=torch.float64,
                   device: torch.device | str = "cpu") -> Tensor:
    """Configurations start..stop-1 of K bits as a (C, K) 0/1 tensor on ``device``; bit k of the integer c is z_k."""
    stop = 2**num_latents if stop is None else stop
    c = torch.arange(start, stop, dtype=torch.int64, device=device)
    return ((c[:, None] >> torch.arange(num_latents, device=device)) & 1).to(dtype)


def chunk_size(num_points: int, width: int, num_latents: int) -> int:
    """Configurations per chunk so that (N, C) and (C, width) tables stay near :data:`CHUNK_ELEMENTS`."""
    size = max(1, CHUNK_ELEMENTS // max(1, num_points + width))
    size = 1 << (size.bit_length() - 1)  # a power of two
    return min(size, 2**num_latents)


def chunks(num_latents: int, size: int, dtype=torch.float64, device: torch.device | str = "cpu") -> Iterator[Tensor]:
    """Yield every configuration once, ``size`` at a time, as (C, K) tensors on ``device``."""
    total = 2**num_latents
    for start in range(0, total, size):
        yield configurations(num_latents, start, min(start + size, total), dtype, device)


def log_prior(configs: Tensor, prior_logits: Tensor) -> Tensor:
    """log p(c) = sum_k c_k log sigmoid(a_k) + (1 - c_k) log sigmoid(-a_k): (C,)."""
    return configs @ F.logsigmoid(prior_logits) + (1 - configs) @ F.logsigmoid(-prior_logits)


def log_q_table(configs: Tensor, probs: Tensor) -> Tensor:
    """log q_n(c) for a mean-field q with q(z_nk = 1) = probs[n, k]: (N, C); -inf where q_n(c) = 0.

    Saturated entries (probs exactly 0 or 1, as a sigmoid gives for logits beyond +-37 in float64) have
    log 0 = -inf, and the matrix product would form 0 * -inf = NaN for configurations that do not use
    them; the most negative finite number stands in for -inf, so those terms are 0 and the others -inf.
    """
    floor = torch.finfo(probs.dtype).min
    return torch.log(probs).clamp_min(floor) @ configs.T + torch.log1p(-probs).clamp_min(floor) @ (1 - configs).T


def entropy(probs: Tensor) -> Tensor:
    """H(q) summed over points and latents, closed form for a mean-field Bernoulli table: a scalar."""
    return -(torch.special.xlogy(probs, probs) + torch.special.xlogy(1 - probs, 1 - probs)).sum()


def weighted(weight: Tensor, value: Tensor) -> Tensor:
    """weight * value with 0 * (anything) = 0 (q_n(c) = 0 contributes nothing, even against -inf)."""
    return torch.where(weight > 0, weight * value, torch.zeros_like(value))


class Posterior(NamedTuple):
    """Exact posterior summaries, per point.

    log_evidence   : (N,)       log p(x_n)
    marginals      : (N, K)     p(z_nk = 1 | x_n)
    second_moments : (N, K, K)  E[z_ni z_nj | x_n] (None unless asked for)
    """

    log_evidence: Tensor
    marginals: Tensor
    second_moments: Tensor | None = None

    def correlation(self) -> Tensor:
        """Posterior correlation of z_ni and z_nj: (N, K, K); NaN where a marginal is exactly 0 or 1."""
        m = self.marginals
        cov = self.second_moments - m[:, :, None] * m[:, None, :]
        sd = (m * (1 - m)).sqrt()
        return cov / (sd[:, :, None] * sd[:, None, :])


def log_joint_chunks(log_lik: LogLik, prior_logits: Tensor, num_points: int, width: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (configs (C, K), log p(x_n, c) (N, C)) over every configuration, chunk by chunk."""
    k = prior_logits.shape[-1]
    size = chunk_size(num_points, width, k)
    for configs in chunks(k, size, prior_logits.dtype, prior_logits.device):
        yield configs, log_lik(configs) + log_prior(configs, prior_logits)


def posterior(log_lik: LogLik, prior_logits: Tensor, num_points: int, width: int, moments: bool = False) -> Posterior:
    """log p(x_n), the posterior marginals and optionally second moments, in one streaming pass."""
    k = prior_logits.shape[-1]
    check_enumerable(k)
    run_max = prior_logits.new_full((num_points,), -math.inf)
    total = prior_logits.new_zeros(num_points)
    first = prior_logits.new_zeros(num_points, k)
    second = prior_logits.new_zeros(num_points, k * k) if moments else None
    for configs, table in log_joint_chunks(log_lik, prior_logits, num_points, width):
        new_max = torch.maximum(run_max, table.max(-1).values)
        rescale = torch.exp(run_max - new_max)  # exp(-inf) = 0 on the first chunk
        w = torch.exp(table - new_max[:, None])  # (N, C)
        total = total * rescale + w.sum(-1)
        first = first * rescale[:, None] + w @ configs
        if second is not None:
            second = second * rescale[:, None] + w @ (configs[:, :, None] * configs[:, None, :]).reshape(-1, k * k)
        run_max = new_max
    log_px = run_max + total.log()
    return Posterior(
        log_px,
        first / total[:, None],
        None if second is None else (second / total[:, None]).reshape(num_points, k, k),
    )


def log_evidence(log_lik: LogLik, prior_logits: Tensor, num_points: int, width: int) -> Tensor:
    """log p(x) = sum_n log p(x_n): a scalar."""
    return posterior(log_lik, prior_logits, num_points, width).log_evidence.sum()


def point_elbo(log_lik: LogLik, prior_logits: Tensor, probs: Tensor, width: int) -> Tensor:
    """ELBO_n(q) = E_q[log p(x_n, z)] + H(q_n) per point: (N,), exactly, for a mean-field table probs: (N, K)."""
    check_enumerable(prior_logits.shape[-1])
    expected = probs.new_zeros(probs.shape[0])
    for configs, table in log_joint_chunks(log_lik, prior_logits, probs.shape[0], width):
        expected = expected + weighted(torch.exp(log_q_table(configs, probs)), table).sum(-1)
    return expected - (torch.special.xlogy(probs, probs) + torch.special.xlogy(1 - probs, 1 - probs)).sum(-1)


def elbo(log_lik: LogLik, prior_logits: Tensor, probs: Tensor, width: int) -> Tensor:
    """ELBO(q) = sum_n E_q[log p(x_n, z)] + H(q_n), exactly, for a mean-field table probs: (N, K)."""
    check_enumerable(prior_logits.shape[-1])
    expected = probs.new_zeros(())
    for configs, table in log_joint_chunks(log_lik, prior_logits, probs.shape[0], width):
        expected = expected + weighted(torch.exp(log_q_table(configs, probs)), table).sum()
    return expected + entropy(probs)


def kl_to_posterior(log_lik: LogLik, prior_logits: Tensor, probs: Tensor, width: int) -> Tensor:
    """KL(q || p(z | x)) = sum_n sum_c q_n(c) (log q_n(c) - log p(c | x_n)), exactly: a scalar."""
    log_px = posterior(log_lik, prior_logits, probs.shape[0], width).log_evidence
    kl = probs.new_zeros(())
    for configs, table in log_joint_chunks(log_lik, prior_logits, probs.shape[0], width):
        log_q = log_q_table(configs, probs)
        kl = kl + weighted(torch.exp(log_q), log_q - (table - log_px[:, None])).sum()
    return kl


def full_table(log_lik: LogLik, prior_logits: Tensor, num_points: int) -> tuple[Tensor, Tensor]:
    """All configurations (2^K, K) and the whole log-joint table (N, 2^K), refused beyond :data:`MAX_TABLE`."""
    k = prior_logits.shape[-1]
    check_enumerable(k)
    if num_points * 2**k > MAX_TABLE:
        raise ValueError(
            f"the full table has N * 2^K = {num_points} * 2^{k} = {num_points * 2**k:,} entries, "
            f"more than the limit {MAX_TABLE:,}: use fewer points or latents"
        )
    configs = configurations(k, dtype=prior_logits.dtype, device=prior_logits.device)
    return configs, log_lik(configs) + log_prior(configs, prior_logits)


def random_probs(shape: tuple[int, ...], generator: torch.Generator, dtype=torch.float64, scale: float = 3.0) -> Tensor:
    """Random starts for coordinate ascent: b = sigmoid(scale eps), eps ~ N(0, 1). With scale 3 about a third of
    the draws lie beyond 0.9 or below 0.1, so starts reach the narrow basins near the cube's corners that
    uniform draws rarely do."""
    return torch.sigmoid(scale * torch.randn(shape, generator=generator, dtype=dtype, device=generator.device))


def mode_start(log_lik: LogLik, prior_logits: Tensor, num_points: int, soft: float = 1e-3) -> Tensor:
    """Each point's most probable configuration argmax_c p(c | x_n), as a start for coordinate ascent: (N, K),
    its bits pulled ``soft`` in from 0 and 1 (the climb then decides)."""
    configs, table = full_table(log_lik, prior_logits, num_points)
    return configs[table.argmax(-1)].clamp(soft, 1 - soft)


class MeanFieldOptimum(NamedTuple):
    """The best mean-field q per point, found by coordinate ascent (CAVI).

    probs : (N, K)  q(z_nk = 1) at convergence
    elbo  : list of ELBO values (scalars, summed over points), one per sweep, starting before the first
    """

    probs: Tensor
    elbo: list[float]


def best_mean_field(
    log_lik: LogLik,
    prior_logits: Tensor,
    num_points: int,
    init: Tensor | None = None,
    max_sweeps: int = 200,
    tol: float = 1e-10,
) -> MeanFieldOptimum:
    r"""Coordinate ascent on the mean-field ELBO, one latent at a time, every point in parallel.

    The update for latent k holds the others fixed and is exact:

        logit b_nk = E_{q_{-k}}[log p(x_n, z_k = 1, z_{-k})] - E_{q_{-k}}[log p(x_n, z_k = 0, z_{-k})]

    with the expectations over the other K - 1 bits summed over the full table. Each update maximises
    the ELBO in b_nk, so the ELBO never decreases; it stops when a sweep gains less than ``tol`` per point.
    Starting point: ``init`` (N, K), or the prior.
    """
    configs, table = full_table(log_lik, prior_logits, num_points)
    k = prior_logits.shape[-1]
    probs = torch.sigmoid(prior_logits).expand(num_points, k).clone() if init is None else init.clone()
    probs = probs.clamp(1e-12, 1 - 1e-12)

    def bound(b: Tensor) -> float:
        return float(weighted(torch.exp(log_q_table(configs, b)), table).sum() + entropy(b))

    def sweep(probs: Tensor) -> tuple[Tensor, float]:
        for j in range(k):  # a loop over latents, not data: each step updates b_{:, j} for every point
            others = torch.ones(k, dtype=torch.bool, device=probs.device)
            others[j] = False
            log_q_others = log_q_table(configs[:, others], probs[:, others])  # (N, 2^K)
            terms = weighted(torch.exp(log_q_others), table)
            on = configs[:, j]
            e1 = terms[:, on == 1].sum(-1)
            e0 = terms[:, on == 0].sum(-1)
            probs[:, j] = torch.sigmoid(e1 - e0).clamp(1e-12, 1 - 1e-12)
        return probs, bound(probs)

    run = em.iterate(sweep, probs, max_iter=max_sweeps, tol=tol, rule="gain", scale=num_points,
                     initial=bound(probs), name="binary.best_mean_field")
    return MeanFieldOptimum(run.state, run.trace)


MAX_CERTIFIED_LATENTS = 10
"""Largest K for which :func:`certify_mean_field` is offered: each box costs O(K 2^K) per point."""


class Certificate(NamedTuple):
    """A bound on the family's *global* optimum per point, from :func:`certify_mean_field`.

    upper     : (N,) an upper bound (to ``tol``) on max_b ELBO_n(b) over the whole cube [0, 1]^K
    best      : (N,) the best ELBO_n known: the q the search was given, or a box centre that beat it
    centre    : (N, K) the q given, or that better centre: a start in the basin of a better optimum
    certified : (N,) bool, upper <= ELBO(q given) + tol: q is the global optimum to 2 tol
    boxes     : how many boxes the search bounded
    """

    upper: Tensor
    best: Tensor
    centre: Tensor
    certified: Tensor
    boxes: int


def _multilinear_coefficients(table: Tensor, centre: Tensor) -> Tensor:
    """All mixed partial derivatives of f(b) = sum_c q_b(c) table(c) at b = centre, by a fast transform.

    f is multilinear in b, so f(m + d) = sum_S coef_S prod_{k in S} d_k exactly, over subsets S of the K
    latents, with coef_S = d^|S| f / prod_{k in S} db_k at m. table: (B, 2^K) in :func:`configurations`' order
    (bit k of the column index is z_k); centre: (B, K). Returns coef: (B, 2^K), column S (bit k: k in S);
    column 0 is f(m), column 2^k is df/db_k. O(K 2^K) per box."""
    b, k = centre.shape
    coef = table
    for j in range(k):  # a loop over latents (one butterfly stage each), not over data
        view = coef.reshape(b, 2 ** (k - j - 1), 2, 2**j)
        t0, t1 = view[:, :, 0], view[:, :, 1]
        m = centre[:, j, None, None]
        coef = torch.stack(((1 - m) * t0 + m * t1, t1 - t0), 2).reshape(b, 2**k)
    return coef


class _Boxes(NamedTuple):
    """What :func:`_box_tests` finds for a batch of boxes: each (B,)."""

    value: Tensor  # the ELBO at the box's centre
    upper: Tensor  # an upper bound on the ELBO over the box
    empty: Tensor  # bool: no stationary point in the box (some partial derivative has one sign throughout)
    concave: Tensor  # bool: the ELBO is strictly concave on the box (at most one stationary point)


def _box_tests(table: Tensor, lo: Tensor, hi: Tensor, subsets: Tensor, holds_q: Tensor) -> _Boxes:
    """Bounds on the mean-field ELBO over boxes [lo, hi] (B, K) of points with log-joint tables (B, 2^K).

    ELBO(b) = f(b) + g(b), f multilinear (:func:`_multilinear_coefficients`), g(b) = sum_k H(b_k) concave, g'(b) =
    log((1 - b) / b). With m the centre, d = b - m, |d_k| <= r_k and A_S = |coef_S| prod_{k in S} r_k:

    * value bound: g lies below its tangent and f's expansion is exact, so
      ELBO(b) <= ELBO(m) + sum_k |f_k(m) + g'(m_k)| r_k + sum_{|S| >= 2} A_S;
    * stationary points: over the box, df/db_k stays within f_k(m) +- R_k, R_k = sum_{S ni k, |S| >= 2} A_S / r_k,
      and g'(b_k) within [g'(hi_k), g'(lo_k)]; when the sum's interval excludes 0 for some k, the box holds no
      stationary point;
    * concavity: the Hessian is f's off-diagonal part, |d2f/db_k db_j| <= sum_{S >= {k, j}} A_S / (r_k r_j), plus
      the diagonal -1 / (b_k (1 - b_k)); strict diagonal dominance over the whole box makes it negative definite.
      Tested only for the boxes that hold the point's q (``holds_q``: (B,) bool), the only ones it can drop.
    """
    m, r = (lo + hi) / 2, (hi - lo) / 2
    coef = _multilinear_coefficients(table, m)
    k = m.shape[1]
    single = 2 ** torch.arange(k, device=m.device)
    value = coef[:, 0] - (torch.special.xlogy(m, m) + torch.special.xlogy(1 - m, 1 - m)).sum(-1)
    slope = coef[:, single]  # df/db_k at m
    weight = coef.abs() * torch.exp(torch.log(r) @ subsets.T)  # A_S: (B, 2^K)
    higher = weight * (subsets.sum(-1) >= 2)
    upper = value + ((slope + torch.log1p(-m) - torch.log(m)).abs() * r).sum(-1) + higher.sum(-1)
    spread = (higher @ subsets) / r  # R_k
    g_lo, g_hi = torch.log1p(-lo) - torch.log(lo), torch.log1p(-hi) - torch.log(hi)  # +inf at 0, -inf at 1
    empty = ((slope - spread + g_hi > 0) | (slope + spread + g_lo < 0)).any(-1)
    concave = torch.zeros_like(empty)
    if holds_q.any():
        h, rr, lo_q, hi_q = higher[holds_q], r[holds_q], lo[holds_q], hi[holds_q]
        pair = torch.einsum("bs,sk,sj->bkj", h, subsets, subsets) / (rr[:, :, None] * rr[:, None, :])
        pair = pair * (1 - torch.eye(k, dtype=pair.dtype, device=pair.device))
        nearest = torch.minimum(torch.maximum(torch.full_like(lo_q, 0.5), lo_q), hi_q)  # the point closest to 1/2
        curvature = 1 / (nearest * (1 - nearest))  # min over the box of 1 / (b (1 - b))
        concave[holds_q] = (curvature > pair.sum(-1)).all(-1)
    return _Boxes(value, upper, empty, concave)


@torch.no_grad()
def certify_mean_field(table: Tensor, probs: Tensor, lower: Tensor, tol: float = 1e-8, max_boxes: int | None = None,
                       max_work: float = 4e8, chunk: int | None = None) -> Certificate:
    r"""Branch and bound over b in [0, 1]^K for each point's mean-field ELBO: a certificate of the global optimum.

    table: (N, 2^K) log p(x_n, c) in :func:`configurations`' order; probs: (N, K) the best q known per point (a
    converged CAVI fixed point, e.g. the best of several climbs) and lower: (N,) its ELBO. The entropy makes the
    ELBO fall steeply at the cube's faces, so the global maximum is an interior stationary point. Every point
    starts with the whole cube; each round tests every live box (:func:`_box_tests`) and drops it when

    * its value bound is at most the best value known for its point plus ``tol``, or
    * it holds no stationary point, or
    * the ELBO is strictly concave on it and it contains the point's q: its only stationary point is q itself;

    the rest are halved along their widest side. All points' boxes are processed together (one tensor of boxes
    with an owner index). A point is certified when none of its boxes is left and no box centre beat ``lower``
    by more than ``tol``: then no b anywhere in the cube beats q by more than 2 ``tol``. A centre that does beat
    it is returned (``centre``) as a start in a better basin. When the budget runs out first, ``upper`` is still
    a valid bound (to ``tol``), just looser. The budget is ``max_boxes`` or, unset, ``max_work`` entries of the
    boxes' coefficient tables (a box costs K 2^K: 4e8 is a million boxes at K = 6, 39,000 at K = 10, seconds
    either way). Points whose table has an infinite entry are left uncertified."""
    n, c = table.shape
    k = c.bit_length() - 1
    if 2**k != c or k < 1:
        raise ValueError(f"table must have 2^K columns, got {c}")
    if k > MAX_CERTIFIED_LATENTS:
        raise ValueError(f"certifying the mean-field optimum is offered up to K = {MAX_CERTIFIED_LATENTS}, got K = {k}")
    dtype, device = table.dtype, table.device
    subsets = configurations(k, dtype=dtype).to(device)
    lower = lower.to(dtype)
    finite = torch.isfinite(table).all(-1)
    best = torch.where(finite, lower, torch.full_like(lower, math.inf))
    centre = probs.to(dtype).clone()
    upper = torch.where(finite, torch.full_like(best, -math.inf), torch.full_like(best, math.inf))
    owner = torch.arange(n, device=device)[finite]
    lo = torch.zeros(len(owner), k, dtype=dtype, device=device)
    hi = torch.ones(len(owner), k, dtype=dtype, device=device)
    chunk = chunk or max(1, CHUNK_ELEMENTS // (c * k))
    max_boxes = max_boxes if max_boxes is not None else max(1, int(max_work // (c * k)))
    boxes = 0
    while len(owner):
        holds_q = ((probs[owner] >= lo) & (probs[owner] <= hi)).all(-1)
        parts = [_box_tests(table[owner[i:i + chunk]], lo[i:i + chunk], hi[i:i + chunk], subsets, holds_q[i:i + chunk])
                 for i in range(0, len(owner), chunk)]
        t = _Boxes(*(torch.cat(f) for f in zip(*parts)))
        boxes += len(owner)
        new_best = best.scatter_reduce(0, owner, t.value, "amax")
        gained = (t.value >= new_best[owner]) & (t.value > best[owner])  # a centre that is its point's new best
        centre[owner[gained]] = ((lo + hi) / 2)[gained]
        best = new_best
        live = (t.upper > best[owner] + tol) & ~t.empty & ~(t.concave & holds_q)
        if boxes >= max_boxes:  # out of budget: the live boxes' bounds still bound their points' optimum
            upper = upper.scatter_reduce(0, owner[live], t.upper[live], "amax")
            break
        owner, lo, hi = owner[live], lo[live], hi[live]
        split = (hi - lo).argmax(-1)  # halve along the widest side
        rows = torch.arange(len(owner), device=device)
        mid = (lo[rows, split] + hi[rows, split]) / 2
        lo2, hi1 = lo.clone(), hi.clone()
        lo2[rows, split] = mid
        hi1[rows, split] = mid
        owner, lo, hi = torch.cat([owner, owner]), torch.cat([lo, lo2]), torch.cat([hi1, hi])
    upper = torch.maximum(upper, best)
    certified = (upper <= lower + tol) & finite
    return Certificate(upper, best, centre, certified, boxes)


class GEMResult(NamedTuple):
    """Generalised EM.

    params         : the fitted parameters
    log_likelihood : log p(x) per point at the start and after each iteration (float64 values)
    converged      : the last iteration gained less than ``tol`` per point
    """

    params: Any
    log_likelihood: list[float]
    converged: bool

    @property
    def num_iters(self) -> int:
        return len(self.log_likelihood) - 1


def fit_gem(
    log_lik: Callable[[Tensor, Any], Tensor],
    init: Any,
    num_points: int,
    width: int,
    max_iter: int = 200,
    tol: float = 1e-6,
    m_steps: int = 20,
) -> GEMResult:
    r"""Generalised EM for a binary-latent model with parameters ``init``.

    ``log_lik(configs, params)`` -> (N, C); ``params`` must have ``prior_logits`` (K,) and the methods
    ``free()`` -> dict of unconstrained tensors (everything but the prior) and ``with_free(dict)``.

    E-step: the exact posterior r_n(c) = p(c | x_n; theta_old), by enumeration.
    M-step: the prior in closed form, sigmoid(a_k) = mean_n E[z_nk]; the rest by up to ``m_steps``
    L-BFGS iterations (strong-Wolfe line search) on the expected complete log-likelihood
    Q(theta) = sum_n sum_c r_n(c) log p(x_n | c; theta), starting from theta_old; a result that lowers Q
    is discarded. Since log p(x; theta) - log p(x; theta_old) >= Q(theta) - Q(theta_old), log-likelihood
    never decreases (up to round-off). Responsibilities are held as one table when N * 2^K fits
    :data:`MAX_TABLE`, otherwise recomputed chunk by chunk.
    """
    k = init.prior_logits.shape[-1]
    check_enumerable(k)
    dtype, device = init.prior_logits.dtype, init.prior_logits.device
    size = chunk_size(num_points, width, k)
    cache_r = num_points * 2**k <= MAX_TABLE
    post = posterior(lambda c: log_lik(c, init), init.prior_logits, num_points, width)

    def step(state: tuple[Any, Posterior]) -> tuple[tuple[Any, Posterior], float]:
        old, post = state
        old_log_px = post.log_evidence
        resp: list[Tensor] | None = None
        if cache_r:
            resp = [
                torch.exp(log_lik(c, old) + log_prior(c, old.prior_logits) - old_log_px[:, None]).detach()
                for c in chunks(k, size, dtype, device)
            ]

        def q_value(p: Any) -> Tensor:
            """Q(p) = sum_n sum_c r_n(c) log p(x_n | c; p); gradients accumulate chunk by chunk."""
            total = torch.zeros((), dtype=dtype, device=device)
            for i, c in enumerate(chunks(k, size, dtype, device)):
                if resp is not None:
                    r = resp[i]
                else:
                    with torch.no_grad():
                        r = torch.exp(log_lik(c, old) + log_prior(c, old.prior_logits) - old_log_px[:, None])
                total = total + (r * log_lik(c, p)).sum()
            return total

        prior = torch.logit(post.marginals.mean(0).clamp(1e-6, 1 - 1e-6))
        candidate = m_step(old, q_value, num_points, m_steps)
        params = candidate.replace_prior(prior.detach())
        with torch.no_grad():
            post = posterior(lambda c: log_lik(c, params), params.prior_logits, num_points, width)
        return (params, post), float(post.log_evidence.sum()) / num_points

    run = em.iterate(step, (init, post), max_iter=max_iter, tol=tol, rule="abs",
                     initial=float(post.log_evidence.sum()) / num_points, name="binary.fit_gem")
    return GEMResult(run.state[0], run.trace, run.converged)


def m_step(old: Any, q_value: Callable[[Any], Tensor], num_points: int, m_steps: int = 20) -> Any:
    """A guarded gradient M-step: up to ``m_steps`` L-BFGS iterations (strong-Wolfe line search) on Q over the
    free coordinates of ``old`` (``free()`` / ``with_free``), starting at ``old``; the result is kept only if
    Q(result) >= Q(old) (the line search keeps Q from falling; this guards against round-off and NaN)."""
    with torch.no_grad():
        q_old = float(q_value(old))
    leaves = {name: t.detach().clone(memory_format=torch.contiguous_format).requires_grad_(True)
              for name, t in old.free().items()}  # L-BFGS flattens gradients with view()
    if not leaves:
        return old
    optim = torch.optim.LBFGS(leaves.values(), lr=1.0, max_iter=m_steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optim.zero_grad()
        loss = -q_value(old.with_free(leaves)) / num_points
        loss.backward()
        return loss

    optim.step(closure)
    candidate = old.with_free({n: t.detach() for n, t in leaves.items()})
    with torch.no_grad():
        q_new = float(q_value(candidate))
    return candidate if q_new >= q_old else old


class Reference:
    """The exact functions of one binary-latent model, from its likelihood alone.

    ``log_likelihood(x, configs, params)`` -> (N, C), log p(x_n | c); ``x``: (N, width) data.
    Every method takes the data and the parameters (which have ``prior_logits``) and is one of the
    streaming routines above with that likelihood.
    """

    def __init__(self, log_likelihood: Callable[[Tensor, Tensor, Any], Tensor]):
        self.log_likelihood = log_likelihood

    def _lik(self, x: Tensor, params: Any) -> LogLik:
        return lambda configs: self.log_likelihood(x, configs, params)

    def posterior(self, x: Tensor, params: Any, moments: bool = False) -> Posterior:
        """log p(x_n), p(z_nk = 1 | x_n) and optionally E[z_ni z_nj | x_n], by enumeration."""
        return posterior(self._lik(x, params), params.prior_logits, x.shape[0], x.shape[1], moments)

    def log_evidence(self, x: Tensor, params: Any) -> Tensor:
        """log p(x) = sum_n log p(x_n): a scalar."""
        return self.posterior(x, params).log_evidence.sum()

    def elbo(self, x: Tensor, params: Any, probs: Tensor) -> Tensor:
        """ELBO of the mean-field q with q(z_nk = 1) = probs[n, k], exactly: a scalar."""
        return elbo(self._lik(x, params), params.prior_logits, probs, x.shape[1])

    def point_elbo(self, x: Tensor, params: Any, probs: Tensor) -> Tensor:
        """ELBO_n of the mean-field q per point: (N,)."""
        return point_elbo(self._lik(x, params), params.prior_logits, probs, x.shape[1])

    def kl_to_posterior(self, x: Tensor, params: Any, probs: Tensor) -> Tensor:
        """KL(q || p(z | x)), exactly: a scalar."""
        return kl_to_posterior(self._lik(x, params), params.prior_logits, probs, x.shape[1])

    def best_mean_field(self, x: Tensor, params: Any, **kwargs) -> MeanFieldOptimum:
        """The best mean-field q per point (CAVI by enumeration): the approximation gap's reference."""
        return best_mean_field(self._lik(x, params), params.prior_logits, x.shape[0], **kwargs)

    def certify(self, x: Tensor, params: Any, probs: Tensor, lower: Tensor, **kwargs) -> Certificate:
        """Branch and bound on every point's mean-field ELBO (:func:`certify_mean_field`): probs (N, K), lower (N,)."""
        _, table = full_table(self._lik(x, params), params.prior_logits, x.shape[0])
        return certify_mean_field(table, probs, lower, **kwargs)

    def mode_start(self, x: Tensor, params: Any) -> Tensor:
        """(N, K) each point's posterior mode, softened: a start for :meth:`best_mean_field`."""
        return mode_start(self._lik(x, params), params.prior_logits, x.shape[0])

    def random_start(self, x: Tensor, params: Any, generator: torch.Generator) -> Tensor:
        """(N, K) a random start for :meth:`best_mean_field` (:func:`random_probs`)."""
        return random_probs((x.shape[0], params.prior_logits.shape[-1]), generator, params.prior_logits.dtype)

    def draws(self, x: Tensor, params: Any, num_samples: int, generator: torch.Generator) -> Tensor:
        """(S, N, K) exact posterior draws of z_n, by enumerating all 2^K configurations (for a few points)."""
        k = params.prior_logits.shape[-1]
        check_enumerable(k)
        configs = next(chunks(k, 2**k, params.prior_logits.dtype))
        table = self.log_likelihood(x, configs, params) + log_prior(configs, params.prior_logits)
        return configs[from_table(table, num_samples, generator)]

    def fit_em(self, x: Tensor, init: Any, max_iter: int = 200, tol: float = 1e-6, **kwargs) -> GEMResult:
        """Generalised EM: exact E-step, closed-form prior, gradient (L-BFGS) M-step for the rest."""
        return fit_gem(lambda c, p: self.log_likelihood(x, c, p), init, x.shape[0], x.shape[1], max_iter, tol, **kwargs)
