"""The one EM / coordinate-ascent driver (:func:`vizoo.models.exact.em.iterate`): its stopping rules, its
monotonicity check, and every exact fit that runs on it keeping its objective non-decreasing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from vizoo.models import declared, fhmm, gmm, lda, lfdm, noisy_or
from vizoo.models.datasets import DataOptions
from vizoo.models.declaration import load
from vizoo.models.exact import declared as declared_exact
from vizoo.models.exact import em, linear_gaussian
from vizoo.models.exact import fhmm as fhmm_exact
from vizoo.models.exact import gmm as gmm_exact
from vizoo.models.exact import lda as lda_exact
from vizoo.models.exact import lfdm as lfdm_exact
from vizoo.models.exact import noisy_or as noisy_or_exact

DIR = "experiments/models"


def counter(values):
    """A step that ignores its state but counts its calls, returning the next of ``values``."""
    it = iter(values)
    return lambda n: (n + 1, next(it))


# --------------------------------------------------------------------------- the driver itself


def test_stops_at_max_iter_without_converging():
    run = em.iterate(counter(float(v) for v in range(1, 100)), 0, max_iter=7, tol=1e-3, initial=0.0)
    assert run.num_steps == run.state == 7 and not run.converged
    assert run.trace == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0] and run.decreases == []


def test_max_iter_zero_runs_no_step():
    run = em.iterate(counter([]), 0, max_iter=0, tol=1.0, initial=3.0)
    assert run.num_steps == 0 and run.trace == [3.0] and not run.converged


@pytest.mark.parametrize("rule", ["abs", "gain", "relative"])
def test_stops_when_the_change_falls_below_tol(rule):
    values = [10.0 - 2.0**-k for k in range(40)]  # gains 2^-k: 0.5, 0.25, ...
    run = em.iterate(counter(values[1:]), 0, max_iter=100, tol=0.01, rule=rule, initial=values[0])
    gains = np.diff(run.trace)
    threshold = 0.01 * abs(run.trace[-2]) if rule == "relative" else 0.01
    assert run.converged and gains[-1] < threshold and (gains[:-1] >= threshold).all()
    assert run.num_steps == len(run.trace) - 1


def test_without_an_initial_value_the_first_step_is_not_checked():
    run = em.iterate(counter([1.0, 1.0]), 0, max_iter=5, tol=1e-3)
    assert run.trace == [1.0, 1.0] and run.converged and run.num_steps == 2


def test_scale_turns_a_per_point_tolerance_into_a_total_one():
    # a total gain of 5 over 100 points is 0.05 per point: below tol = 0.1 per point, above tol = 0.01
    assert em.iterate(counter([5.0]), 0, max_iter=3, tol=0.1, rule="gain", scale=100, initial=0.0).converged
    run = em.iterate(counter([5.0, 10.0, 15.0]), 0, max_iter=3, tol=0.01, rule="gain", scale=100, initial=0.0)
    assert not run.converged


def test_abs_rule_goes_on_past_a_large_fall_but_gain_rules_stop():
    values = [1.0, 0.0, 0.5, 0.6]
    with pytest.warns(em.ObjectiveDecreaseWarning):
        run = em.iterate(counter(values[1:]), 0, max_iter=3, tol=1e-6, rule="abs", initial=values[0])
    assert run.trace == values and run.decreases == [1] and not run.converged
    for rule in ("gain", "relative"):
        with pytest.warns(em.ObjectiveDecreaseWarning):
            run = em.iterate(counter(values[1:]), 0, max_iter=10, tol=1e-6, rule=rule, initial=values[0])
        assert run.trace == values[:2] and run.converged and run.decreases == [1]


def test_a_decrease_raises_when_asked_with_a_clear_message():
    with pytest.raises(em.ObjectiveDecreaseError, match=r"my\.fit: the objective fell from 2 to 1 .* at step 2"):
        em.iterate(counter([2.0, 1.0, 3.0]), 0, max_iter=10, tol=1e-9, initial=0.0, on_decrease="raise", name="my.fit")


def test_a_decrease_is_recorded_silently_when_ignored():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = em.iterate(counter([2.0, 1.0, 3.0]), 0, max_iter=3, tol=1e-9, initial=0.0, on_decrease="ignore")
    assert run.decreases == [2] and run.trace == [0.0, 2.0, 1.0, 3.0]


def test_round_off_is_not_a_decrease():
    big = 1e6
    wobble = big * 1e-12  # far below sqrt(eps) relative
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = em.iterate(counter([big - wobble, big + 1.0]), 0, max_iter=2, tol=-1.0, initial=big, on_decrease="raise")
    assert run.decreases == [] and not run.converged
    # float32 values get float32's round-off
    f32 = [torch.tensor(v, dtype=torch.float32) for v in (-3.0, -3.0001, -2.0)]
    run = em.iterate(counter(f32[1:]), 0, max_iter=2, tol=-1.0, rule="abs", initial=f32[0], on_decrease="raise")
    assert run.decreases == []
    with pytest.raises(em.ObjectiveDecreaseError):
        em.iterate(counter([-3.0001, -2.0]), 0, max_iter=2, tol=-1.0, initial=-3.0, on_decrease="raise")


def test_final_is_appended_and_checked_for_decrease_but_not_for_convergence():
    def final(state, converged):
        return state, 1.0 + 1e-12

    run = em.iterate(counter([0.5, 1.0]), 0, max_iter=2, tol=1e-3, initial=0.0, final=final)
    assert run.trace == [0.0, 0.5, 1.0, 1.0 + 1e-12] and not run.converged and run.num_steps == 2
    with pytest.raises(em.ObjectiveDecreaseError, match="at step 2"):
        em.iterate(counter([0.5, 1.0]), 0, max_iter=2, tol=1e-3, initial=0.0, final=lambda s, c: (s, 0.0),
                   on_decrease="raise")
    seen = []
    em.iterate(counter([0.5, 0.5]), 0, max_iter=5, tol=1e-3, initial=0.0, final=lambda s, c: (seen.append(c) or s, None))
    assert seen == [True]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rule must be one of"):
        em.iterate(counter([]), 0, max_iter=1, tol=0.0, rule="rel")
    with pytest.raises(ValueError, match="on_decrease"):
        em.iterate(counter([]), 0, max_iter=1, tol=0.0, on_decrease="fail")
    with pytest.raises(ValueError, match="max_iter"):
        em.iterate(counter([]), 0, max_iter=-1, tol=0.0)


# --------------------------------------------------------------------------- every exact fit on it


def _gmm():
    truth = gmm.random_params(3, 2, 0, 2.0, "diag")
    x, _ = gmm.simulate(truth, 300, 1)
    init = gmm.init_params(x, gmm.GMMArgs(3, "diag"), 0)
    fit = gmm_exact.fit_em(x, init, "diag", 0.0, 60, 1e-12)  # reg_covar = 0: the M-step is the exact maximiser
    return fit.log_likelihood.tolist()


def _gem(name: str):
    if name == "noisy_or":
        args = noisy_or.NoisyORArgs(3)
        data = noisy_or.synthetic(DataOptions("synthetic", num_points=200, dim=10), args, 0)
        return noisy_or_exact.fit_em(data.x, noisy_or.init_params(data.x, args, 0), max_iter=10, tol=0).log_likelihood
    args = lfdm.LFDMArgs(3, hidden=(5,))
    data = lfdm.synthetic(DataOptions("synthetic", num_points=80, dim=20, doc_length=20), args, 0)
    return lfdm_exact.fit_em(data.x, lfdm.init_params(data.x, args, 0), max_iter=8, tol=0).log_likelihood


def _best_mean_field(name: str):
    if name == "noisy_or":
        args = noisy_or.NoisyORArgs(3)
        data = noisy_or.synthetic(DataOptions("synthetic", num_points=100, dim=10), args, 1)
        return noisy_or_exact.best_mean_field(data.x, noisy_or.init_params(data.x, args, 1), tol=-1.0, max_sweeps=30).elbo
    decl = load(f"{DIR}/diagnosis.toml")
    truth = declared.random_params(decl, 2)
    x, _ = declared.simulate(decl, truth, 100, 3)
    return declared_exact.best_mean_field(decl, truth, x, tol=-1.0, max_sweeps=30).elbo


def _declared_gem():
    decl = load(f"{DIR}/declared_gmm.toml")
    x, _ = declared.simulate(decl, declared.random_params(decl, 2), 200, 3)
    return declared_exact.fit_em(decl, x, declared.init_params(decl, x, declared.DeclaredArgs(), 4), 12, 0).log_likelihood


def _factor_analysis():
    decl = load(f"{DIR}/factor_analysis.toml")
    x, _ = declared.simulate(decl, declared.random_params(decl, 1), 300, 2)
    return linear_gaussian.fit_em(decl, x, declared.init_params(decl, x, declared.DeclaredArgs(), 0), 200, 0).log_likelihood


def _fhmm_data(kind: str):
    args = fhmm.FHMMArgs(2, 2, kind)
    y = fhmm.synthetic(DataOptions(name="synthetic", num_points=6, num_steps=12, dim=4), args, 0).x
    return y, fhmm.init_params(y, args, 1)


def _fhmm(kind: str, how: str):
    y, init = _fhmm_data(kind)
    if how == "em":
        return fhmm_exact.fit_em(y, init, max_iter=15, tol=0).log_likelihood
    if how == "mean_field":
        return fhmm_exact.fit_mean_field(y, init, "factorised", max_sweeps=30, tol=-1.0).elbo
    return fhmm_exact.fit_variational_em(y, init, how, max_iter=10, tol=0).elbo


def _lda(topics: str):
    truth = lda.true_params(3, 30, 5, alpha=0.3)
    x, _ = lda.simulate(truth, 60, 25, 6)
    alpha = torch.full((3,), 0.3, dtype=x.dtype)
    if topics == "bayesian":
        return lda_exact.fit_cavi(x, alpha, 3, eta=0.1, max_sweeps=30, tol=-1.0).elbo
    beta = torch.softmax(torch.randn(3, x.shape[1], generator=torch.Generator().manual_seed(0), dtype=x.dtype), -1)
    return lda_exact.fit_cavi(x, alpha, 3, beta=beta, update_beta=topics == "point", max_sweeps=30, tol=-1.0).elbo


FITS = {
    "gmm.fit_em": _gmm,
    "noisy_or.fit_em (generalised EM)": lambda: _gem("noisy_or"),
    "lfdm.fit_em (generalised EM)": lambda: _gem("lfdm"),
    "declared.fit_em (generalised EM)": _declared_gem,
    "linear_gaussian.fit_em": _factor_analysis,
    "binary.best_mean_field (CAVI)": lambda: _best_mean_field("noisy_or"),
    "declared.best_mean_field (CAVI)": lambda: _best_mean_field("declared"),
    "fhmm.fit_em gaussian": lambda: _fhmm("gaussian", "em"),
    "fhmm.fit_em bernoulli": lambda: _fhmm("bernoulli", "em"),
    "fhmm.fit_mean_field": lambda: _fhmm("gaussian", "mean_field"),
    "fhmm.fit_variational_em structured": lambda: _fhmm("gaussian", "structured"),
    "fhmm.fit_variational_em factorised": lambda: _fhmm("bernoulli", "factorised"),
    "lda.fit_cavi bayesian topics": lambda: _lda("bayesian"),
    "lda.fit_cavi fixed topics": lambda: _lda("fixed"),
    "lda.fit_cavi point topics (variational EM)": lambda: _lda("point"),
}


@pytest.mark.filterwarnings("error::vizoo.models.exact.em.ObjectiveDecreaseWarning")
@pytest.mark.parametrize("name", list(FITS))
def test_every_exact_fit_never_lowers_its_objective(name):
    """On a small simulated problem, each fit's trace (log-likelihood for EM, ELBO for CAVI and variational EM) is
    non-decreasing up to round-off, and the driver's own check (turned into an error here) agrees."""
    trace = [float(v) for v in FITS[name]()]
    assert len(trace) >= 3, trace
    for old, new in zip(trace, trace[1:]):
        assert new >= old - em.round_off(old, new), (name, old, new)
    assert trace[-1] > trace[0], (name, trace[0], trace[-1])
