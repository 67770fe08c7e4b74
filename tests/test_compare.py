"""The guide comparison and the report.

* The gap split adds up, approximation + amortisation = total, for every exact model and every guide with a
  family optimum, in float64, between independent routes (KL divergences by enumeration against a difference
  of ELBOs), and it agrees with log p(x) - ELBO(q).
* ``compare`` runs end to end on tiny settings for every registered model, and its table holds the numbers
  recomputed here independently from the in-memory fits: log p(x) and ELBO by the exact reference, the
  approximation gap by the ELBO route, mean and sd over seeds by numpy, and the CSV equal to the table.
* ``report`` runs end to end (two models, two seed experiments) into one Markdown and one self-contained HTML.
* Bad input gives one line and exit 2: unknown model, a guide that does not apply, zero seeds.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math

import numpy as np
import pyro
import pytest
import torch
from vizoo.experiments import cli, seeds
from vizoo.experiments import compare as compare_module
from vizoo.experiments.compare import CompareOptions, compare, tiny_overrides
from vizoo.experiments.config import GuideArgs, SVIConfig
from vizoo.experiments.gaps import SearchOptions, family_best, gap_split
from vizoo.experiments.overview import ReportOptions, to_html, write_report
from vizoo.experiments.registry import MODELS
from vizoo.experiments.tables import markdown_table, summarise
from vizoo.experiments.train import train_svi
from vizoo.models.datasets import DataOptions

EXACT = [s for s in MODELS.values() if s.exact is not None and s.exact.enumerable and "synthetic" in s.datasets]


@pytest.mark.parametrize("spec", EXACT, ids=lambda s: s.name)
def test_the_gap_split_adds_up_for_every_exact_model(spec):
    """At parameters away from the optimum (the shared initialisation) and after a few SVI steps, so neither gap
    is zero: KL(q||p) = KL(q*||p) + (ELBO(q*) - ELBO(q)) to float64 precision, and KL(q||p) = log p - ELBO(q)."""
    args = spec.args_type()
    data = spec.load(DataOptions(name="synthetic", num_points=20, dim=8, num_steps=5, vocab_size=30, doc_length=8), args, 0)
    x = data.x
    init = spec.init_params(x, args, 0)
    checked = 0
    for name, g in spec.guides.items():
        if g.optimum is None:
            continue
        pyro.set_rng_seed(0)
        # local_steps=0: no exact local step, so the free guides keep a gap (with it, gmm's mean field has none)
        guide = g.build(x, init, **GuideArgs(local_steps=0).for_builder(g.build))
        model = (g.learnable or spec.learnable)(init, args)
        elbo_name = "TraceEnum_ELBO" if "TraceEnum_ELBO" in g.valid_elbos else g.valid_elbos[0]
        train_svi(model, guide, x, SVIConfig(elbo=elbo_name, steps=5, lr=0.05), seed=0, progress=False)
        params = spec.fitted(model, guide)
        split = gap_split(spec, g, x, params, guide)
        scale = max(1.0, abs(split["log_p"]))
        assert math.isclose(split["approximation_gap"] + split["amortisation_gap"], split["total_gap"], rel_tol=0, abs_tol=1e-10 * scale), (name, split)
        assert math.isclose(split["total_gap"], split["log_p"] - split["elbo"], rel_tol=0, abs_tol=1e-10 * scale), (name, split)
        assert split["approximation_gap"] >= -1e-10 * scale and split["amortisation_gap"] >= -1e-8 * scale, (name, split)
        assert split["total_gap"] > 1e-6, (name, split)  # not a trivial identity of zeros
        checked += 1
    assert checked >= 1


def test_the_gap_split_is_not_an_identity_of_its_own_terms():
    """A wrong optimum (the guide's own q passed off as the family's best) moves the approximation gap onto the
    total and zeroes the amortisation gap: the split reports it, the sum still holds, and the approximation gap is
    no longer the family's (it exceeds the true family optimum's)."""
    spec = MODELS["noisy_or"]
    args = spec.args_type()
    x = spec.load(DataOptions(name="synthetic", num_points=30, dim=8), args, 0).x
    init = spec.init_params(x, args, 0)
    g = spec.guides["mean_field"]
    guide = g.build(x, init)
    honest = gap_split(spec, g, x, init, guide)
    lazy_family = dataclasses.replace(g, optimum=lambda x, p, start=None: guide.probs(x, p), random_start=None)
    lazy = gap_split(spec, lazy_family, x, init, guide)
    assert lazy["amortisation_gap"] == pytest.approx(0, abs=1e-12)
    assert lazy["approximation_gap"] > honest["approximation_gap"] + 1e-4


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A tiny comparison of every registered model (gmm with two seeds, for the spread)."""
    out = tmp_path_factory.mktemp("compare")
    results = {}
    for name in MODELS:
        opts = CompareOptions(name, seeds=2 if name == "gmm" else 1, overrides=tiny_overrides(), output_dir=str(out),
                              progress=False, draws=40, points=2)
        results[name] = compare(opts, log=lambda *a: None)
    return results


@pytest.mark.parametrize("name", list(MODELS))
def test_compare_runs_every_model_and_its_table_holds_the_recomputed_numbers(compared, name):
    result = compared[name]
    spec = MODELS[name]
    assert (result.out_dir / "compare.md").is_file() and (result.out_dir / "elbo_time.png").is_file()
    methods = {r["method"] for r in result.rows}
    assert {f"SVI {g}" for g in spec.guides} <= methods
    for results, seed_rows in zip(result.runs, _by_seed(result.rows)):
        for res in results:
            x = res.x
            n = x.shape[0]
            for method, guide in res.trained.items():
                row = seed_rows[method]
                g = spec.guides.get(method.removeprefix("SVI "))
                params = res.fits[method]
                if res.metrics["enumerable"]:
                    with torch.no_grad():
                        log_p = float(spec.exact.log_evidence(x, params)) / n
                        assert row["log_p"] == pytest.approx(log_p, rel=1e-12, abs=1e-12)
                        if hasattr(guide, "probs") and g is not None and g.optimum is not None:
                            q = guide.probs(x, params)
                            elbo = float(spec.exact.elbo(x, params, q)) / n
                            found = family_best(spec, g, x, params, q, SearchOptions(seed=row["seed"]))
                            best = float(spec.exact.elbo(x, params, found.q)) / n
                            if found.elbo is not None:  # a search: q* is at least each start's optimum, per point
                                assert float(found.elbo.sum()) / n == pytest.approx(best, abs=1e-10)
                                for s in (None, q):
                                    start = spec.exact.point_elbo(x, params, g.optimum(x, params, start=s))
                                    assert (found.elbo >= start - 1e-10).all()
                            assert row["elbo"] == pytest.approx(elbo, abs=1e-10)
                            assert row["approximation_gap"] == pytest.approx(log_p - best, abs=1e-9)  # the ELBO route
                            assert row["amortisation_gap"] == pytest.approx(best - elbo, abs=1e-12)
    # the summary: numpy's mean and sample sd of the rows; the CSV: the rows
    for entry in result.summary:
        values = [r["elbo"] for r in result.rows if r["method"] == entry["method"] and r.get("elbo") is not None]
        if values:
            assert entry["elbo"] == pytest.approx(float(np.mean(values)), abs=1e-12)
            if len(values) > 1:
                assert entry["elbo_sd"] == pytest.approx(float(np.std(values, ddof=1)), abs=1e-12)
    with open(result.out_dir / "compare.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(result.rows)
    for written, row in zip(table, result.rows):
        assert written["method"] == row["method"]
        if row.get("elbo") is not None:
            assert float(written["elbo"]) == row["elbo"]
    assert json.loads((result.out_dir / "compare.json").read_text())["rows"][0]["method"] == result.rows[0]["method"]


def _by_seed(rows):
    seeds_ = list(dict.fromkeys(r["seed"] for r in rows))
    return [{r["method"]: r for r in rows if r["seed"] == s} for s in seeds_]


def test_compare_writes_arviz_and_the_exact_posterior_beside_each_guide(compared):
    import arviz as az

    result = compared["noisy_or"]
    files = sorted(p.name for p in (result.out_dir / "arviz").glob("*.nc"))
    assert files == ["amortised.nc", "exact_at_amortised.nc", "exact_at_mean_field.nc", "mean_field.nc"]
    idata = az.from_netcdf(str(result.out_dir / "arviz" / "exact_at_mean_field.nc"))
    d = idata.posterior["d"]
    assert d.sizes["draw"] == 40 and d.sizes["point"] == 2 and set(np.unique(d.values)) <= {0.0, 1.0}
    assert {"correlation.png", "marginals.png", "forest.png"} <= set(result.figures)
    assert (result.out_dir / "arviz_summary.md").read_text().count("###") == 4


def test_compare_exports_observed_data_and_a_pointwise_log_likelihood_for_loo(compared):
    import arviz as az

    result = compared["noisy_or"]
    n = result.runs[0][0].x.shape[0]
    for name in ("mean_field", "exact_at_mean_field"):
        idata = az.from_netcdf(str(result.out_dir / "arviz" / f"{name}.nc"))
        assert {"posterior", "observed_data", "log_likelihood"} <= set(idata.groups())
        assert idata.log_likelihood["x"].shape == (1, 40, n)
        assert math.isfinite(az.loo(idata).elpd_loo)


def test_autoguides_join_where_the_latents_are_continuous(compared):
    for name, result in compared.items():
        methods = {r["method"] for r in result.rows}
        continuous = name in ("vae", "factor_analysis", "declared_vae")
        assert ("SVI AutoNormal" in methods) == continuous, name
        assert ("SVI AutoDelta" in methods) == continuous, name
    rows = {r["method"]: r for r in compared["factor_analysis"].rows}
    assert rows["SVI AutoDelta"]["total_gap"] is None  # joint MAP: not a bound, no gap
    auto = rows["SVI AutoNormal"]
    assert auto["approximation_gap"] + auto["amortisation_gap"] == pytest.approx(auto["total_gap"], abs=1e-12)


def test_the_report_runs_end_to_end_into_one_self_contained_page(tmp_path):
    out = write_report(ReportOptions(str(tmp_path), seeds=1, models=("gmm", "diagnosis"), tiny=True, progress=False,
                                     experiments=("em_as_vi", "kl_directions")), log=lambda *a: None)
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    assert "## gmm:" in md and "## diagnosis:" in md and "EM as variational inference" in md
    assert page.count("<img") == md.count("![") and "src='data:image/png;base64," in page
    assert "src='models/" not in page and "[missing figure" not in page
    numbers = json.loads((out / "report.json").read_text())
    assert set(numbers["models"]) == {"gmm", "diagnosis"}
    em = numbers["seeds"]["em_as_vi"]["rows"]
    for r in em:  # the seed's picture: the bound touches after the E-step, the M-step raises it, log p(x) stays above
        assert r["ELBO after E-step"] == pytest.approx(r["log p(x; θ_t)"], abs=1e-12)
        assert r["ELBO after M-step"] >= r["ELBO after E-step"] - 1e-12
        assert r["log p(x; θ_t+1)"] >= r["ELBO after M-step"] - 1e-12


def test_kl_directions_seek_a_mode_and_cover_the_mass(tmp_path):
    exp = seeds.load(seeds.bundled()["kl_directions"])
    rows = seeds.run(exp, tmp_path)["rows"]
    reverse, forward = rows[:-1], rows[-1]
    half, scale = exp.params.separation / 2, exp.params.scale
    total_var = scale**2 + half**2  # the mixture's variance (equal weights)
    assert forward["mean"] == pytest.approx(0, abs=1e-6) and forward["sd"] ** 2 == pytest.approx(total_var, rel=1e-4)
    starts = exp.params.starts
    outer = [r for m0, r in zip(starts, reverse) if abs(m0) >= half]  # starts beyond a mode: that mode, its width
    for r in outer:
        assert abs(abs(r["mean"]) - half) < 0.05 and r["sd"] == pytest.approx(scale, rel=0.05)
        assert r["KL(q‖p)"] == pytest.approx(math.log(2), abs=0.01)  # two equal separated modes: log 2
    assert {math.copysign(1, r["mean"]) for r in outer} == {-1.0, 1.0}  # which mode depends on the start
    for r in reverse:  # each fit wins its own direction, wherever it stopped
        assert r["KL(q‖p)"] < forward["KL(q‖p)"] and r["KL(p‖q)"] > forward["KL(p‖q)"]


def test_the_html_converter_keeps_tables_lists_and_code():
    page = to_html("# T\n\n| a | b |\n|---|---:|\n| x | 1 |\n\n- one **two**\n\n```\ncode <x>\n```\n", root=None)
    assert "<h1>T</h1>" in page and "<td>x</td><td>1</td>" in page and "<li>one <b>two</b></li>" in page
    assert "<pre>code &lt;x&gt;</pre>" in page


@pytest.mark.parametrize("argv, words", [
    (["compare", "nosuchmodel"], "unknown model 'nosuchmodel'"),
    (["compare", "gmm", "--guides", "AutoNormal"], "does not apply to model 'gmm': its latent site 'z' is discrete"),
    (["compare", "gmm", "--guides", "structured_mean_field"], "guide 'structured_mean_field' does not apply to model 'gmm'"),
    (["compare", "gmm", "--seeds", "0"], "--seeds must be a whole number >= 1, got 0"),
    (["compare", "gmm", "--data", "mnist"], "unknown data set 'mnist' for model 'gmm'"),
    (["compare", "gmm", "--set", "svi.stepz=3"], "unknown key 'svi.stepz'"),
    (["report", "--seeds", "0"], "--seeds must be a whole number >= 1, got 0"),
    (["report", "--models", "gmm,nosuch"], "unknown model 'nosuch'"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, capsys, tmp_path):
    assert cli.main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())  # nothing written before the input was checked


def _exact_marginals(spec, x, params):
    """Each model's exact posterior means in its own terms, from its exact module (not from the draws)."""
    from vizoo.models.exact import declared as declared_exact
    from vizoo.models.exact import fhmm as fhmm_exact
    from vizoo.models.exact import gmm as gmm_exact
    from vizoo.models.exact import linear_gaussian
    from vizoo.models.exact import noisy_or as noisy_or_exact

    if spec.name == "gmm":
        return {"z": gmm_exact.posterior(x, params)}  # one-hot means
    if spec.name == "noisy_or":
        return {"d": noisy_or_exact.posterior(x, params).marginals}
    if spec.name == "fhmm":
        return {"s": fhmm_exact.forward_backward(x, params).marginals}  # (N, T, M, L)
    from vizoo.experiments.registry import DECLARATIONS

    decl = DECLARATIONS[spec.name]
    if decl.discrete:
        return declared_exact.posterior(decl, params, x).marginals
    post = linear_gaussian.posterior_u(decl, params, x)
    return {"z": params["z.loc"] + params["z.scale"] * post.mean}


@pytest.mark.parametrize("name", ["gmm", "noisy_or", "fhmm", "diagnosis", "factor_analysis"])
def test_exact_draws_follow_the_exact_posterior(name):
    """The draws the pictures and ArviZ use: their means match the exact marginals (forward-backward for the FHMM's
    forward-filtering backward-sampling) within 5 Monte Carlo standard errors."""
    spec = MODELS[name]
    args = spec.args_type()
    x = spec.load(DataOptions(name="synthetic", num_points=6, dim=8, num_steps=5), args, 0).x
    params = spec.init_params(x, args, 0)
    s = 4000
    draws = spec.exact.draws(x, params, s, torch.Generator().manual_seed(0))
    exact = _exact_marginals(spec, x, params)
    for site, v in draws.items():
        target = exact[site]
        if name == "fhmm":
            v = torch.nn.functional.one_hot(v, args.num_states).double().permute(0, 2, 3, 1, 4)  # (S, N, T, M, L)
        elif v.dtype == torch.int64:
            v = torch.nn.functional.one_hot(v, target.shape[-1]).double()
        mean = v.double().mean(0)
        sd = v.double().std(0) if name == "factor_analysis" else (target * (1 - target)).clamp_min(1e-4).sqrt()
        assert ((mean - target).abs() <= 5 * sd / math.sqrt(s) + 1e-9).all(), (site, (mean - target).abs().max())


def test_the_true_labels_become_columns_of_the_comparison():
    """A run's agreement with the data's true labels (metrics["labels"], the tagger's accuracies) reaches the
    comparison's rows and its table as "true labels ..." columns, beside the held-out ones, per method."""
    metrics = {"heldout": {"SVI a": {"perplexity": 900.0}},
               "labels": {"SVI a": {"many_to_one": 0.5, "v_measure": 0.25}, "EM": {"many_to_one": 0.75}}}
    assert compare_module._heldout(metrics, "SVI a") == {"heldout perplexity": 900.0, "true labels many_to_one": 0.5,
                                                         "true labels v_measure": 0.25}
    rows = [{"seed": 0, "method": "EM", "kind": "reference", "elbo": -1.0, **compare_module._heldout(metrics, "EM")},
            {"seed": 0, "method": "SVI a", "kind": "guide", "elbo": -2.0, **compare_module._heldout(metrics, "SVI a")}]
    table = markdown_table(summarise(rows))
    assert "| heldout perplexity | true labels many_to_one | true labels v_measure |" in table
    assert "| EM | -1.0000 |" in table and "0.7500 | – |" in table and "0.5000 | 0.2500 |" in table
