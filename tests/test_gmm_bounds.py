"""ELBO <= log p(x) and ELBO + KL(q || p(z|x)) = log p(x), exactly, for both guides.

The Pyro side (model + guide under TraceEnum_ELBO) and the plain-torch side (models.exact.gmm)
are independent codes for the same expectation, so they must agree to float64 round-off; the
identity log p(x) = ELBO + KL is algebra, so it holds to round-off for any q.
Round-off scale: sums of O(N K) terms of size O(|log p(x, z)|) ~ 1e2 in float64 -> 1e-9 absolute.
"""

from __future__ import annotations

import itertools

import pyro
import pytest
import torch
from conftest import random_q
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from vizoo.experiments.config import SVIConfig
from vizoo.experiments.train import train_svi
from vizoo.guides import gmm as guides
from vizoo.models.exact import gmm as exact
from vizoo.models.gmm import GMM, model, random_params, simulate

GUIDES = {"mean_field": guides.mean_field, "amortised": guides.amortised}


def perturbed_guide(kind, x, init, seed):
    """A guide with random parameters: random logits, or random network weights."""
    guide = GUIDES[kind](x, init, hidden=(16,))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in guide.parameters():
            p.copy_(2.0 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return guide


def trained_guide(kind, problem, steps=150):
    gmm = GMM(problem.init)
    guide = GUIDES[kind](problem.x, problem.init, hidden=(16,))
    train_svi(gmm, guide, problem.x, SVIConfig(elbo="TraceEnum_ELBO", lr=0.05, steps=steps), seed=0, progress=False)
    return gmm.params.detach(), guide


def check_identity(x, params, q):
    log_px = exact.log_evidence(x, params)
    bound = exact.elbo(x, params, q)
    kl = exact.kl_to_posterior(x, params, q)
    assert bound <= log_px + 1e-9
    assert kl >= -1e-9
    torch.testing.assert_close(bound + kl, log_px, rtol=0, atol=1e-9 * max(1.0, abs(float(log_px))))
    return bound


@pytest.mark.parametrize("kind", ["mean_field", "amortised"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_identity_for_random_guides(kind, seed, small_problem):
    p = small_problem
    guide = perturbed_guide(kind, p.x, p.init, seed)
    with torch.no_grad():
        check_identity(p.x, p.init, guide.probs(p.x))


@pytest.mark.parametrize("kind", ["mean_field", "amortised"])
def test_identity_for_trained_guides(kind, small_problem):
    params, guide = trained_guide(kind, small_problem)
    with torch.no_grad():
        bound = check_identity(small_problem.x, params, guide.probs(small_problem.x))
        # training helped: the trained bound beats the uniform-q bound at the same parameters
        uniform = torch.full_like(guide.probs(small_problem.x), 1 / params.num_components)
        assert bound > exact.elbo(small_problem.x, params, uniform)


def test_identity_for_arbitrary_tables():
    theta = random_params(4, 3, seed=7, separation=1.0)
    x, _ = simulate(theta, 100, seed=8)
    for seed in range(5):
        check_identity(x, theta, random_q(100, 4, seed))
    # KL = 0 exactly at the posterior
    torch.testing.assert_close(exact.kl_to_posterior(x, theta, exact.posterior(x, theta)), torch.tensor(0.0, dtype=x.dtype), atol=1e-9, rtol=0)


@pytest.mark.parametrize("covariance", ["diag", "spherical"])
@pytest.mark.parametrize("kind", ["mean_field", "amortised"])
def test_pyro_enumerated_elbo_equals_exact_elbo(kind, covariance, small_problem):
    """Pyro's TraceEnum_ELBO over model + guide is the exact ELBO computed in plain torch."""
    p = small_problem
    gmm = GMM(p.init, covariance)
    guide = perturbed_guide(kind, p.x, p.init, seed=3)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(gmm, config_enumerate(guide), p.x)
    with torch.no_grad():
        params = gmm.params  # spherical: one scale per component, the mean of the initial ones
        if covariance == "spherical":
            assert (params.scales == params.scales[:, :1]).all()
        expected = exact.elbo(p.x, params, guide.probs(p.x))
    torch.testing.assert_close(torch.tensor(-loss, dtype=torch.float64), expected, rtol=1e-12, atol=1e-9)


def test_pyro_model_log_joint_equals_exact_log_joint(small_problem):
    """The Pyro model's log p(x, z) for every fixed z equals models.exact.gmm.log_joint."""
    p = small_problem
    lj = exact.log_joint(p.x, p.init)
    for k in range(p.args.num_components):
        z = torch.full((p.x.shape[0],), k)
        tr = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(p.x, p.init)
        tr.compute_log_prob()
        per_point = tr.nodes["z"]["log_prob"] + tr.nodes["x"]["log_prob"]
        torch.testing.assert_close(per_point, lj[:, k], rtol=1e-12, atol=1e-10)


def test_monte_carlo_elbo_is_unbiased_for_the_exact_elbo(small_problem):
    """Trace_ELBO (sampled z) averages to the exact ELBO: the mean of M draws is within 5 standard errors."""
    p = small_problem
    gmm = GMM(p.init)
    guide = perturbed_guide("mean_field", p.x, p.init, seed=4)
    pyro.set_rng_seed(0)
    draws = torch.tensor([-Trace_ELBO().loss(gmm, guide, p.x) for _ in range(400)])
    with torch.no_grad():
        expected = float(exact.elbo(p.x, p.init, guide.probs(p.x)))
    se = draws.std() / len(draws) ** 0.5
    assert abs(draws.mean() - expected) < 5 * se


def test_brute_force_joint_enumeration_of_the_bound():
    """ELBO and KL from the per-point formulas equal sums over all K^N joint assignments (N=4, K=3)."""
    theta = random_params(3, 2, seed=31, separation=1.0)
    x, _ = simulate(theta, 4, seed=32)
    q = random_q(4, 3, seed=33)
    lj = exact.log_joint(x, theta)
    configs = torch.tensor(list(itertools.product(range(3), repeat=4)))
    idx = torch.arange(4)
    log_p_xz = lj[idx, configs].sum(-1)
    log_q_z = q.log()[idx, configs].sum(-1)
    q_z = log_q_z.exp()
    bound = (q_z * (log_p_xz - log_q_z)).sum()
    log_px = torch.logsumexp(log_p_xz, 0)
    kl = (q_z * (log_q_z - (log_p_xz - log_px))).sum()
    torch.testing.assert_close(exact.elbo(x, theta, q), bound, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(exact.kl_to_posterior(x, theta, q), kl, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bound + kl, log_px, rtol=1e-12, atol=1e-12)
