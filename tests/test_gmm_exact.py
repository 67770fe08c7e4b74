"""Exact EM and exact inference for the Gaussian mixture, in float64.

What is checked, and why the tolerances are what they are:
* log_joint equals torch.distributions' Normal log-density summed by hand (same maths, two codes):
  agreement to 1e-10 relative, the float64 round-off of sums of a few terms.
* EM never decreases log p(x) (a theorem); allowed slack 1e-12 nats/point for round-off.
* After every E-step the bound touches: ELBO(p(z|x; theta)) = log p(x; theta) to round-off.
* Our EM and scikit-learn's GaussianMixture run the same algorithm from the same start, so they
  agree iteration for iteration: same number of iterations, same log-likelihood to 1e-10 nats/point.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture
from vizoo.experiments.registry import MODELS
from vizoo.models.datasets import DataOptions
from vizoo.models.exact import gmm as exact
from vizoo.models.gmm import GMMArgs, GMMParams, init_params, random_params, simulate

CASES = [
    ("faithful", 2, "diag"),
    ("faithful", 3, "spherical"),
    ("iris", 3, "diag"),
    ("iris", 4, "spherical"),
    ("synthetic", 4, "diag"),
    ("synthetic", 5, "spherical"),
]


def load(name: str, k: int, covariance: str):
    spec = MODELS["gmm"]
    args = GMMArgs(k, covariance)
    x = spec.load(DataOptions(name, num_points=500, dim=3, separation=1.5), args, seed=3).x
    return x, args, init_params(x, args, seed=1)


def test_log_joint_matches_torch_distributions():
    theta = random_params(4, 3, seed=5)
    x, _ = simulate(theta, 50, seed=6)
    expected = torch.distributions.Normal(theta.locs, theta.scales).log_prob(x[:, None, :]).sum(-1) + theta.weights.log()
    torch.testing.assert_close(exact.log_joint(x, theta), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,k,covariance", CASES)
def test_em_log_likelihood_never_decreases(name, k, covariance):
    x, args, init = load(name, k, covariance)
    result = exact.fit_em(x, init, covariance, args.reg_covar, max_iter=200, tol=1e-10)
    steps = result.log_likelihood.diff()
    assert result.num_iters >= 2
    assert (steps >= -1e-12).all(), f"EM decreased log p(x) by {-steps.min():.3e} nats/point"


@pytest.mark.parametrize("name,k,covariance", CASES)
def test_bound_touches_after_every_e_step(name, k, covariance):
    x, args, params = load(name, k, covariance)
    for _ in range(10):
        resp = exact.posterior(x, params)
        log_px = exact.log_evidence(x, params)
        bound = exact.elbo(x, params, resp)
        torch.testing.assert_close(bound, log_px, rtol=1e-12, atol=1e-9)
        params = exact.m_step(x, resp, covariance, args.reg_covar)
        # the M-step raises the bound at fixed q, so the new log p(x) is at least the old one
        assert exact.elbo(x, params, resp) >= bound - 1e-9


@pytest.mark.parametrize("name,k,covariance", CASES)
def test_em_matches_scikit_learn(name, k, covariance):
    x, args, init = load(name, k, covariance)
    ours = exact.fit_em(x, init, covariance, args.reg_covar, max_iter=300, tol=1e-6)
    variances = init.scales.pow(2) if covariance == "diag" else init.scales[:, 0].pow(2)
    gm = GaussianMixture(
        k, covariance_type=covariance, tol=1e-6, reg_covar=args.reg_covar, max_iter=300, n_init=1,
        weights_init=init.weights.numpy(), means_init=init.locs.numpy(), precisions_init=(1 / variances).numpy(),
    ).fit(x.numpy())
    assert ours.converged and gm.converged_
    assert ours.num_iters == gm.n_iter_
    np.testing.assert_allclose(float(ours.log_likelihood[-1]), gm.score(x.numpy()), rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours.params.locs.numpy(), gm.means_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(ours.params.weights.numpy(), gm.weights_, rtol=0, atol=1e-8)


def test_posterior_and_evidence_by_brute_force_over_all_assignments():
    """Enumerate all K^N joint assignments of a tiny data set: log p(x) and p(z_n | x) by brute force."""
    theta = random_params(3, 2, seed=11, separation=1.0)
    x, _ = simulate(theta, 5, seed=12)
    lj = exact.log_joint(x, theta)  # (N, K)
    configs = torch.tensor(list(itertools.product(range(3), repeat=5)))  # (K^N, N)
    log_p_xz = lj[torch.arange(5), configs].sum(-1)  # (K^N,)
    log_px = torch.logsumexp(log_p_xz, 0)
    torch.testing.assert_close(exact.log_evidence(x, theta), log_px, rtol=1e-12, atol=1e-12)
    joint_post = (log_p_xz - log_px).exp()
    marginals = torch.stack([torch.zeros(3, dtype=x.dtype).index_add_(0, configs[:, n], joint_post) for n in range(5)])
    torch.testing.assert_close(exact.posterior(x, theta), marginals, rtol=1e-12, atol=1e-12)


def test_m_step_maximises_the_bound():
    """At fixed q, the closed-form M-step beats every nearby parameter (a local check of the maximiser)."""
    theta = random_params(3, 2, seed=21, separation=1.5)
    x, _ = simulate(theta, 200, seed=22)
    q = exact.posterior(x, theta)
    best = exact.m_step(x, q, "diag", reg_covar=0.0)
    top = exact.elbo(x, best, q)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        eps = lambda t: 1e-3 * torch.randn(t.shape, generator=gen, dtype=t.dtype)  # noqa: E731
        w = (best.weights + eps(best.weights)).clamp_min(1e-6)
        nearby = GMMParams(w / w.sum(), best.locs + eps(best.locs), best.scales * (1 + eps(best.scales)))
        assert exact.elbo(x, nearby, q) <= top + 1e-9
