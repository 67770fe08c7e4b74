"""Nothing runs that should not, and a run that goes wrong says where and keeps what was good.

* A non-finite ELBO, gradient or update stops training with the step, the parameter and the Pyro site;
  a real run that diverges exits 1, says "failed" in metrics.json, and keeps its last good checkpoint.
* Tensor files load only with ``weights_only=True``: a crafted pickle is refused and nothing in it runs.
  A checkpoint of another run, of changed data, or of the wrong shapes is refused before any work.
* Paths: a run's name is never a path, and a run writes nothing outside its run folder.
* Sizes and non-finite config values are refused before any work; a combination that does not fit in
  memory is one line, not a traceback.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import Killed, kill_after, run_dirs, tiny_config
from pyro.nn import PyroModule
from torch import nn
from vizoo.experiments import checkpoint as ck
from vizoo.experiments.cli import main
from vizoo.experiments.config import SVIConfig
from vizoo.experiments.run import run_experiment
from vizoo.experiments.train import NonFiniteLoss, train_svi

# --------------------------------------------------------------------------- the guards, on a model built to fail


class Trap(PyroModule):
    """Observed x ~ N(z, 1) with z ~ N(0, 1), plus two factors on a parameter t that SGD (lr 1) raises by exactly
    1 per step: "push" (= t, the gradient that moves it) and "trap" (= log(3 - t) on a detached t, or sqrt(s)):
    finite until t reaches 3 (step 3), where log p = -inf; sqrt at s = 0 has an infinite gradient."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.t = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.s = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0).expand(x.shape).to_event(2), obs=x)
        pyro.factor("push", self.t)
        if self.kind == "value":
            pyro.factor("trap", torch.log(3.0 - self.t.detach()))
        else:
            pyro.factor("trap", torch.sqrt(self.s) if self.kind == "gradient" else 0.0 * self.s)


class TrapGuide(PyroModule):
    def __init__(self):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        pyro.sample("z", dist.Normal(self.loc, 1.0))


def train_trap(kind: str, lr: float = 1.0):
    cfg = SVIConfig(optimiser="sgd", lr=lr, steps=10)
    return train_svi(Trap(kind), TrapGuide(), torch.zeros(1, 1, dtype=torch.float64), cfg, seed=0, progress=False, desc="trap")


def test_a_non_finite_elbo_names_the_step_and_the_site():
    with pytest.raises(NonFiniteLoss, match=r"ELBO estimate is -?inf at step 3 \(trap\); first at model site 'trap': log p = -inf"):
        train_trap("value")


def test_a_non_finite_gradient_names_the_parameter_and_the_site():
    with pytest.raises(NonFiniteLoss, match=r"gradient of model\.s is not finite at step 0 \(trap\); first at model site "
                                            r"'trap': the gradient of its log density in model\.s is not finite"):
        train_trap("gradient")


def test_an_update_that_overflows_names_the_parameter():
    with pytest.raises(NonFiniteLoss, match=r"parameter model\.t is not finite after the update of step 0"):
        train_trap("none", lr=1e308 * 10 ** 0.3)  # t + lr * 1 overflows to inf


def test_a_checkpoint_is_never_written_with_nan(tmp_path):
    saver = ck.Checkpointer(tmp_path / "g.pt", {})
    with pytest.raises(RuntimeError, match=r"non-finite value at model\.w"):
        saver.save({"model": {"w": torch.tensor([0.0, float("nan")])}})
    assert not (tmp_path / "g.pt").exists()


def test_a_diverging_run_fails_cleanly_and_keeps_its_last_good_checkpoint(tmp_path, capsys):
    """SGD with an absurd step size on the GMM: the first update sends the scales out of range and the next
    ELBO is -inf. Exit 1 with one line naming step, guide and site; metrics.json "failed"; the checkpoint
    written after step 0 is the last one, finite, and resuming the failed run is refused."""
    args = ["run", "gmm_synthetic", "--out", str(tmp_path), "--no-progress", "--set", "svi.optimiser='sgd'",
            "--set", "svi.lr=1e8", "--set", "svi.lr_final=1e8", "--set", "checkpoint.every_steps=1", "--set", "svi.steps=20"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("vizoo: training stopped:")
    assert "at step 1 (mean_field); first at model site 'x': log p = -inf; stopped before the update" in err
    (run_dir,) = run_dirs(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["failed_guide"] == "mean_field" and "step 1" in metrics["error"]
    state = ck.load_tensors(run_dir / "checkpoints" / "mean_field.pt")
    assert state["step"] == 1 and not state["finished"] and not ck._first_non_finite(state)
    assert not list((run_dir / "params").glob("mean_field.pt"))  # nothing of the failed guide's is saved
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert "failed" in capsys.readouterr().err


# --------------------------------------------------------------------------- safe loading


class Payload:
    """Unpickling this runs ``open(path, "w")``: a file appearing means code ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def killed_run(tmp_path, monkeypatch):
    """A gmm run killed after its mean-field guide's first checkpoint (step 4 of 12)."""
    cfg = tiny_config("gmm", tmp_path / "runs")
    kill_after(monkeypatch, 1, cfg.guides[0])
    with pytest.raises(Killed):
        run_experiment(cfg, log=lambda *_: None)
    monkeypatch.undo()
    (run_dir,) = run_dirs(tmp_path / "runs")
    return run_dir, cfg


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_a_crafted_pickle_is_refused_and_nothing_in_it_runs(killed_run, tmp_path, capsys, kind):
    run_dir, cfg = killed_run
    marker = tmp_path / "pwned"
    path = run_dir / "checkpoints" / f"{cfg.guides[0]}.pt"
    state = ck.load_tensors(path)
    state["model"] = Payload(str(marker))  # everything else is a real checkpoint of this run
    buf = io.BytesIO()
    if kind == "torch.save":
        torch.save(state, buf)
    else:
        pickle.dump(state, buf, protocol=2)
    path.write_bytes(buf.getvalue())
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(path) in err and "weights_only=True" in err
    assert not marker.exists()
    assert not (run_dir / "metrics.json").exists()  # refused before any work
    # the payload is real: an unsafe load runs it
    (pickle.loads if kind == "pickle" else lambda b: torch.load(io.BytesIO(b), weights_only=False))(buf.getvalue())
    assert marker.exists()


@pytest.mark.parametrize("damage, message", [
    ("truncate", "cannot be loaded as a tensor file"),
    ("text", "cannot be loaded as a tensor file"),
    ("other_seed", "its config_sha256 .* is not this run's"),
    ("shape", r"model\.\w+ has shape \(4, 2, 7\) torch\.float64, the run's has \("),
    ("step", r"step 99 is outside 0\.\.svi\.steps=12"),
    ("nan", r"non-finite value at guide_state"),
])
def test_a_damaged_or_foreign_checkpoint_is_refused_before_any_work(killed_run, tmp_path, capsys, damage, message):
    run_dir, cfg = killed_run
    path = run_dir / "checkpoints" / f"{cfg.guides[0]}.pt"
    raw = path.read_bytes()
    state = ck.load_tensors(path)
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "text":
        path.write_text("not a checkpoint")
    else:
        if damage == "other_seed":
            other = tiny_config("gmm", tmp_path / "other", "seed=1")
            run_experiment(other, log=lambda *_: None)
            state = ck.load_tensors(run_dirs(tmp_path / "other")[0] / "checkpoints" / f"{cfg.guides[0]}.pt")
        elif damage == "shape":
            key = next(iter(state["model"]))  # e.g. the means, as unconstrained values
            state["model"][key] = torch.zeros(4, 2, 7, dtype=torch.float64)
        elif damage == "step":
            state["step"] = 99
        elif damage == "nan":
            key = next(iter(state["guide_state"]))
            state["guide_state"][key] = torch.full_like(state["guide_state"][key], float("nan"))
        buf = io.BytesIO()
        torch.save(state, buf)
        path.write_bytes(buf.getvalue())
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert re.search(message, err), err
    assert not (run_dir / "metrics.json").exists()


# --------------------------------------------------------------------------- paths


def tree(root):
    return {p for p in root.rglob("*")}


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", ".hidden", "-flag", "nul\x00byte", "x" * 101, ""])
def test_a_run_name_is_never_a_path(tmp_path, capsys, name):
    out = tmp_path / "runs"
    assert main(["run", "gmm_synthetic", "--out", str(out), "--set", f"name={json.dumps(name)}"]) == 2
    assert "name must be a plain folder name" in capsys.readouterr().err
    assert tree(tmp_path) == set()


def test_a_run_writes_only_inside_its_run_folder(tmp_path):
    out = tmp_path / "runs"
    cfg = tiny_config("gmm", out)
    before = tree(tmp_path)
    run_dir = run_experiment(cfg, log=lambda *_: None).run_dir
    new = tree(tmp_path) - before
    assert new and all(p == out or p.is_relative_to(run_dir) for p in new)
    assert {p.name for p in run_dir.iterdir()} >= {"config.toml", "params", "guides", "checkpoints", "metrics.json", "report.md"}


def test_resume_refuses_a_run_folder_whose_subfolder_links_elsewhere(killed_run, tmp_path, capsys):
    run_dir, _ = killed_run
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for p in (run_dir / "params").iterdir():
        p.unlink()
    (run_dir / "params").rmdir()
    (run_dir / "params").symlink_to(elsewhere, target_is_directory=True)
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert "must be a folder inside the run folder" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


def test_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["run", "gmm_synthetic", "--out", str(tmp_path / "file"), "--no-progress"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["run", "--resume", "/no/such/run"], "no such run folder"),
    (["run", "--resume", "."], "is not a run folder"),
    (["run", "gmm_synthetic", "--resume", "."], "give no CONFIG, --set or --out"),
    (["run", "--resume", ".", "--set", "seed=1"], "give no CONFIG, --set or --out"),
    (["run"], "run needs a CONFIG"),
])
def test_resume_arguments_are_checked(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


# --------------------------------------------------------------------------- sizes and config values


@pytest.mark.parametrize("config, key, value", [
    ("noisy_or_std", "model_args.num_causes", "100000000"),
    ("lda_synthetic", "model_args.num_topics", "10000000"),
    ("fhmm_synthetic", "model_args.num_chains", "100000"),
    ("vae_digits", "model_args.latent_sizes", "[10, 100000000]"),
    ("vae_digits", "model_args.hidden", "[100000000]"),
    ("gmm_synthetic", "guide_args.hidden", "[1000000000]"),
    ("gmm_synthetic", "svi.num_particles", "100000000"),
    ("gmm_synthetic", "data.num_points", "1000000000000"),
    ("diagnosis_std", "eval.importance_samples", "10000000000"),
])
def test_a_huge_size_is_refused_before_any_work(tmp_path, capsys, config, key, value):
    assert main(["run", config, "--out", str(tmp_path), "--set", "em.enabled=false", "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{key}=" in err and "larger than the limit" in err
    assert tree(tmp_path) == set()


def test_sizes_within_limits_that_do_not_fit_are_one_line(tmp_path, capsys):
    """10^6 synthetic points of dimension 10^5 would take 800 GB: the allocation fails, and says so in one line."""
    assert main(["run", "gmm_synthetic", "--out", str(tmp_path), "--set", "data.num_points=1000000",
                 "--set", "data.dim=100000", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("vizoo: error: out of memory")


@pytest.mark.parametrize("key, value", [("svi.lr", "inf"), ("svi.lr", "nan"), ("em.tol", "inf"), ("data.separation", "-inf")])
def test_non_finite_config_numbers_are_refused(tmp_path, capsys, key, value):
    assert main(["run", "gmm_synthetic", "--out", str(tmp_path), "--set", f"{key}={value}"]) == 2
    assert f"{key} must be a finite number, got {value.lstrip('+')}" in capsys.readouterr().err


def test_configs_are_data_never_code(tmp_path, capsys):
    """A config is parsed as TOML; text that would be code in Python is a string value, refused by type."""
    marker = tmp_path / "pwned"
    assert main(["run", "gmm_synthetic", "--out", str(tmp_path), "--set",
                 f"seed=__import__('pathlib').Path('{marker}').touch()"]) == 2
    assert "seed must be an integer" in capsys.readouterr().err
    assert not marker.exists()
    assert os.listdir(tmp_path) == []


def test_a_data_file_holding_a_pickle_is_refused_and_nothing_in_it_runs(tmp_path, capsys):
    import numpy as np

    marker = tmp_path / "pwned"
    path = tmp_path / "data.npy"
    np.save(path, np.array([[Payload(str(marker))]], dtype=object), allow_pickle=True)
    out = tmp_path / "runs"
    assert main(["run", "gmm_synthetic", "--out", str(out), "--set", "data.name='file'", "--set", f"data.path='{path}'"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "could not be read as a number matrix" in err
    assert not marker.exists() and not out.exists()
    np.load(path, allow_pickle=True)  # the payload is real: an unsafe load runs it
    assert marker.exists()
