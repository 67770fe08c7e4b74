"""Parameter groups (experiments/param_groups.py), the wall-time budget (svi.max_seconds) and the time to within 1%
of the final ELBO (experiments/convergence.py), which together make `vizoo compare --time` a fair comparison.

* Every registered guide (and Pyro's autoguides where they apply) splits into model / network / local, each
  trainable parameter in exactly one group, and the local ones are exactly the guide's parameters whose size
  grows with the number of points.
* One SGD step moves each group by its own step size times its gradient.
* Without group keys the optimiser is the single group of before; group keys all equal to svi.lr give the same
  run bit for bit; a run with groups resumes bit for bit.
* svi.max_seconds stops between steps (a fake clock, so nothing here depends on timing).
"""

from __future__ import annotations

import copy
import math
import types

import pyro
import pytest
import torch
from conftest import (
    assert_same_run,
    killed_run,
    tiny_config,
)
from vizoo.experiments import param_groups
from vizoo.experiments import train as train_module
from vizoo.experiments.cli import main
from vizoo.experiments.compare import CompareOptions, plan
from vizoo.experiments.config import SIZE_LIMITS, GuideArgs, SVIConfig, parse_config
from vizoo.experiments.convergence import smooth, time_to_within
from vizoo.experiments.registry import MODELS
from vizoo.experiments.run import resume_experiment
from vizoo.experiments.train import Analytic_ELBO, train_svi
from vizoo.guides import auto
from vizoo.models.datasets import DataOptions
from vizoo.models.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def _data(spec, n: int):
    args = spec.args_type()
    if "synthetic" in spec.datasets:
        opts = DataOptions(name="synthetic", num_points=n, dim=12, num_steps=6, vocab_size=30, doc_length=8)
    else:  # the VAE: the first n digits
        opts = DataOptions(name="digits", subset=n)
    return spec.load(opts, args, 0).x, args


def _build(spec, g, n: int):
    """Model module and guide at n points, every guide parameter trainable (local updates, which freeze the
    local parameters, off where the guide has them)."""
    x, args = _data(spec, n)
    init = spec.init_params(x, args, 0)
    pyro.set_rng_seed(0)
    kwargs = GuideArgs().for_builder(g.build)
    if "local_steps" in kwargs:
        kwargs["local_steps"] = 0
    guide = g.build(x, init, **kwargs)
    return (g.learnable or spec.learnable)(init, args), guide


def _autoguides(spec):
    """Pyro's autoguides as the comparison builds them, for models whose latents are all continuous."""
    x, args = _data(spec, 4)
    init = spec.init_params(x, args, 0)
    if auto.why_not(spec.learnable(init, args), x):
        return []
    return [types.SimpleNamespace(name=kind, learnable=None,
                                  build=(lambda kind: lambda x, init: auto.AutoBaseline(kind, spec.learnable(init, spec.args_type()), x))(kind))
            for kind in auto.KINDS]


PAIRS = [(spec, g) for spec in MODELS.values() for g in spec.guides.values()]
PAIRS += [(spec, g) for spec in MODELS.values() if spec.name in ("vae", "factor_analysis", "declared_vae") for g in _autoguides(spec)]


@pytest.mark.parametrize("spec, g", PAIRS, ids=[f"{s.name}-{g.name}" for s, g in PAIRS])
def test_every_guides_parameters_fall_in_one_group_and_the_local_ones_are_those_that_grow_with_n(spec, g):
    small, large = (_build(spec, g, n) for n in (10, 17))
    shapes = []
    for model, guide in (small, large):
        groups = param_groups.split(model, guide)
        trainable = [p for m in (model, guide) for p in m.parameters() if p.requires_grad]
        grouped = [p for members in groups.values() for _, p in members]
        assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}  # exactly one each
        shapes.append({name: (group, tuple(p.shape)) for group, members in groups.items() for name, p in members})
    grows = {name for name, (_, shape) in shapes[0].items() if shape != shapes[1][name][1]}
    local = {name for name, (group, _) in shapes[0].items() if group == "local"}
    assert grows == local, (grows, local)
    free = g.name in ("mean_field", "structured_mean_field", "AutoNormal", "AutoDelta")
    assert bool(local) == free or (spec.name, g.name) == ("gmm", "marginal")


def test_a_guide_that_declares_a_parameter_it_lacks_is_refused():
    class Broken(torch.nn.Module):
        local_parameters = ("logits",)

        def __init__(self):
            super().__init__()
            self.loc = torch.nn.Parameter(torch.zeros(3))

    with pytest.raises(ValueError, match=r"declares local parameters \['logits'\]"):
        param_groups.split(torch.nn.Linear(1, 1), Broken())


def _tagger(n: int = 12):
    spec = MODELS["pos_tagger_vb"]
    g = spec.guides["structured_mean_field"]
    return spec, *_build(spec, g, n), _data(spec, n)[0]


def test_one_sgd_step_moves_each_group_by_its_own_step_size():
    """The tagger's structured guide with q(A) has all three groups: the model's emissions, the guide's chain and
    q(A) (network: shared), the pseudo-emissions (local). Analytic_ELBO is exact, so the gradient is reproducible:
    after one SGD step every parameter is p - lr_group * dELBO/dp, with the same float operation SGD uses."""
    spec, model, guide, x = _tagger()
    lrs = {"model": 0.01, "network": 0.2, "local": 3.0}
    cfg = SVIConfig(elbo="Analytic_ELBO", optimiser="sgd", lr=0.05, steps=1,
                    lr_model=lrs["model"], lr_network=lrs["network"], lr_local=lrs["local"])
    groups = param_groups.split(model, guide)
    assert all(groups[k] for k in lrs)  # the test means something for every group
    ref_model, ref_guide = copy.deepcopy(model), copy.deepcopy(guide)
    Analytic_ELBO().loss_and_grads(ref_model, ref_guide, x)
    ref = dict(kv for members in param_groups.split(ref_model, ref_guide).values() for kv in members)
    train_svi(model, guide, x, cfg, seed=0, progress=False)
    for group, members in param_groups.split(model, guide).items():
        for name, p in members:
            before = ref[name]
            assert before.grad is not None and before.grad.abs().max() > 0, name
            expected = before.detach().add(before.grad, alpha=-lrs[group])
            torch.testing.assert_close(p.detach(), expected, atol=0, rtol=1e-15, msg=f"{group}: {name}")


def test_without_group_keys_the_optimiser_is_one_group_and_equal_keys_give_the_same_run_bit_for_bit(monkeypatch):
    spec = MODELS["gmm"]
    optimisers = []
    original = train_module.OPTIMISERS["adam"]

    class Recording(original):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            optimisers.append(self)

    monkeypatch.setitem(train_module.OPTIMISERS, "adam", Recording)
    runs = []
    x = _data(spec, 30)[0]
    for keys in ({}, {"lr_model": 0.05, "lr_network": 0.05, "lr_local": 0.05}):
        model, guide = _build(spec, spec.guides["amortised"], 30)
        cfg = SVIConfig(elbo="TraceEnum_ELBO", lr=0.05, steps=25, lr_final=0.01, **keys)
        result = train_svi(model, guide, x, cfg, seed=3, progress=False)
        runs.append((result.elbo_trace, [p.detach().clone() for p in (*model.parameters(), *guide.parameters())]))
        if not keys:  # as before groups existed, so old checkpoints' optimiser state loads: one group, model first
            (group,) = optimisers[0].param_groups
            assert group["params"] == [*model.parameters(), *guide.parameters()] and group["lr"] == pytest.approx(0.01, rel=1e-12)
    assert [g["group"] for g in optimisers[1].param_groups] == ["model", "network"]  # the amortised GMM has no local
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_the_single_group_keeps_the_old_parameter_order():
    spec = MODELS["gmm"]
    model, guide = _build(spec, spec.guides["amortised"], 20)
    flat = param_groups.optimiser_groups(model, guide, SVIConfig())
    assert flat == [p for p in model.parameters() if p.requires_grad] + [p for p in guide.parameters() if p.requires_grad]


def test_a_run_with_groups_resumes_bit_for_bit(tmp_path, monkeypatch):
    """Adam's state in several groups (the VAE: decoder and per-point q; decoder and encoder), the step size decaying,
    minibatches drawn; killed after step 4 of the first guide and resumed."""
    cfg = tiny_config("vae", tmp_path, "svi.lr_model=0.003", "svi.lr_network=0.01", "svi.lr_local=0.2",
                      "svi.lr_final=0.001", "svi.batch_size=10")
    a, killed = killed_run(cfg, tmp_path, monkeypatch, 1)
    resume_experiment(killed, log=lambda *_: None)
    assert_same_run(a, killed)


class FakeClock:
    """time.perf_counter for the train loop: each call is one second later."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def test_max_seconds_stops_between_steps_and_marks_the_result(monkeypatch):
    spec = MODELS["gmm"]
    x = _data(spec, 30)[0]
    monkeypatch.setattr(train_module, "time", FakeClock())  # times = 1, 2, 3, ...: one per step
    model, guide = _build(spec, spec.guides["amortised"], 30)
    result = train_svi(model, guide, x, SVIConfig(elbo="TraceEnum_ELBO", steps=100, max_seconds=3.5), seed=1, progress=False)
    assert result.steps == 4 < 100 and result.out_of_time and not result.interrupted  # 1, 2, 3 < 3.5 <= 4
    assert len(result.elbo_trace) == len(result.times) == 4
    stopped = [p.detach().clone() for p in (*model.parameters(), *guide.parameters())]
    model, guide = _build(spec, spec.guides["amortised"], 30)
    four = train_svi(model, guide, x, SVIConfig(elbo="TraceEnum_ELBO", steps=4), seed=1, progress=False)
    assert not four.out_of_time and four.elbo_trace == result.elbo_trace  # a clean stop: the same first four steps
    assert all(torch.equal(a, p.detach()) for a, p in zip(stopped, (*model.parameters(), *guide.parameters())))


def test_under_a_time_budget_the_step_size_decays_over_the_seconds():
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": 0.1},
                           {"params": [torch.zeros(1, requires_grad=True)], "lr": 2.0}], lr=0.1)
    torch.optim.lr_scheduler.ExponentialLR(opt, 1.0)  # sets initial_lr, as train_svi's schedule does
    cfg = SVIConfig(lr=0.1, lr_final=0.001, max_seconds=10.0)
    for seconds, factor in ((0.0, 1.0), (5.0, 0.1), (10.0, 0.01), (20.0, 0.01)):
        train_module._decay_by_time(opt, cfg, seconds)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * factor, 2.0 * factor], rel=1e-12)


@pytest.mark.parametrize("key", ["lr_model", "lr_network", "lr_local", "max_seconds"])
@pytest.mark.parametrize("value", [0, -0.5, "nan", "inf", '"fast"'])
def test_bad_group_rates_and_budgets_are_refused_in_one_line_naming_the_key(key, value):
    raw = {"model": "gmm", "name": "t", "svi": {}}
    from vizoo.experiments.config import apply_override

    apply_override(raw, f"svi.{key}={value}")
    with pytest.raises(ConfigError, match=rf"svi\.{key}") as err:
        parse_config(raw)
    assert "\n" not in str(err.value)


def test_the_python_api_passes_the_group_keys_through():
    import vizoo

    x = _data(MODELS["gmm"], 30)[0].numpy()
    result = vizoo.fit("gmm", x, guides=["mean_field"], steps=2, exact=False, svi={"lr_local": 0.5, "max_seconds": 60.0})
    assert result.config.svi.lr_local == 0.5 and result.config.svi.max_seconds == 60.0
    with pytest.raises(ConfigError, match=r"svi\.lr_network must be a positive finite number, got -1"):
        vizoo.fit("gmm", x, steps=2, svi={"lr_network": -1})


# --------------------------------------------------------------------------- time to within 1%


def test_time_to_within_one_percent_of_a_known_curve():
    """ELBO_i = -100 - 50 * 0.9^i: within 1% of the final -100 (band 1.0) once 50 * 0.9^i <= 1, i.e. from
    i = ceil(log(0.02) / log(0.9)) = 38; that estimate scores the parameters of the end of step 37."""
    trace = [-100.0 - 50.0 * 0.9**i for i in range(200)]
    times = [0.5 * (i + 1) for i in range(200)]
    first = math.ceil(math.log(0.02) / math.log(0.9))
    assert first == 38
    got = time_to_within(trace, times, window=1)
    assert got.step == first and got.seconds == times[first - 1]
    assert got.final == pytest.approx(trace[-1], rel=1e-15)


def test_time_to_within_smooths_monte_carlo_noise():
    """The same curve with +-3 noise (three times the band) alternating step by step: unsmoothed, only the last
    step is 'within 1%'; a running mean over 10 steps cancels the noise exactly and enters the band once
    50 * mean(0.9^(i-9..i)) <= 1, i.e. 0.9^(i-9) <= 0.02 / ((1 - 0.9^10) / (10 * 0.1)): from i = 43."""
    trace = [-100.0 - 50.0 * 0.9**i + (3.0 if i % 2 else -3.0) for i in range(200)]
    times = [float(i + 1) for i in range(200)]
    assert time_to_within(trace, times, window=1).step == 199
    bound = 0.02 / ((1 - 0.9**10) / (10 * 0.1))
    first = 9 + math.ceil(math.log(bound) / math.log(0.9))
    assert first == 43
    got = time_to_within(trace, times, window=10)
    assert got.step == first and got.seconds == times[first - 1]
    assert got.final == pytest.approx(-100.0, abs=1e-6)


def test_entering_the_band_and_leaving_it_again_does_not_count():
    trace = [-10.0, -5.0, -1.0, -5.0, -5.0, -1.005, -1.0]  # step 2 is within 1% of -1.0, steps 3-4 are not
    got = time_to_within(trace, list(range(1, 8)), window=1)
    assert got.step == 5 and got.seconds == 5


def test_the_running_mean_and_the_default_window():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert time_to_within([], []) is None
    with pytest.raises(ValueError, match="must match"):
        time_to_within([1.0], [])
    flat = [-2.0] * 40
    assert time_to_within(flat, [float(i) for i in range(40)]).step == 0  # default window 5% of 40 = 2


# --------------------------------------------------------------------------- vizoo compare --time


def test_compare_time_sets_the_budget_and_lifts_the_step_limit():
    _, raw, source, _ = plan(CompareOptions("gmm", seeds=1, time=2.5, guides=("mean_field",)))
    assert raw["svi"]["max_seconds"] == 2.5 and raw["svi"]["steps"] == SIZE_LIMITS["svi.steps"]
    _, raw, _, _ = plan(CompareOptions("gmm", seeds=1, time=2, overrides=("svi.steps=50",), guides=("mean_field",)))
    assert raw["svi"]["max_seconds"] == 2.0 and raw["svi"]["steps"] == 50  # --set svi.steps: the upper bound


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_compare_refuses_a_bad_time_in_one_line(value, capsys):
    assert main(["compare", "gmm", "--time", value, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vizoo: error: --time must be a positive number of seconds") and len(err.splitlines()) == 1


def test_compare_refuses_a_time_that_is_not_a_number_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compare", "gmm", "--time", "abc"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "--time" in err and len(err.splitlines()) == 1


def test_a_fair_comparison_reports_steps_and_the_time_to_one_percent(tmp_path):
    from vizoo.experiments.compare import compare, tiny_overrides

    opts = CompareOptions("gmm", seeds=1, guides=("mean_field", "amortised"), time=0.3, output_dir=str(tmp_path),
                          overrides=tuple(o for o in tiny_overrides() if not o.startswith("svi.steps")),
                          progress=False, draws=4, points=1)
    result = compare(opts, log=lambda *a: None)
    for row in result.rows:
        if row["kind"] != "guide":
            continue
        assert 1 <= row["steps"] < SIZE_LIMITS["svi.steps"]
        assert 0 <= row["time_to_1pct_s"] <= row["wall_time_s"]
    assert "time to 1% (s)" in result.markdown and "fair mode" in result.markdown
