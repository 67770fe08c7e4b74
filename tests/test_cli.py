"""The vizoo command line: every misuse is one line on stderr and exit status 2, with nothing written;
a real run writes a complete run folder; Ctrl-C stops cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from vizoo.experiments.cli import main
from vizoo.experiments.config import load_config

FAITHFUL = Path(__file__).parents[1] / "experiments" / "configs" / "gmm_faithful.toml"


def vizoo(*argv: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vizoo.experiments.cli", *argv], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_help_and_list():
    out = vizoo("--help")
    assert out.returncode == 0 and "run" in out.stdout and "list" in out.stdout
    out = vizoo("list")
    assert out.returncode == 0
    for word in ("gmm", "mean_field", "amortised", "faithful", "iris", "synthetic", "TraceEnum_ELBO", "exact EM"):
        assert word in out.stdout


MISUSE = {
    "unknown model": ('model = "nope"\n', "unknown model 'nope'"),
    "unknown guide": ('guides = ["full_rank"]\n', "unknown guide 'full_rank'"),
    "unknown data set": ('[data]\nname = "mnist"\n', "unknown data set 'mnist'"),
    "bad toml": ("model = \n", "not valid TOML"),
    "wrong type": ('[svi]\nsteps = "ten"\n', "svi.steps must be an integer, got 'ten'"),
    "float for int": ("[svi]\nsteps = 1.5\n", "svi.steps must be an integer"),
    "negative steps": ("[svi]\nsteps = -1\n", "svi.steps must be >= 0, got -1"),
    "unknown key": ("[svi]\nstepz = 10\n", "unknown key 'svi.stepz'"),
    "unknown table": ("[optim]\nlr = 1\n", "unknown key 'optim'"),
    "invalid elbo for guide": ('[svi]\nelbo = "TraceMeanField_ELBO"\n', "not valid for model 'gmm' with guide 'mean_field'"),
    "unknown elbo": ('[svi]\nelbo = "Trace_ELBOO"\n', "svi.elbo must be one of"),
    "bad covariance": ('[model_args]\ncovariance = "full"\n', "model_args.covariance must be one of"),
    "zero components": ("[model_args]\nnum_components = 0\n", "model_args.num_components must be >= 1, got 0"),
    "table as scalar": ("svi = 3\n", "svi must be a table"),
    "bad start": ('[guide_args]\nstart = "prior"\n', "guide_args.start must be 'uniform' or 'posterior', got 'prior'"),
    "minibatch without support": ("[svi]\nbatch_size = 10\n", "model 'gmm' does not support minibatches"),
    "held out without a metric": ("[data]\nheldout = 0.1\n", "model 'gmm' has no held-out evaluation"),
    "guide option nobody takes": ("[guide_args]\nrefine = 3\n", "guide_args.refine=3 does not apply to the guides"),
    "score-function switch on the gmm": ("[guide_args]\nreparameterised = false\n",
                                         "guide_args.reparameterised=false does not apply to the guides"),
    "vae eval samples": ('model = "vae"\n[data]\nname = "digits"\n[em]\nenabled = false\n[eval]\nimportance_samples = 0\n',
                         "eval.importance_samples must be >= 1, got 0"),
    "held-out fraction": ('model = "lda"\n[data]\nname = "reuters"\nheldout = 1.0\n', "data.heldout must be a fraction in [0, 1)"),
    "lda topic step": ('model = "lda"\n[guide_args]\ntopic_step = "newton"\n', "guide_args.topic_step must be"),
    "lda topics' start": ('model = "lda"\n[model_args]\ninit = "kmeans"\n', "model_args.init must be one of ('random', 'documents'), got 'kmeans'"),
    "fhmm joint states": ('model = "fhmm"\n[data]\nname = "synthetic"\n[model_args]\nnum_chains = 7\nnum_states = 4\n',
                          "exact inference needs L^M = 4^7 = 16,384 joint states"),
    "fhmm enumerated paths": ('model = "fhmm"\n[data]\nname = "synthetic"\n[svi]\nelbo = "TraceEnum_ELBO"\n',
                              "TraceEnum_ELBO would sum over the L^T paths"),
    "chorales need bernoulli": ('model = "fhmm"\n[data]\nname = "chorales"\nsubset = 2\n', "set model_args.emission = 'bernoulli'"),
}


@pytest.mark.parametrize("case", sorted(MISUSE))
def test_config_misuse_is_one_line_and_exit_2(tmp_path, capsys, case):
    text, message = MISUSE[case]
    path = write(tmp_path, "bad.toml", text)
    code = main(["run", path, "--out", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("vizoo: error: ")
    assert message in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "missing.toml"], "config file not found"),
        (["run", str(FAITHFUL), "--set", "svi.steps"], "--set expects key=value"),
        (["run", str(FAITHFUL), "--set", "svi.steps=-5"], "svi.steps must be >= 0, got -5"),
        (["run", str(FAITHFUL), "--set", "model_args.num_components=many"], "model_args.num_components must be an integer, got 'many'"),
        (["frobnicate"], "invalid choice"),
        (["run"], "run needs a CONFIG (a TOML file or a bundled config's name) or --resume RUN_DIR"),
        ([], "a command is required"),
    ],
)
def test_cli_misuse_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) if argv == ["frobnicate"] else contextlib.nullcontext():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_parser_errors_exit_2():
    out = vizoo("frobnicate")
    assert out.returncode == 2 and out.stderr.count("\n") == 1


BAD_DATA = {
    "nan": (np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, 4.0]]), "non-finite"),
    "inf": (np.array([[0.0, 1.0], [np.inf, 2.0], [3.0, 4.0]]), "non-finite"),
    "rank 1": (np.arange(10.0), "got rank 1"),
    "rank 3": (np.zeros((4, 2, 2)), "got rank 3"),
    "empty": (np.zeros((0, 2)), "empty"),
    "too few points": (np.array([[0.0, 1.0]]), "fewer than num_components=2"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_refused_before_any_work(tmp_path, capsys, case):
    values, message = BAD_DATA[case]
    np.save(tmp_path / "x.npy", values)
    path = write(tmp_path, "c.toml", f'[data]\nname = "file"\npath = "{tmp_path / "x.npy"}"\n')
    code = main(["run", path, "--out", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "runs").exists()


def test_csv_with_missing_value_names_row_and_column(tmp_path, capsys):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n3,\n5,6\n")
    path = write(tmp_path, "c.toml", f'[data]\nname = "file"\npath = "{tmp_path / "x.csv"}"\n')
    assert main(["run", path, "--out", str(tmp_path / "runs"), "--no-progress"]) == 2
    assert "first at row 1, column 1" in capsys.readouterr().err


def _numbers(rows: int) -> list[str]:
    return [f"{i},{2 * i + 1}" for i in range(rows)]


HOSTILE_FILES = {
    "empty npy": ("x.npy", b"", "is an empty or damaged .npy file (it holds no array)"),
    "cut-off npy": ("x.npy", None, "is an empty or damaged .npy file (cut short"),
    "text cell": ("x.csv", "\n".join(_numbers(10) + ["hello,3"] + _numbers(5)) + "\n",
                  "the cell at row 10, column 0 (line 11) is not a number: 'hello'"),
    "text cell after a header": ("x.csv", "a,b\n" + "\n".join(_numbers(10) + ["4, hello "]) + "\n",
                                 "the cell at row 10, column 1 (line 12) is not a number: ' hello '"),
    "ragged rows": ("x.csv", "1,2\n3,4,5\n", "row 1 (line 2) has 3 columns, the first row has 2"),
    "empty csv": ("x.csv", "", "holds no data rows (an empty CSV file, or a header only)"),
    "header only": ("x.csv", "a,b\n", "holds no data rows (an empty CSV file, or a header only)"),
    "folder": ("x.csv", "folder", "is a folder, not a file: give a .npy or .csv file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_a_hostile_data_file_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, case):
    """Each gave a traceback, a warning before the message, or a misleading one ("non-finite ... nan" for a text
    cell, "no such file" for a folder). Now: one line naming the file, and what is wrong where; no warning."""
    import warnings

    name, content, message = HOSTILE_FILES[case]
    data = tmp_path / name
    if content == "folder":
        data.mkdir()
    elif content is None:
        np.save(data, np.zeros((100, 2)))
        data.write_bytes(data.read_bytes()[:300])
    else:
        data.write_bytes(content) if isinstance(content, bytes) else data.write_text(content)
    path = write(tmp_path, "c.toml", f'[data]\nname = "file"\npath = "{data}"\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Empty input file" UserWarning leaked before the message
        code = main(["run", path, "--out", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"vizoo: error: data.path {str(data)!r}") and message in err, err
    assert not (tmp_path / "runs").exists()


def test_hostile_data_files_through_the_command_line(tmp_path):
    """The empty .npy as a new user met it: python -m vizoo.experiments.cli, no traceback, exit 2."""
    (tmp_path / "x.npy").write_bytes(b"")
    out = vizoo("run", "gmm_synthetic", "--out", str(tmp_path / "runs"), "--no-progress",
                "--set", "data.name='file'", "--set", f"data.path='{tmp_path / 'x.npy'}'")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "is an empty or damaged .npy file" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_run_writes_a_complete_run_folder(tmp_path):
    out = vizoo("run", str(FAITHFUL), "--out", str(tmp_path), "--no-progress", "--set", "svi.steps=30")
    assert out.returncode == 0, out.stderr
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("gmm_faithful-")
    assert f"report: {run_dir / 'report.md'}" in out.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["seed"] == 0
    assert metrics["exact"]["log_likelihood_per_point"] < 0
    for g in ("mean_field", "amortised"):
        m = metrics["guides"][g]
        assert len(m["elbo_curve"]) == 30 and m["wall_time_s"] > 0
        # the exact identity, as written to disk
        assert abs(m["final_elbo_per_point"] + m["kl_per_point"] - m["log_likelihood_per_point"]) < 1e-9
        assert m["final_elbo_per_point"] <= m["log_likelihood_per_point"] <= metrics["exact"]["log_likelihood_per_point"] + 1e-9
        params = torch.load(run_dir / "params" / f"{g}.pt", weights_only=True)
        assert set(params) == {"weights", "locs", "scales"}
        torch.load(run_dir / "guides" / f"{g}.pt", weights_only=True)
    assert set(torch.load(run_dir / "params" / "em.pt", weights_only=True)) == {"weights", "locs", "scales"}
    for png in ("elbo.png", "fit.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "exact EM" in (run_dir / "report.md").read_text()
    # the resolved config reproduces the run's config exactly
    resolved = load_config(run_dir / "config.toml")
    original = load_config(FAITHFUL, ["svi.steps=30", f'output_dir="{tmp_path}"'])
    assert resolved == original
    assert not list(run_dir.rglob("*.tmp"))


def test_ctrl_c_stops_cleanly(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vizoo.experiments.cli", "run", str(FAITHFUL), "--out", str(tmp_path), "--no-progress",
         "--set", "svi.steps=1000000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # wait until training has started
            if line.startswith("exact EM"):
                break
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:  # never leave a million-step run behind to slow every later test
        proc.kill()
    assert proc.returncode == 130, stderr
    (run_dir,) = tmp_path.iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted"
    (guide,) = metrics["guides"].values()  # stopped during the first guide; the second never started
    assert guide["interrupted"] and guide["steps"] < 1000000  # 0 when Ctrl-C lands before the first step
    assert not list(run_dir.rglob("*.tmp"))
