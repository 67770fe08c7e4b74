"""Runs never lose work: checkpoints, resume bit for bit, the same seed twice, and non-finite steps.

Every registered model runs three times at tiny sizes: twice uninterrupted with the same seed (the metrics
and every saved tensor must be identical), and once "killed" right after a checkpoint, then resumed with
``vizoo run --resume`` (it must end identical to the uninterrupted run). Real SIGKILLs of a subprocess at
random moments are in ``test_sigkill_at_random_moments_then_resume``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    Killed,
    assert_same_run,
    kill_after,
    killed_run,
    run_dirs,
    tiny_config,
)
from vizoo.experiments import checkpoint as ck
from vizoo.experiments.cli import main
from vizoo.experiments.registry import MODELS
from vizoo.experiments.run import resume_experiment, run_experiment

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


@pytest.mark.parametrize("model", list(MODELS))
def test_same_seed_twice_and_kill_then_resume_are_bit_for_bit(model, tmp_path, monkeypatch):
    cfg = tiny_config(model, tmp_path)
    a = run_experiment(cfg, log=lambda *_: None).run_dir
    b = run_experiment(cfg, log=lambda *_: None).run_dir
    assert_same_run(a, b)  # the same seed gives identical metrics twice in a row

    last = cfg.guides[-1]  # earlier guides finish (restored from their final checkpoint); this one is cut off
    kill_after(monkeypatch, 2, last)  # after steps 4 and 8 of 12
    with pytest.raises(Killed):
        run_experiment(cfg, log=lambda *_: None)
    monkeypatch.undo()
    (killed,) = set(run_dirs(tmp_path)) - {a, b}
    assert not (killed / "metrics.json").exists()
    state = ck.load_tensors(killed / "checkpoints" / f"{last}.pt")
    assert state["step"] == 8 and not state["finished"]
    lines = []
    resumed = resume_experiment(killed, log=lines.append)
    assert resumed.run_dir == killed and not resumed.interrupted
    assert f"resuming {last} from its checkpoint: step 8 of 12" in lines
    assert_same_run(a, killed)


@pytest.mark.parametrize("model, extra", [
    ("noisy_or", ("svi.elbo='TraceGraph_ELBO'", "guide_args.baseline='network'")),  # baselines in the param store
    ("vae", ("svi.batch_size=10",)),  # plate subsampling draws from the torch RNG
    ("lda", ("svi.elbo='Trace_ELBO'", "svi.lr_final=0.001")),  # natural-gradient lambda; a decaying learning rate
])
def test_resume_restores_estimator_state_minibatches_and_schedules(model, extra, tmp_path, monkeypatch):
    cfg = tiny_config(model, tmp_path, *extra)
    a, killed = killed_run(cfg, tmp_path, monkeypatch, 1)  # the first guide, after step 4: nothing after it has run
    if "TraceGraph" in extra[0]:
        assert ck.load_tensors(killed / "checkpoints" / f"{cfg.guides[0]}.pt")["param_store"]  # baselines saved
    resume_experiment(killed, log=lambda *_: None)
    assert_same_run(a, killed)


def test_sigkill_at_random_moments_then_resume(tmp_path):
    """A real process, killed with SIGKILL at random moments while it checkpoints every step (so many kills
    land in the middle of a write); each time the last checkpoint loads, and the resumed run ends identical
    to an uninterrupted one."""
    overrides = ["--set", "svi.steps=150", "--set", "checkpoint.every_steps=1", "--set", "checkpoint.every_seconds=0",
                 "--set", "em.max_iter=20"]
    ref = tmp_path / "ref"
    assert main(["run", "gmm_synthetic", "--out", str(ref), "--no-progress", *overrides]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = random.Random(0)
    trials = 2
    for trial in range(trials):
        out = tmp_path / f"kill{trial}"
        proc = subprocess.Popen([sys.executable, "-m", "vizoo.experiments.cli", "run", "gmm_synthetic", "--out", str(out),
                                 "--no-progress", *overrides], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not list(out.glob("*/checkpoints/*.pt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere in training, mid-write or not
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        (run_dir,) = run_dirs(out)
        assert not (run_dir / "metrics.json").exists()
        for path in (run_dir / "checkpoints").glob("*.pt"):  # whatever was on disk at the kill loads
            state = ck.load_tensors(path)
            assert 1 <= state["step"] <= 150 and len(state["elbo_trace"]) == state["step"]
        assert main(["run", "--resume", str(run_dir), "--no-progress"]) == 0
        assert not list(run_dir.glob("*/.*.tmp"))  # temporary files of a killed write are cleared
        assert_same_run(run_dirs(ref)[0], run_dir)


def test_ctrl_c_then_resume_is_bit_for_bit(tmp_path, monkeypatch):
    """A run stopped by Ctrl-C (metrics.json "interrupted", exit 130) resumes from where it stopped."""
    from vizoo.experiments import train

    cfg = tiny_config("gmm", tmp_path)
    a = run_experiment(cfg, log=lambda *_: None).run_dir
    save = ck.Checkpointer.save

    def ctrl_c_at_second_save(self, state):
        save(self, state)
        if self.path.stem == cfg.guides[0] and self.saves == 2:
            train._STOP.set()  # what the SIGINT handler does

    monkeypatch.setattr(ck.Checkpointer, "save", ctrl_c_at_second_save)
    stopped = run_experiment(cfg, log=lambda *_: None)
    monkeypatch.undo()
    assert stopped.interrupted and stopped.metrics["guides"][cfg.guides[0]]["steps"] == 8
    assert json.loads((stopped.run_dir / "metrics.json").read_text())["status"] == "interrupted"
    assert main(["run", "--resume", str(stopped.run_dir), "--no-progress"]) == 0
    assert_same_run(a, stopped.run_dir)
    # a complete run has nothing to resume: one line, exit 2
    assert main(["run", "--resume", str(stopped.run_dir)]) == 2
