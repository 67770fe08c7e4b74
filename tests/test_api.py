"""The Python API (vizoo.fit, vizoo.load, vizoo.compare): fitting an array in memory, the table's exact
identities, scoring new data, posterior draws, nothing on disk by default, a run folder on request that loads
back to the same result, one-line errors, and the README's example, executed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import vizoo
from vizoo.experiments.config import load_config
from vizoo.experiments.run import run_experiment
from vizoo.models.exact import gmm as gmm_exact

README = Path(__file__).parents[1] / "README.md"
FAITHFUL = Path(__file__).parents[1] / "experiments" / "configs" / "gmm_faithful.toml"
STEPS = 40


def two_clusters(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(-2.0, 1.0, (n - n // 3, 2)), rng.normal(3.0, 0.5, (n // 3, 2))])


@contextlib.contextmanager
def empty_cwd_and_tmp(root: Path):
    """cwd and the temporary folder (tempfile and $TMPDIR) are fresh empty folders for the block."""
    cwd, tmp = root / "cwd", root / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    old_cwd, old_tempdir, old_env = os.getcwd(), tempfile.tempdir, os.environ.get("TMPDIR")
    os.chdir(cwd)
    tempfile.tempdir = str(tmp)
    os.environ["TMPDIR"] = str(tmp)
    try:
        yield cwd, tmp
    finally:
        os.chdir(old_cwd)
        tempfile.tempdir = old_tempdir
        if old_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_env


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    x = two_clusters(90, 0)
    root = tmp_path_factory.mktemp("nothing_written")
    with empty_cwd_and_tmp(root) as (cwd, tmp):
        result = vizoo.fit("gmm", x, guides=["mean_field", "amortised"], steps=STEPS)
        # torch's first optimiser step in a process makes an empty torchinductor_<user> cache folder in the
        # temporary folder: torch's, not vizoo's, and empty
        written = sorted(str(p) for p in [*cwd.rglob("*"), *tmp.rglob("*")]
                         if not (p.parent == tmp and p.name.startswith("torchinductor_") and p.is_dir() and not any(p.iterdir())))
    return x, result, written


def test_fit_returns_every_method_and_writes_nothing(fitted):
    x, result, written = fitted
    assert written == [], written
    assert result.run_dir is None and result.status == "complete"
    assert result.methods == ["exact", "mean_field", "amortised"]
    assert result.labels["exact"] == "exact EM"
    assert set(result.params) == set(result.methods) and set(result.guides) == {"mean_field", "amortised"}
    assert isinstance(result.params["exact"], gmm_exact.GMMParams)
    assert torch.equal(result.x, torch.as_tensor(x))  # not standardised unless asked
    assert [len(result.traces[g]) for g in ("mean_field", "amortised")] == [STEPS, STEPS]
    assert "exact EM" in repr(result) and "SVI amortised" in repr(result) and "nothing written" in repr(result)
    assert "| SVI mean_field |" in result.summary()


def test_the_table_holds_the_exact_identities(fitted):
    _, result, _ = fitted
    rows = {r["method"]: r for r in result.table}
    em = rows["exact"]
    assert em["elbo"] == em["log_p"] and em["kl"] == 0.0
    for g in ("mean_field", "amortised"):
        r = rows[g]
        assert r["elbo_method"].startswith("exact")
        assert r["elbo"] <= r["log_p"] + 1e-9
        assert abs(r["elbo"] + r["kl"] - r["log_p"]) < 1e-8
        assert em["log_p"] >= r["elbo"]
        assert r["elbo"] == result.metrics["guides"][g]["final_elbo_per_point"]  # metrics.json's numbers


def test_log_evidence_of_new_data_is_the_exact_value(fitted):
    _, result, _ = fitted
    x_new = torch.as_tensor(two_clusters(12, 7))
    for method in ("exact", "mean_field", "amortised", "SVI amortised", "exact EM"):
        key = result._method(method)
        want = float(gmm_exact.log_evidence(x_new, result.params[key])) / 12
        assert result.log_evidence(x_new.numpy(), method=method) == pytest.approx(want, abs=1e-12)
    assert result.log_evidence(x_new) == result.log_evidence(x_new.numpy(), method="exact")


def test_sample_draws_from_each_guide_and_the_exact_posterior(fitted):
    x, result, _ = fitted
    for method in ("exact", "mean_field", "amortised"):
        draws = result.sample(method, 25)
        assert set(draws) == {"z"} and draws["z"].shape == (25, len(x)), method
        assert set(draws["z"].unique().tolist()) <= {0, 1}
    assert result.sample("amortised", 5, x=two_clusters(6, 3))["z"].shape == (5, 6)  # amortised: any points
    idata = result.to_inference_data("exact", num_samples=30)
    assert idata.posterior["z"].shape == (1, 30, len(x))
    assert idata.observed_data["x"].shape == x.shape
    assert idata.log_likelihood["x"].shape == (1, 30, len(x))  # log p(x_n | z_n, theta) per draw and point


def test_out_writes_a_run_folder_that_loads_back_to_the_same_result(fitted, tmp_path):
    x, first, _ = fitted
    result = vizoo.fit("gmm", x, guides=["mean_field", "amortised"], steps=STEPS, out=tmp_path / "runs")
    run_dir = result.run_dir
    assert run_dir is not None and run_dir.parent == (tmp_path / "runs").resolve()
    for name in ("config.toml", "metrics.json", "report.md", "data.npy", "params/em.pt",
                 "checkpoints/mean_field.pt", "checkpoints/amortised.pt"):
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "complete"
    # one code path: writing the folder changes no number
    for a, b in zip(first.table, result.table):
        assert {k: v for k, v in a.items() if k != "wall_time_s"} == {k: v for k, v in b.items() if k != "wall_time_s"}
    loaded = vizoo.load(run_dir)
    assert loaded.table == result.table and loaded.run_dir == run_dir
    x_new = two_clusters(15, 11)
    for method in loaded.methods:
        assert loaded.log_evidence(x_new, method=method) == pytest.approx(result.log_evidence(x_new, method=method), abs=1e-12)
    for g in ("mean_field", "amortised"):
        for (k, v), (k2, v2) in zip(result.guides[g].state_dict().items(), loaded.guides[g].state_dict().items()):
            assert k == k2 and torch.equal(v, v2)
    assert loaded.sample("amortised", 4)["z"].shape == (4, len(x))


def test_load_reads_a_run_written_by_vizoo_run(tmp_path):
    cfg = load_config(FAITHFUL, [f'output_dir="{tmp_path}"', "svi.steps=10", "progress=false"])
    run = run_experiment(cfg, log=lambda *a: None)
    loaded = vizoo.load(run.run_dir)
    assert [r["method"] for r in loaded.table] == ["exact", "mean_field", "amortised"]
    assert loaded.table[1]["elbo"] == run.metrics["guides"]["mean_field"]["final_elbo_per_point"]
    x_new = loaded.x[:20]
    assert loaded.log_evidence(x_new, method="amortised") == pytest.approx(
        float(gmm_exact.log_evidence(x_new, run.fits["SVI amortised"])) / 20, abs=1e-12)


def test_registered_data_and_options_go_through_the_config(tmp_path):
    result = vizoo.fit("gmm", "faithful", guides=["amortised"], steps=5, exact=False,
                       model_args={"num_components": 3}, svi={"lr": 0.05}, guide_args={"hidden": (8,)})
    assert result.methods == ["amortised"] and result.config.model_args.num_components == 3
    assert result.config.svi.lr == 0.05 and result.config.guide_args.hidden == (8,)
    assert result.x.shape == (272, 2)
    path = tmp_path / "data.csv"
    np.savetxt(path, two_clusters(30, 2), delimiter=",")
    from_file = vizoo.fit("gmm", path, guides=["mean_field"], steps=3, standardise=False)
    assert torch.allclose(from_file.x, torch.as_tensor(two_clusters(30, 2)))


@pytest.mark.parametrize("kwargs, error, words", [
    ({"data": np.zeros(10)}, vizoo.DataError, "rank 1"),
    ({"data": np.array([[0.0, 1.0], [np.nan, 2.0], [1.0, 1.0]])}, vizoo.DataError, "non-finite entries (NaN or inf); first at row 1, column 0"),
    ({"data": np.array([["a", "b"]])}, vizoo.DataError, "data holds dtype"),
    ({"data": np.ones((1, 2))}, vizoo.DataError, "fewer than num_components=2"),
    ({"guides": ["full_rank"]}, vizoo.ConfigError, "guides: unknown guide 'full_rank' for model 'gmm'"),
    ({"model": "nope"}, vizoo.ConfigError, "model: unknown model 'nope'"),
    ({"steps": -1}, vizoo.ConfigError, "svi.steps must be >= 0, got -1"),
    ({"svi": {"stepz": 3}}, vizoo.ConfigError, "unknown key 'svi.stepz'"),
    ({"svi": 3}, vizoo.ConfigError, "svi must be a table"),
    ({"model_args": {"covariance": "full"}}, vizoo.ConfigError, "model_args.covariance must be one of"),
    ({"data": "mnist"}, vizoo.ConfigError, "data.name: unknown data set 'mnist' for model 'gmm'"),
    ({"data": "missing.npy"}, vizoo.DataError, "data.path: no such file"),
])
def test_bad_input_is_one_line_naming_the_field(kwargs, error, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = {"model": "gmm", "data": two_clusters(20, 0), "steps": 2, **kwargs}
    with pytest.raises(error) as info:
        vizoo.fit(args.pop("model"), args.pop("data"), **args)
    assert words in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_new_data_is_one_line(fitted):
    _, result, _ = fitted
    with pytest.raises(vizoo.DataError, match="x_new has shape"):
        result.log_evidence(np.zeros((4, 3)))
    with pytest.raises(vizoo.DataError, match="non-finite"):
        result.log_evidence(np.array([[np.inf, 0.0], [0.0, 0.0]]))
    with pytest.raises(vizoo.ConfigError, match="unknown method 'em'"):
        result.sample("em", 3)


def test_compare_wraps_the_comparison_and_keeps_nothing_by_default(tmp_path):
    with empty_cwd_and_tmp(tmp_path) as (cwd, _):
        result = vizoo.compare("gmm", "faithful", seeds=1, guides=["mean_field"], steps=5, draws=20, points=1,
                               em={"max_iter": 5})
        assert list(cwd.iterdir()) == []
    assert result.out_dir is None
    assert [r["method"] for r in result.rows] == ["exact EM", "SVI mean_field"]


def readme_example() -> tuple[str, str]:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- python-api-example -->\n```python\n(.*?)```\n.*?```text\n(.*?)```", text, re.S)
    assert found, "README.md: no ```python block after <!-- python-api-example -->, with its ```text output"
    return found.group(1), found.group(2)


NUMBER = re.compile(r"-?\d+\.\d+(?:e-?\d+)?")


def test_readme_python_example_runs_and_prints_what_the_readme_shows(tmp_path, monkeypatch):
    code, shown = readme_example()
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md:python-api-example", "exec"), {"__name__": "__readme__"})
    printed = out.getvalue()
    assert NUMBER.sub("#", printed) == NUMBER.sub("#", shown)  # the same text, numbers aside
    for got, want in zip(NUMBER.findall(printed), NUMBER.findall(shown)):
        assert float(got) == pytest.approx(float(want), abs=2e-4)
    assert list(tmp_path.iterdir()) == []
