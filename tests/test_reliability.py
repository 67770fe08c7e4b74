"""Nothing runs that should not, and a run that goes wrong says where and keeps what was good.

* A non-finite ELBO, gradient or update stops training with the step, the parameter and the Pyro site;
  a real run that diverges exits 1, says "failed" in metrics.json, and keeps its last good checkpoint.
* Tensor files load only with ``weights_only=True``: a crafted pickle is refused and nothing in it runs.
  A checkpoint of another run, of changed data, or of the wrong shapes is refused before any work.
* Paths: a run's name is never a path, and a run writes nothing outside its run folder.
* A read-only or full disk is one line naming the path and the errno (exit 2 before the work, 1 during
  it), leaves no temporary file, and metrics.json says "failed" when the disk still takes it. Files get
  the mode the process umask gives an ordinary file, not mkstemp's 0o600.
* Sizes and non-finite config values are refused before any work; a combination that does not fit in
  memory is one line, not a traceback.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import stat

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import Killed, kill_after, run_dirs, tiny_config
from pyro.nn import PyroModule
from torch import nn
from vizoo.experiments import checkpoint as ck
from vizoo.experiments import report
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
    # local_steps=0: the guide's exact local E-step would meet the broken parameters first (its own one-line
    # error, checked below); without it the diagnosis reaches the model's site, which is what this test names
    args = ["run", "gmm_synthetic", "--out", str(tmp_path), "--no-progress", "--set", "svi.optimiser='sgd'",
            "--set", "svi.lr=1e8", "--set", "svi.lr_final=1e8", "--set", "checkpoint.every_steps=1", "--set", "svi.steps=20",
            "--set", "guide_args.local_steps=0"]
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
    assert main(args[:-2] + ["--out", str(tmp_path / "local")]) == 1  # the default exact local step: one line too
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not finite at step 1 (mean_field)" in err and "stopped before the update" in err


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
    ("truncate", r"the file is damaged: it is cut short \(\d+ bytes, .*; delete it to train guide 'mean_field' again "
                 r"from step 0 \(vizoo run --resume .*\), or start a new run$"),
    ("empty", r"the file is damaged: it is empty; delete it to train guide 'mean_field' again"),
    ("text", r"the file is damaged: it is not a file written by torch\.save \(.*\); delete it to train guide"),
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
    elif damage == "empty":
        path.write_bytes(b"")
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
    assert str(path) in err
    assert not (run_dir / "metrics.json").exists()


def test_deleting_a_damaged_checkpoint_retrains_that_guide(killed_run, capsys):
    """What the message says to do works: without the file, --resume trains that guide again from step 0."""
    run_dir, cfg = killed_run
    path = run_dir / "checkpoints" / f"{cfg.guides[0]}.pt"
    path.write_bytes(path.read_bytes()[:100])
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 2
    assert "delete it" in capsys.readouterr().err
    path.unlink()
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["guides"][cfg.guides[0]]["steps"] == 12


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


# --------------------------------------------------------------------------- read-only and full disks; file modes


class Disk:
    """Every write of ``report.write_atomic`` ends with ``os.fsync``: this one fails, like a full (ENOSPC) or
    read-only (EROFS) disk, for the files ``fails(path)`` picks, from the first such file on (``sticky``) or
    for those files only."""

    def __init__(self, monkeypatch, code: int, fails, sticky: bool):
        self.code, self.fails, self.sticky, self.broken = code, fails, sticky, False
        self.real = os.fsync
        monkeypatch.setattr(os, "fsync", self.fsync)

    def fsync(self, fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if self.fails(path) or (self.sticky and self.broken):
            self.broken = True
            raise OSError(self.code, os.strerror(self.code))
        self.real(fd)


def tiny_cli(out):
    return ["run", "gmm_synthetic", "--out", str(out), "--no-progress", "--set", "svi.steps=12",
            "--set", "checkpoint.every_steps=4", "--set", "data.num_points=200"]


def test_a_run_folder_that_cannot_be_made_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    monkeypatch.setattr(os, "mkdir", read_only)
    out = tmp_path / "runs"
    assert main(tiny_cli(out)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err == f"vizoo: error: cannot create the run folder {out}: Read-only file system (EROFS)"
    assert tree(tmp_path) == set()


def test_a_read_only_disk_before_any_work_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    """The run folder is made, its config cannot be written: exit 2, no temporary file, nothing trained."""
    Disk(monkeypatch, errno.EROFS, lambda path: True, sticky=True)
    out = tmp_path / "runs"
    assert main(tiny_cli(out)) == 2
    err = capsys.readouterr().err.strip()
    (run_dir,) = run_dirs(out)
    assert "\n" not in err and err.startswith(f"vizoo: error: cannot write {run_dir / 'config.toml'}: Read-only file system (EROFS)")
    assert f"cannot write {run_dir / 'metrics.json'}: Read-only file system (EROFS) either" in err
    assert [p for p in tree(run_dir) if p.is_file()] == []  # no temporary file, no checkpoint


@pytest.mark.parametrize("sticky", [True, False], ids=["disk_full", "checkpoints_only"])
def test_a_full_disk_during_the_run_is_one_line_exit_1_and_says_failed(tmp_path, capsys, monkeypatch, sticky):
    """The first checkpoint cannot be written (ENOSPC). Exit 1 with one line naming it and the errno; no temporary
    file is left; metrics.json says "failed" when the disk still takes it (and says so when it does not); once
    there is room, --resume finishes the run."""
    disk = Disk(monkeypatch, errno.ENOSPC, lambda path: "/checkpoints/" in path, sticky=sticky)
    out = tmp_path / "runs"
    assert main(tiny_cli(out)) == 1
    err = capsys.readouterr().err.strip()
    (run_dir,) = run_dirs(out)
    assert disk.broken and "\n" not in err
    assert re.match(rf"vizoo: error: cannot write {re.escape(str(run_dir))}/checkpoints/\w+\.pt: No space left on device \(ENOSPC\); ", err)
    assert f"continue with: vizoo run --resume {run_dir}" in err
    assert not [p for p in tree(tmp_path) if p.name.endswith(".tmp")]
    if sticky:
        assert f"cannot write {run_dir / 'metrics.json'}: No space left on device (ENOSPC) either" in err
        assert not (run_dir / "metrics.json").exists()
        return
    assert f'{run_dir / "metrics.json"} says "failed"' in err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["resumable"] is True and "ENOSPC" in metrics["error"]
    monkeypatch.undo()  # room again
    assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "complete"


def test_write_atomic_removes_its_temporary_file_on_failure(tmp_path, monkeypatch):
    Disk(monkeypatch, errno.ENOSPC, lambda path: True, sticky=True)
    with pytest.raises(report.OutputError, match=r"cannot write .*a\.txt: No space left on device \(ENOSPC\)$"):
        report.write_atomic(tmp_path / "a.txt", "x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_get_the_mode_of_the_process_umask(tmp_path, umask):
    """Like open(path, "w"): 0o666 less the umask (mkstemp's 0o600 would hide a report from a web server)."""
    old = os.umask(umask)
    try:
        if umask == 0o022:  # one whole run: config, checkpoints, parameters, PNGs, report, metrics
            run_dir = run_experiment(tiny_config("gmm", tmp_path / "runs"), log=lambda *_: None).run_dir
            files = [p for p in tree(run_dir) if p.is_file()]
            assert {p.suffix for p in files} >= {".toml", ".pt", ".png", ".md", ".json"}
        else:
            report.write_atomic(tmp_path / "a.txt", "x")
            files = [tmp_path / "a.txt"]
    finally:
        os.umask(old)
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {oct(0o666 & ~umask)}


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


# --------------------------------------------------------------------------- counts, hostile data, impossible results


@pytest.mark.parametrize("config, key, value, limit", [
    ("gmm_synthetic", "svi.steps", "100000000000", "1,000,000"),
    ("gmm_synthetic", "em.max_iter", "10000000", "100,000"),
    ("lda_synthetic", "svi.batch_size", "100000000", "1,000,000"),
    ("diagnosis_std", "eval.refit_steps", "100000000", "100,000"),
    ("diagnosis_std", "eval.train_points", "100000000", "1,000,000"),
    ("gmm_synthetic", "checkpoint.every_steps", "100000000", "1,000,000"),
    ("gmm_faithful", "data.subset", "10000000000", "100,000,000"),
    ("lda_synthetic", "data.min_doc_freq", "10000000000", "1,000,000"),
])
def test_a_huge_count_is_refused_before_any_work(tmp_path, capsys, config, key, value, limit):
    assert main(["run", config, "--out", str(tmp_path), "--set", "em.enabled=false", "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{key}={value} is larger than the limit of {limit} (" in err
    assert tree(tmp_path) == set()


@pytest.mark.parametrize("seed", ["-1", "4294967296", "9223372036854775807"])
def test_a_seed_outside_what_pyro_takes_is_refused_before_any_work(tmp_path, capsys, seed):
    assert main(["run", "gmm_synthetic", "--out", str(tmp_path), "--set", f"seed={seed}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"seed={seed} must be in [0, 2,147,483,647]" in err
    assert tree(tmp_path) == set()


@pytest.mark.parametrize("argv, message", [
    (["compare", "gmm", "--seeds", "1000000"], "--seeds=1000000 is larger than the limit of 1,000"),
    (["compare", "gmm", "--draws", "1000000000"], "--draws=1000000000 is larger than the limit of 1,000,000"),
    (["report", "--seeds", "1000000"], "--seeds=1000000 is larger than the limit of 1,000"),
])
def test_huge_comparison_counts_are_refused_before_any_work(tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err
    assert tree(tmp_path) == set()


def _file_run(tmp_path, values, *sets):
    import numpy as np

    np.save(tmp_path / "x.npy", values)
    out = tmp_path / "runs"
    argv = ["run", "gmm_synthetic", "--out", str(out), "--no-progress", "--set", "data.name='file'",
            "--set", f"data.path='{tmp_path / 'x.npy'}'", "--set", "svi.steps=5", "--set", "em.max_iter=5"]
    for s in sets:
        argv += ["--set", s]
    return main(argv), out


def test_data_near_the_largest_float_is_refused_not_standardised_to_zero(tmp_path, capsys):
    """Values around 1e300: the column's sd overflows to inf and standardising made every value 0 (the run then
    'completed' above EM's optimum). Refused, with the column, before any work."""
    import numpy as np

    values = np.random.default_rng(0).normal(size=(50, 2)) * 1e300 + 1e300
    code, out = _file_run(tmp_path, values)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(f"vizoo: error: data.path '{tmp_path / 'x.npy'}': standardising the data overflows in column 0")
    assert "sd inf" in err and "rescale the data" in err
    assert not out.exists()


@pytest.mark.parametrize("sets, message", [
    (("data.standardise=false",), "the initial parameters computed from the data are not finite (scales)"),
    (("data.standardise=false", "dtype='float32'"), "dtype='float32': the data overflow it (largest |value| 1e+300)"),
])
def test_data_that_overflows_on_its_way_to_the_model_is_refused(tmp_path, capsys, sets, message):
    import numpy as np

    values = np.linspace(-1.0, 1.0, 100).reshape(50, 2) * 1e300
    code, out = _file_run(tmp_path, values, *sets)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and message in err, err
    assert not out.exists()


def _lifted_gmm(monkeypatch, lift: float):
    """The gmm, whose exact ELBO is reported ``lift`` x |log p(x)| above its exact log p(x): what a bug (or an
    overflow) in an ELBO would give."""
    import dataclasses

    from vizoo.experiments import registry

    spec = registry.MODELS["gmm"]
    exact = spec.exact

    def elbo(x, params, q):
        logp = exact.log_evidence(x, params)
        return logp + lift * logp.abs()

    monkeypatch.setitem(registry.MODELS, "gmm", dataclasses.replace(spec, exact=dataclasses.replace(exact, elbo=elbo)))


def test_an_elbo_above_the_exact_log_likelihood_stops_the_run(tmp_path, capsys, monkeypatch):
    """ELBO <= log p(x) exactly (their difference is a KL); an ELBO above it beyond round-off (1e-6 relative in
    float64) is impossible: the run stops with one line and exit 1, metrics.json says "failed", and no report
    is written. Within round-off it completes."""
    _lifted_gmm(monkeypatch, 1e-4)
    out = tmp_path / "runs"
    argv = ["run", "gmm_synthetic", "--out", str(out), "--no-progress", "--set", "svi.steps=5", "--set", "em.max_iter=5",
            "--set", "data.num_points=60", "--set", "guides=['mean_field']"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("vizoo: run stopped: impossible result, not reported: guide 'mean_field': "
                                              "the exact ELBO/point")
    assert "is above the exact log p(x)/point" in err and "round-off allows" in err
    (run_dir,) = run_dirs(out)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["failed_guide"] == "mean_field" and "impossible result" in metrics["error"]
    assert not (run_dir / "report.md").exists()

    _lifted_gmm(monkeypatch, 1e-9)  # round-off: reported as it is
    out2 = tmp_path / "runs2"
    assert main(argv[:2] + ["--out", str(out2)] + argv[4:]) == 0
    (run_dir,) = run_dirs(out2)
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "complete"
