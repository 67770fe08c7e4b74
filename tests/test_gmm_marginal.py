"""The collapsed model (z summed out) and its fused likelihood: the fast SVI path.

* mixture_log_likelihood's values and hand-written gradients equal autograd through
  logsumexp(log_joint) to float64 round-off, and pass torch.autograd.gradcheck.
* DiagNormalMixture.log_prob equals MixtureSameFamily(Categorical, Normal.to_event(1)).log_prob.
* Pyro's ELBO of MarginalGMM with the empty guide is log p(x) exactly, for every estimator.
* SVI on it (the benchmark's settings) reaches the EM optimum within 0.01 nats per point from a poor start.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import pyro.distributions as dist
import pytest
import torch
from conftest import Problem
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from vizoo.experiments.config import SVIConfig
from vizoo.experiments.train import train_svi
from vizoo.guides.gmm import marginal
from vizoo.models.exact import gmm as exact
from vizoo.models.gmm import (
    DiagNormalMixture,
    GMMParams,
    MarginalGMM,
    random_params,
    simulate,
)


def leaf_params(seed: int) -> tuple[torch.Tensor, GMMParams]:
    theta = random_params(3, 2, seed=seed, separation=1.0)
    x, _ = simulate(theta, 40, seed=seed + 1)
    return x, GMMParams(*(t.clone().requires_grad_() for t in (theta.weights, theta.locs, theta.scales)))


def test_fused_likelihood_matches_autograd():
    x, p = leaf_params(0)
    fused = exact.mixture_log_likelihood(exact.features(x), p)
    reference = torch.logsumexp(exact.log_joint(x, p), -1)
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    weights = torch.randn(40, dtype=x.dtype)  # an arbitrary upstream gradient
    g_fused = torch.autograd.grad((fused * weights).sum(), (p.weights, p.locs, p.scales))
    g_ref = torch.autograd.grad((reference * weights).sum(), (p.weights, p.locs, p.scales))
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_fused_likelihood_gradcheck():
    x, p = leaf_params(1)
    feats = exact.features(x)
    fn = lambda w, m, s: exact.mixture_log_likelihood(feats, GMMParams(w, m, s))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (p.weights, p.locs, p.scales))


def test_weighted_sums_blockwise_equals_one_product():
    gen = torch.Generator().manual_seed(0)
    resp = torch.rand(10_000, 3, generator=gen, dtype=torch.float64)
    feats = torch.randn(10_000, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(exact.weighted_sums(resp, feats, block=4096), resp.T @ feats, rtol=1e-12, atol=1e-9)


def test_diag_normal_mixture_equals_mixture_same_family():
    theta = random_params(4, 3, seed=2)
    values = torch.randn(5, 7, 3, dtype=torch.float64) * 3
    ours = DiagNormalMixture(theta).log_prob(values)
    ref = dist.MixtureSameFamily(dist.Categorical(theta.weights), dist.Normal(theta.locs, theta.scales).to_event(1))
    torch.testing.assert_close(ours, ref.log_prob(values), rtol=1e-12, atol=1e-10)
    # the feature cache is used only for the very tensor it was computed from
    x = values[0]
    other = x + 1.0
    cached = DiagNormalMixture(theta, (x, exact.features(x)))
    torch.testing.assert_close(cached.log_prob(other), ref.log_prob(other), rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("estimator", [Trace_ELBO, TraceGraph_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO])
def test_collapsed_elbo_is_log_evidence(estimator, small_problem):
    p = small_problem
    gmm = MarginalGMM(p.init)
    guide = marginal(p.x, p.init)
    with warnings.catch_warnings():  # TraceEnum_ELBO warns that nothing is left to enumerate: that is the point
        warnings.simplefilter("ignore", UserWarning)
        loss = estimator(max_plate_nesting=1).loss(gmm, guide, p.x)
    torch.testing.assert_close(torch.tensor(-loss, dtype=torch.float64), exact.log_evidence(p.x, p.init), rtol=1e-12, atol=1e-9)
    q = guide.probs(p.x, p.init)
    assert float(exact.kl_to_posterior(p.x, p.init, q)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_marginal_svi_reaches_em_optimum_fast(seed):
    """Overlapping components (EM needs hundreds of iterations to tol 1e-10); 100 collapsed SVI steps
    with the benchmark's settings reach the EM optimum within 0.01 nats per point."""
    p = Problem(4, 3, 2000, "diag", seed=seed, separation=1.0)
    em = exact.fit_em(p.x, p.init, tol=1e-10, max_iter=5000)
    optimum = float(em.log_likelihood[-1])
    assert optimum - float(exact.log_evidence(p.x, p.init)) / 2000 > 0.05  # a real distance to travel
    gmm = MarginalGMM(p.init)
    cfg = SVIConfig(elbo="Trace_ELBO", lr=0.3, lr_final=0.0143, betas=(0.7, 0.99), steps=100)
    train_svi(gmm, marginal(p.x, p.init), p.x, cfg, seed=0, progress=False)
    ll = float(exact.log_evidence(p.x, gmm.params.detach())) / p.x.shape[0]
    assert abs(ll - optimum) < 0.01


def test_guides_module_imports_on_its_own():
    """vizoo.guides.gmm imports on its own, in a fresh interpreter, before anything else of the package."""
    out = subprocess.run([sys.executable, "-c", "import vizoo.guides.gmm; import vizoo.models"], capture_output=True,
                         text=True, cwd="/")
    assert out.returncode == 0, out.stderr
