"""Exact inference for the binary-latent models (noisy-OR network, latent factor document model), float64.

What is checked, and why the tolerances are what they are:
* Streaming enumeration (chunks, running log-sum-exp) equals brute force over itertools.product with
  the likelihood written out term by term (same maths, independent code): log p(x), posterior
  marginals and second moments to 1e-10 (round-off of sums of O(K + J) terms of size O(10)).
  Forcing tiny chunks changes nothing, to round-off.
* Pyro's TraceEnum_ELBO with the guide's site enumerated (model + guide, through Pyro) equals the
  plain-torch exact ELBO: two independent codes for the same sum, so they agree to round-off.
* ELBO <= log p(x) and ELBO + KL(q || p(z|x)) = log p(x) to 1e-8 for both guides, both models: the
  ELBO (closed-form entropy) and the KL (q log q summed over configurations) are computed apart.
* Explaining away: two causes of one observed symptom are negatively correlated a posteriori, so even
  the best mean-field q has KL > 0.
* Coordinate ascent (the best mean field) and generalised EM never decrease their objectives.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import TraceEnum_ELBO, config_enumerate
from vizoo.experiments.config import parse_config
from vizoo.guides import lfdm as lfdm_guides
from vizoo.guides import noisy_or as noisy_or_guides
from vizoo.models import lfdm, noisy_or
from vizoo.models.errors import ConfigError
from vizoo.models.exact import binary
from vizoo.models.exact import lfdm as lfdm_exact
from vizoo.models.exact import noisy_or as noisy_or_exact


class Case:
    """A small problem: data x, parameters, and the model's modules."""

    def __init__(self, name: str, k: int, seed: int):
        self.name = name
        if name == "noisy_or":
            self.params = noisy_or.random_network(k, 7, seed)
            # strictly positive weights, so the PyroModule (W = exp(u)) holds exactly these parameters
            self.params = noisy_or.NoisyORParams(self.params.prior_logits, self.params.weights + 0.3, self.params.leak)
            self.x, _ = noisy_or.simulate(self.params, 30, seed + 1)
            self.exact, self.guides, self.module = noisy_or_exact, noisy_or_guides, noisy_or.NoisyOR
        else:
            self.params = lfdm.true_params(k, 25, (6,), seed)
            self.x, _ = lfdm.simulate(self.params, 20, 15, seed + 1)
            self.exact, self.guides, self.module = lfdm_exact, lfdm_guides, lfdm.LFDM


CASES = [("noisy_or", 3, 0), ("noisy_or", 5, 1), ("lfdm", 2, 0), ("lfdm", 4, 1)]


@pytest.fixture(params=CASES, ids=lambda c: f"{c[0]}-K{c[1]}-seed{c[2]}")
def case(request) -> Case:
    return Case(*request.param)


def brute_log_joint(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """All configurations (C, K) and log p(x_n, c) (N, C), one configuration at a time."""
    p, x = case.params, case.x
    k = p.num_latents
    configs, columns = [], []
    for bits in itertools.product([0.0, 1.0], repeat=k):
        c = torch.tensor(bits, dtype=torch.float64)
        log_prior = sum(
            math.log(torch.sigmoid(p.prior_logits[i])) if bits[i] else math.log(torch.sigmoid(-p.prior_logits[i]))
            for i in range(k)
        )
        if case.name == "noisy_or":
            p_off = (1 - p.leak) * torch.exp(-(c[:, None] * p.weights).sum(0))  # (J,)
            lik = torch.where(x == 1, torch.log(1 - p_off), torch.log(p_off)).sum(-1)
        else:
            h = c
            for i, (w, b) in enumerate(p.layers):
                h = F.linear(h, w, b)
                h = torch.tanh(h) if i < len(p.layers) - 1 else h
            word = torch.distributions.Categorical(logits=h)
            lik = (x * word.log_prob(torch.arange(x.shape[1]))).sum(-1)
        configs.append(c)
        columns.append(lik + log_prior)
    return torch.stack(configs), torch.stack(columns, -1)


def test_enumeration_matches_brute_force(case):
    configs, table = brute_log_joint(case)
    post = case.exact.posterior(case.x, case.params, moments=True)
    weights = torch.softmax(table, -1)  # (N, C)
    torch.testing.assert_close(post.log_evidence, torch.logsumexp(table, -1), rtol=0, atol=1e-10)
    torch.testing.assert_close(post.marginals, weights @ configs, rtol=0, atol=1e-10)
    second = torch.einsum("nc,ci,cj->nij", weights, configs, configs)
    torch.testing.assert_close(post.second_moments, second, rtol=0, atol=1e-10)


def test_tiny_chunks_change_nothing(case, monkeypatch):
    whole = case.exact.posterior(case.x, case.params, moments=True)
    q = torch.sigmoid(torch.randn(case.x.shape[0], case.params.num_latents, dtype=torch.float64,
                                  generator=torch.Generator().manual_seed(0)))
    elbo = case.exact.elbo(case.x, case.params, q)
    monkeypatch.setattr(binary, "CHUNK_ELEMENTS", 1)  # one configuration per chunk
    assert binary.chunk_size(case.x.shape[0], case.x.shape[1], case.params.num_latents) == 1
    chunked = case.exact.posterior(case.x, case.params, moments=True)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    torch.testing.assert_close(case.exact.elbo(case.x, case.params, q), elbo, rtol=0, atol=1e-9)


def perturbed_guide(case: Case, kind: str, seed: int):
    guide = getattr(case.guides, kind)(case.x, case.params, hidden=(8,))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in guide.parameters():
            p.copy_(1.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return guide


@pytest.mark.parametrize("kind", ["mean_field", "amortised"])
@pytest.mark.parametrize("seed", [0, 1])
def test_elbo_identity_and_pyro_agree(case, kind, seed):
    guide = perturbed_guide(case, kind, seed)
    with torch.no_grad():
        q = guide.probs(case.x)
        log_px = case.exact.log_evidence(case.x, case.params)
        bound = case.exact.elbo(case.x, case.params, q)
        kl = case.exact.kl_to_posterior(case.x, case.params, q)
    scale = max(1.0, abs(float(log_px)))
    assert bound <= log_px + 1e-9 * scale
    assert kl > 0  # a random guide is not the posterior
    torch.testing.assert_close(bound + kl, log_px, rtol=0, atol=1e-8 * scale)
    # the same ELBO through Pyro: model and guide traced, the guide's 2^K configurations enumerated
    module = case.module(case.params)
    pyro_bound = -TraceEnum_ELBO(max_plate_nesting=1).loss(module, config_enumerate(guide), case.x)
    assert abs(pyro_bound - float(bound)) < 1e-9 * scale


def test_saturated_guides_keep_the_identity(case):
    """q(z_nk = 1) exactly 0 or 1 (a sigmoid saturates beyond |logit| ~ 37): no configuration's mass is lost."""
    gen = torch.Generator().manual_seed(3)
    q = torch.sigmoid(60 * torch.randn(case.x.shape[0], case.params.num_latents, generator=gen, dtype=torch.float64))
    q[0, 0], q[-1, -1] = 0.0, 1.0
    assert ((q == 0) | (q == 1)).any()
    log_px = case.exact.log_evidence(case.x, case.params)
    bound = case.exact.elbo(case.x, case.params, q)
    kl = case.exact.kl_to_posterior(case.x, case.params, q)
    assert torch.isfinite(bound) and torch.isfinite(kl) and bound <= log_px
    torch.testing.assert_close(bound + kl, log_px, rtol=0, atol=1e-8 * abs(float(log_px)))
    # a point mass q: the ELBO is log p(x, c) at its configuration
    configs, table = brute_log_joint(case)
    point = (q > 0.5).to(q.dtype)
    index = (point[:, None, :] == configs[None]).all(-1).to(q.dtype).argmax(-1)
    torch.testing.assert_close(case.exact.elbo(case.x, case.params, point), table.gather(1, index[:, None]).sum(),
                               rtol=0, atol=1e-9 * abs(float(log_px)))


def test_pyro_model_log_joint_matches_the_exact_table(case):
    """The Pyro model, run with each configuration of the latents fixed, scores the exact table's column."""
    from pyro import poutine

    configs, table = brute_log_joint(case)
    site = "d" if case.name == "noisy_or" else "z"
    model = noisy_or.model if case.name == "noisy_or" else lfdm.model
    n = case.x.shape[0]
    for c in range(configs.shape[0]):
        trace = poutine.trace(poutine.condition(model, {site: configs[c].expand(n, -1)})).get_trace(case.x, case.params)
        trace.compute_log_prob()
        total = sum(trace.nodes[s]["log_prob"] for s in (site, "x" if site == "z" else "s"))
        torch.testing.assert_close(total, table[:, c], rtol=0, atol=1e-10)


def test_explaining_away_two_causes_one_symptom():
    """Two rare causes, one symptom observed on: each cause alone explains it, so they compete."""
    params = noisy_or.NoisyORParams(
        prior_logits=torch.logit(torch.tensor([0.1, 0.1], dtype=torch.float64)),
        weights=torch.tensor([[2.0], [2.0]], dtype=torch.float64),
        leak=torch.tensor([0.01], dtype=torch.float64),
    )
    s = torch.ones(1, 1, dtype=torch.float64)
    post = noisy_or_exact.posterior(s, params, moments=True)
    corr = post.correlation()[0, 0, 1]
    assert corr < -0.5  # strongly negative: knowing one cause is present explains the symptom away
    best = noisy_or_exact.best_mean_field(s, params)
    kl = noisy_or_exact.kl_to_posterior(s, params, best.probs)
    assert kl > 0.1  # the best factorised q still misses the dependence (here 0.49 nats: it picks one cause)
    # and it is the best: no point on a grid of factorised q beats it
    grid = torch.linspace(0.01, 0.99, 25, dtype=torch.float64)
    qs = torch.cartesian_prod(grid, grid)
    kls = torch.stack([noisy_or_exact.kl_to_posterior(s, params, q[None]) for q in qs])
    assert kl <= kls.min() + 1e-9


@pytest.mark.parametrize("case_args", CASES, ids=lambda c: f"{c[0]}-K{c[1]}-seed{c[2]}")
def test_best_mean_field_is_monotone_and_beats_any_guide(case_args):
    case = Case(*case_args)
    best = case.exact.best_mean_field(case.x, case.params)
    assert np.diff(best.elbo).min() >= -1e-9 * abs(best.elbo[-1])
    bound = case.exact.elbo(case.x, case.params, best.probs)
    assert abs(float(bound) - best.elbo[-1]) < 1e-9 * abs(best.elbo[-1])
    for seed in range(3):
        q = perturbed_guide(case, "amortised", seed).probs(case.x).detach()
        assert case.exact.elbo(case.x, case.params, q) <= bound + 1e-9


def _gem_case(name: str, seed: int):
    from vizoo.models.datasets import DataOptions

    if name == "noisy_or":
        args = noisy_or.NoisyORArgs(3)
        data = noisy_or.synthetic(DataOptions("synthetic", num_points=300, dim=10), args, seed)
        return noisy_or_exact, data.x, noisy_or.init_params(data.x, args, seed)
    args = lfdm.LFDMArgs(3, hidden=(5,))
    data = lfdm.synthetic(DataOptions("synthetic", num_points=120, dim=30, doc_length=20), args, seed)
    return lfdm_exact, data.x, lfdm.init_params(data.x, args, seed)


@pytest.mark.parametrize("name", ["noisy_or", "lfdm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_generalised_em_never_decreases_log_likelihood(name, seed):
    exact, x, init = _gem_case(name, seed)
    result = exact.fit_em(x, init, max_iter=15, tol=0)
    trace = np.asarray(result.log_likelihood)
    assert np.diff(trace).min() >= -1e-12 * abs(trace).max()
    assert trace[-1] > trace[0] + 0.05  # and it actually climbs
    # the trace is the log-likelihood of the parameters it returns
    assert abs(float(exact.log_evidence(x, result.params)) / x.shape[0] - trace[-1]) < 1e-12 * abs(trace[-1])


def test_enumeration_limit_is_named():
    with pytest.raises(ValueError, match=r"num_latents=21 is too large for exact enumeration: the limit is 20"):
        binary.check_enumerable(21)
    s = torch.zeros(2, 3, dtype=torch.float64)
    params = noisy_or.NoisyORParams(torch.zeros(21, dtype=torch.float64), torch.ones(21, 3, dtype=torch.float64),
                                    torch.full((3,), 0.1, dtype=torch.float64))
    with pytest.raises(ValueError, match="the limit is 20"):
        noisy_or_exact.log_evidence(s, params)  # refused at once, before any table is built


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"model": "noisy_or", "data": {"name": "synthetic"}, "model_args": {"num_causes": 21}},
         "model_args.num_causes=21 is too large for exact enumeration (the limit is 20"),
        ({"model": "lfdm", "data": {"name": "synthetic"}, "model_args": {"num_factors": 13}, "svi": {"elbo": "TraceEnum_ELBO"}},
         "model_args.num_factors=13 is too large for svi.elbo='TraceEnum_ELBO'"),
    ],
)
def test_config_refuses_enumeration_beyond_the_limits(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        parse_config({"name": "x", **raw})


def test_large_k_without_the_exact_reference_is_allowed():
    cfg = parse_config({"name": "x", "model": "noisy_or", "data": {"name": "synthetic"},
                        "model_args": {"num_causes": 30}, "em": {"enabled": False}})
    assert cfg.model_args.num_causes == 30
