"""ArviZ InferenceData of posterior draws (experiments/inference_data.py).

* The groups exist (posterior, observed_data, log_likelihood), log_likelihood is (chain, draw, observation), and
  its values are log p(x_n | z_n, theta) recomputed here by hand from the drawn z.
* ``az.loo`` runs and gives a finite elpd on the GMM and on a binary model (noisy-OR), for the exact posterior's
  draws and for a guide's; ``az.compare`` ranks two methods.
* With the exact posterior's draws, elpd_loo is close to log p(x) = sum_n log p(x_n | theta) (the harmonic-mean
  identity, see the module docstring), within a tolerance derived from the importance weights' variance.
* LDA gets no log_likelihood (its observed site is per token, not per document).
"""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest
import torch
from vizoo.experiments.config import GuideArgs
from vizoo.experiments.inference_data import pointwise_log_likelihood, to_inference_data
from vizoo.experiments.posterior_draws import guide_draws, point_sites
from vizoo.experiments.registry import MODELS
from vizoo.models.datasets import DataOptions
from vizoo.models.exact.gmm import GMMParams


def _setup(name, n=30):
    spec = MODELS[name]
    args = spec.args_type()
    x = spec.load(DataOptions(name="synthetic", num_points=n, dim=8), args, 0).x
    return spec, args, x, spec.init_params(x, args, 0)


def _guide(spec, args, x, params, guide="mean_field", s=300):
    g = spec.guides[guide]
    torch.manual_seed(0)
    guide_ = g.build(x, params, **GuideArgs().for_builder(g.build))
    model = (g.learnable or spec.learnable)(params, args)
    sites = point_sites(model, guide_, x)
    return spec.fitted(model, guide_), guide_draws(guide_, x, s, list(sites))


@pytest.mark.parametrize("name", ["gmm", "noisy_or"])
def test_groups_shapes_and_loo_for_exact_and_guide_draws(name):
    spec, args, x, params = _setup(name)
    n, s = x.shape[0], 300
    exact = spec.exact.draws(x, params, s, torch.Generator().manual_seed(0))
    fitted, guided = _guide(spec, args, x, params)
    methods = {"exact": to_inference_data(spec, x, params, exact), "mean_field": to_inference_data(spec, x, fitted, guided)}
    for method, idata in methods.items():
        assert {"posterior", "observed_data", "log_likelihood"} <= set(idata.groups()), method
        ll = idata.log_likelihood["x"]
        assert ll.dims == ("chain", "draw", "observation") and ll.shape == (1, s, n), method
        assert np.isfinite(ll.values).all()
        np.testing.assert_array_equal(idata.observed_data["x"].values, x.numpy())
        loo = az.loo(idata)
        assert math.isfinite(loo.elpd_loo) and loo.n_data_points == n, method
    table = az.compare(methods)
    assert set(table.index) == set(methods) and np.isfinite(table["elpd_loo"]).all()


def test_the_pointwise_log_likelihood_is_the_emission_density_at_the_drawn_latents():
    """GMM: log N(x_n | mu_z, diag sigma_z^2) for the drawn z_n, by hand."""
    spec, _, x, params = _setup("gmm")
    z = spec.exact.draws(x, params, 50, torch.Generator().manual_seed(0))["z"]  # (S, N)
    want = torch.distributions.Normal(params.locs[z], params.scales[z]).log_prob(x).sum(-1)
    torch.testing.assert_close(pointwise_log_likelihood(spec, x, params, {"z": z}), want.double(), rtol=1e-10, atol=1e-10)


def test_lda_has_no_pointwise_log_likelihood():
    spec = MODELS["lda"]
    args = spec.args_type()
    x = spec.load(DataOptions(name="synthetic", num_points=12, dim=12, doc_length=8), args, 0).x
    params = spec.init_params(x, args, 0)
    fitted, draws = _guide(spec, args, x, params, s=20)
    assert pointwise_log_likelihood(spec, x, fitted, draws) is None
    assert "log_likelihood" not in to_inference_data(spec, x, fitted, draws).groups()


def test_loo_of_the_exact_posterior_recovers_log_p_x():
    """Two overlapping components (means 0 and 1, unit scales, equal weights), so every point's posterior puts
    real mass on both and the importance weights w = 1 / p(x_n | z) are bounded. Then loo's estimate of
    1 / p(x_n) from S exact draws has relative variance v_n / S with
        v_n = Var_post(w) / E_post(w)^2 = p(x_n) sum_k pi_k / p(x_n | k) - 1
    (E_post w = 1 / p(x_n), E_post w^2 = sum_k pi_k / (p(x_n) p(x_n | k))), and by the delta method the elpd's
    error has standard deviation sqrt(sum_n v_n / S). Tolerance: 5 of those (PSIS only shrinks the largest
    weights, which are bounded here)."""
    spec = MODELS["gmm"]
    params = GMMParams(torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([[0.0], [1.0]], dtype=torch.float64),
                       torch.ones(2, 1, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    z = torch.multinomial(params.weights, 40, replacement=True, generator=gen)
    x = params.locs[z] + torch.randn(40, 1, generator=gen, dtype=torch.float64)
    s = 4000
    draws = spec.exact.draws(x, params, s, torch.Generator().manual_seed(1))
    loo = az.loo(to_inference_data(spec, x, params, draws))
    comp = torch.distributions.Normal(params.locs[:, 0], params.scales[:, 0]).log_prob(x).double()  # (N, K) log p(x_n | k)
    log_px = torch.logsumexp(comp + params.weights.log(), -1)  # (N,)
    assert float(log_px.sum()) == pytest.approx(float(spec.exact.log_evidence(x, params)), abs=1e-9)
    v = torch.exp(log_px + torch.logsumexp(params.weights.log() - comp, -1)) - 1
    assert float(v.max()) / s < 0.01  # the delta method's premise: each point's relative error is small
    tol = 5 * math.sqrt(float(v.sum()) / s)
    assert abs(loo.elpd_loo - float(log_px.sum())) < tol, (loo.elpd_loo, float(log_px.sum()), tol)
