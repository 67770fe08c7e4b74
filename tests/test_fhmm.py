"""Factorial HMM through Pyro (models.fhmm, guides.fhmm): the model's and guides' sites score what the exact
module scores, the guides' ELBO identities with KL summed over every joint path, SVI reaching each family's
fixed point, the score-function path, the chorale rolls, bad input, and the CLI."""

from __future__ import annotations

import json

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO
from vizoo.experiments.config import SVIConfig, parse_config
from vizoo.experiments.registry import MODELS
from vizoo.experiments.train import train_svi
from vizoo.guides import fhmm as guides
from vizoo.models import fhmm
from vizoo.models.datasets import DataOptions
from vizoo.models.errors import ConfigError, DataError
from vizoo.models.exact import fhmm as exact

SPEC = MODELS["fhmm"]
GUIDES = ["mean_field", "structured_mean_field", "amortised"]


def tiny(kind: str, m: int = 2, l: int = 2, seed: int = 0):
    """3 sequences of lengths 4, 2, 3 (NaN-padded), D = 3, random parameters."""
    args = fhmm.FHMMArgs(m, l, kind)
    params = fhmm.true_params(args, 3, seed)
    y, _ = fhmm.simulate(params, 3, 4, seed + 1)
    y[1, 2:] = float("nan")
    y[2, 3:] = float("nan")
    return y, params, args


def perturbed(guide, seed: int):
    """The guide moved to an arbitrary point of its family (every parameter jittered)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return guide


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("g", GUIDES)
def test_guides_elbo_plus_kl_is_log_evidence(kind, g):
    """For each guide at an arbitrary point: ELBO <= log p(y) and ELBO + KL(q || p(s|y)) = log p(y) to 1e-8,
    with KL summed over every joint path of every sequence (independent of the closed-form ELBO)."""
    y, params, args = tiny(kind)
    guide = perturbed(SPEC.guides[g].build(y, params), seed=1)
    with torch.no_grad():
        q = guide.variational(y)
        bound = exact.elbo(y, params, q)
        log_p = exact.forward_backward(y, params).log_evidence
        lengths = exact.sequence_lengths(y)
        for n in range(3):
            kl = exact.brute_force_kl(q, n, y[n], params, int(lengths[n]))
            assert kl > 1e-6
            torch.testing.assert_close(bound[n] + kl, log_p[n], rtol=0, atol=1e-8)
        assert (bound <= log_p).all()


@pytest.mark.parametrize("kind", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("g", GUIDES)
def test_pyro_sites_score_the_closed_form_elbo(kind, g):
    """Trace_ELBO's estimate from Pyro's model and guide sites (sampled chain paths, masked padding) is an
    unbiased estimate of the closed-form ELBO: the mean of 400 draws is within 4 standard errors."""
    y, params, args = tiny(kind)
    guide = perturbed(SPEC.guides[g].build(y, params), seed=2)
    module = fhmm.FHMM(params)
    pyro.set_rng_seed(0)
    with torch.no_grad():
        draws = torch.tensor([-Trace_ELBO().loss(module, guide, y) for _ in range(400)])
        target = float(exact.elbo(y, params, guide.variational(y)).sum())
    se = float(draws.std()) / 20
    assert abs(float(draws.mean()) - target) < 4 * se + 1e-9, (float(draws.mean()), target, se)


def test_guides_refuse_other_data_and_bad_baselines():
    y, params, args = tiny("gaussian")
    with pytest.raises(ValueError, match="built for 3 sequences, got 2"):
        SPEC.guides["mean_field"].build(y, params).variational(y[:2])
    with pytest.raises(ValueError, match="baseline"):
        guides.mean_field(y, params, baseline="network")
    SPEC.guides["amortised"].build(y, params).variational(y[:2])  # the network takes any sequences


def freeze(module):
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@pytest.fixture(scope="module")
def noisy():
    """10 Gaussian sequences of 20 steps (M=3, L=2, D=5) at W scale 0.5: the true parameters, frozen."""
    args = fhmm.FHMMArgs(3, 2, "gaussian")
    data = SPEC.load(DataOptions(name="synthetic", num_points=10, num_steps=20, dim=5, separation=2.0), args, 0)
    return data.x, data.truth, args


TOL_PER_STEP = 0.005  # nats per time step


@pytest.mark.parametrize("g,family", [("mean_field", "factorised"), ("structured_mean_field", "structured"), ("amortised", "structured")])
def test_svi_reaches_the_fixed_point_of_its_family(noisy, g, family):
    """Analytic_ELBO SVI from a uniform q, model frozen at the truth, ends within TOL_PER_STEP nats per time
    step of the family's optimum: the better of Ghahramani & Jordan's fixed points from a uniform start and
    from the exact posterior marginals (both local optima of a non-concave objective)."""
    y, truth, args = noisy
    post = exact.forward_backward(y, truth).marginals
    best = max(exact.fit_mean_field(y, truth, family, init=init).elbo[-1] for init in (None, post))
    guide = SPEC.guides[g].build(y, truth)
    train_svi(freeze(fhmm.FHMM(truth)), guide, y, SVIConfig(elbo="Analytic_ELBO", lr=0.1, lr_final=0.01, steps=800),
              seed=0, progress=False)
    with torch.no_grad():
        reached = float(exact.elbo(y, truth, guide.variational(y)).sum())
    steps = int(exact.sequence_lengths(y).sum())
    assert reached >= best - TOL_PER_STEP * steps, (reached, best)
    assert reached <= float(exact.log_evidence(y, truth)) + 1e-9


def test_score_function_svi_closes_most_of_the_gap(noisy):
    """The score-function path works: TraceGraph_ELBO (sampled paths, decaying-average baseline) with the
    amortised guide closes at least 90% of the gap between the uniform start and the structured fixed point."""
    y, truth, args = noisy
    best = exact.fit_mean_field(y, truth, "structured").elbo[-1]
    guide = SPEC.guides["amortised"].build(y, truth)
    with torch.no_grad():
        start = float(exact.elbo(y, truth, guide.variational(y)).sum())
    train_svi(freeze(fhmm.FHMM(truth)), guide, y, SVIConfig(elbo="TraceGraph_ELBO", num_particles=2, lr=0.02, steps=150),
              seed=0, progress=False)
    with torch.no_grad():
        reached = float(exact.elbo(y, truth, guide.variational(y)).sum())
    print(f"score-function path closed {(reached - start) / (best - start):.3f} of the gap")
    assert reached - start > 0.9 * (best - start), (start, reached, best)


def test_pyro_log_joint_equals_the_exact_path_score():
    """The Pyro model's log joint equals the exact module's path score (sampled paths, padded sequences)."""
    y, params, args = tiny("bernoulli", 2, 3)
    module = fhmm.FHMM(params)
    trace = pyro.poutine.trace(module).get_trace(y)
    trace.compute_log_prob()
    s = trace.nodes["s"]["value"]  # (M, N, T)
    log_joint = trace.nodes["s"]["log_prob"].sum(0) + trace.nodes["y"]["log_prob"]  # (N,)
    lengths = exact.sequence_lengths(y)
    table = exact.emission_log_prob(torch.nan_to_num(y), params)  # (N, T, S)
    states = exact.joint_states(2, 3)
    for n in range(3):
        path = s[:, n, : lengths[n]].T  # (T_n, M)
        index = (path[:, 0] * 3 + path[:, 1])
        assert (states[index] == path).all()
        pi = torch.log_softmax(params.init_logits, -1)
        a = torch.log_softmax(params.trans_logits, -1)
        score = pi[torch.arange(2), path[0]].sum() + a[torch.arange(2), path[:-1], path[1:]].sum()
        score = score + table[n, torch.arange(int(lengths[n])), index].sum()
        torch.testing.assert_close(log_joint[n], score, rtol=0, atol=1e-10)


def test_bad_input_is_refused():
    args = fhmm.FHMMArgs(2, 2, "bernoulli")
    with pytest.raises(DataError, match="ragged sequences need their lengths"):
        fhmm.validate_data([torch.zeros(3, 2), torch.zeros(5, 2)], args)
    with pytest.raises(DataError, match=r"binary rolls \(0 or 1\), but sequence 0, step 1, column 1 is 0.5"):
        y = torch.zeros(2, 3, 2)
        y[0, 1, 1] = 0.5
        fhmm.validate_data(y, args)
    with pytest.raises(DataError, match="sequence 1 has NaN in step 0 next to numbers"):
        y = torch.zeros(2, 3, 2)
        y[1, 0, 0] = float("nan")
        fhmm.validate_data(y, args)
    with pytest.raises(DataError, match=r"\(num_sequences, num_steps, dim\)"):
        fhmm.validate_data(torch.zeros(3, 2), args)
    with pytest.raises(DataError, match="step 2 holds an infinite value"):
        y = torch.zeros(1, 3, 2)
        y[0, 2, 0] = float("inf")
        fhmm.validate_data(y, fhmm.FHMMArgs())
    padded = fhmm.pad([torch.ones(3, 2), torch.zeros(1, 2)])
    assert torch.equal(exact.sequence_lengths(fhmm.validate_data(padded, args)), torch.tensor([3, 1]))


def test_too_many_joint_states_is_refused_by_the_config_before_any_work():
    raw = {"name": "t", "model": "fhmm", "data": {"name": "synthetic"}, "model_args": {"num_chains": 7, "num_states": 4}}
    with pytest.raises(ConfigError, match=r"num_chains=7, num_states=4: exact inference needs L\^M = 4\^7 = 16,384 joint states"):
        parse_config(raw)
    raw["em"] = {"enabled": False}
    raw["svi"] = {"elbo": "Analytic_ELBO"}
    parse_config(raw)  # trains without the exact reference (Gaussian expectations need no joint table)
    raw["model_args"]["emission"] = "bernoulli"
    with pytest.raises(ConfigError, match=r"Bernoulli emissions need the L\^M = 16,384-state table for every expectation"):
        parse_config(raw)
    with pytest.raises(ConfigError, match="Analytic_ELBO needs the ELBO in closed form"):
        parse_config({"name": "t", "model": "gmm", "svi": {"elbo": "Analytic_ELBO"}})
    with pytest.raises(ConfigError, match="TraceEnum_ELBO would sum over the L\\^T paths"):
        parse_config({"name": "t", "model": "fhmm", "data": {"name": "synthetic"}, "svi": {"elbo": "TraceEnum_ELBO"}})


def test_gaussian_mean_field_runs_beyond_the_exact_limit():
    """M=7, L=4 (16,384 joint states): the Gaussian expectations are closed form, so both fixed points and
    the analytic ELBO run without any joint table."""
    args = fhmm.FHMMArgs(7, 4, "gaussian")
    params = fhmm.true_params(args, 5, 0)
    y, _ = fhmm.simulate(params, 2, 10, 1)
    for family in ("factorised", "structured"):
        fit = exact.fit_mean_field(y, params, family, max_sweeps=20)
        assert all(b >= a - 1e-9 * abs(a) for a, b in zip(fit.elbo, fit.elbo[1:]))


def test_chorales_are_binary_rolls_with_a_fixed_split(tmp_path):
    from vizoo.models.datasets import chorales

    a = chorales.chorales(subset=4, cache_dir=tmp_path)
    b = chorales.chorales(subset=4, cache_dir=tmp_path)  # from the cache
    assert len(list(tmp_path.glob("chorales-*.npz"))) == 1
    assert a.names == b.names and torch.equal(torch.nan_to_num(a.train, 7.0), torch.nan_to_num(b.train, 7.0))
    assert a.train.shape[0] == 4 and a.test.shape[0] == 1 and set(a.names[0]).isdisjoint(a.names[1])
    args = fhmm.FHMMArgs(2, 2, "bernoulli")
    for y in (a.train, a.test):
        fhmm.validate_data(y, args)  # binary, NaN only as padding
        lengths = exact.sequence_lengths(y)
        assert (lengths >= 16).all()
        rows = y[exact.step_mask(lengths, y.shape[1])]
        assert rows.sum(-1).max() <= 4  # four voices: at most four pitches at once
    assert (a.train.nan_to_num().sum((0, 1)) + a.test.nan_to_num().sum((0, 1)) > 0).all()  # only pitches in use
    assert list(a.pitches) == sorted(a.pitches) and 30 < a.pitches[0] and a.pitches[-1] < 90
    (cache,) = tmp_path.glob("chorales-*.npz")
    cache.write_bytes(cache.read_bytes()[:100])  # truncated: rebuilt, with a warning, not a crash
    with pytest.warns(UserWarning, match="unreadable chorale cache"):
        c = chorales.chorales(subset=4, cache_dir=tmp_path)
    assert c.names == a.names and not list(tmp_path.glob("*.tmp"))


def test_cli_run_on_synthetic_sequences(tmp_path):
    """vizoo run: Baum-Welch row, exact ELBO/log p/KL for all three guides, held-out table per step."""
    from vizoo.experiments.cli import main

    cfg = tmp_path / "fhmm.toml"
    cfg.write_text(
        'model = "fhmm"\nguides = ["mean_field", "structured_mean_field", "amortised"]\n'
        '[data]\nname = "synthetic"\nnum_points = 4\nnum_steps = 8\ndim = 3\n'
        '[model_args]\nnum_chains = 2\nnum_states = 2\n[svi]\nelbo = "Analytic_ELBO"\nsteps = 20\n[em]\nmax_iter = 20\n'
    )
    assert main(["run", str(cfg), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["enumerable"] and metrics["num_heldout"] == 4
    trace = metrics["exact"]["log_likelihood_trace"]
    assert all(b >= a - 1e-9 for a, b in zip(trace, trace[1:]))
    for g in GUIDES:
        m = metrics["guides"][g]
        assert m["final_elbo_per_point"] <= m["log_likelihood_per_point"] + 1e-9
        assert abs(m["final_elbo_per_point"] + m["kl_per_point"] - m["log_likelihood_per_point"]) < 1e-9
        assert metrics["heldout"][f"SVI {g}"]["test log p(y)/step"] < 0
    assert "Baum-Welch" in (run / "report.md").read_text()
