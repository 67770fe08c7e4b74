"""Shared fixtures: small float64 problems with known truth."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

# Property tests draw the same cases on every run and machine (fixed seeds): a failure is reproducible, and a
# green run is not luck. A wider search: VIZOO_FUZZ_SCALE (tests/test_properties.py) or HYPOTHESIS_PROFILE=random.
settings.register_profile("fixed", derandomize=True, database=None)
settings.register_profile("random", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))

from vizoo.experiments.run import run_experiment
from vizoo.models.gmm import GMMArgs, init_params, random_params, simulate


class Problem:
    def __init__(self, num_components: int, dim: int, num_points: int, covariance: str, seed: int, separation: float):
        self.args = GMMArgs(num_components, covariance)
        self.truth = random_params(num_components, dim, seed, separation, covariance)
        self.x, self.z = simulate(self.truth, num_points, seed + 1)
        self.init = init_params(self.x, self.args, seed)


@pytest.fixture
def small_problem() -> Problem:
    """K=3, D=2, N=300, moderately overlapping (separation 2 in units of the scales)."""
    return Problem(3, 2, 300, "diag", seed=0, separation=2.0)


def random_q(num_points: int, num_components: int, seed: int) -> torch.Tensor:
    """A random (N, K) table of categorical probabilities, some rows nearly deterministic."""
    gen = torch.Generator().manual_seed(seed)
    logits = 4.0 * torch.randn(num_points, num_components, generator=gen, dtype=torch.float64)
    return torch.softmax(logits, -1)


if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- whole runs at tiny sizes (reliability tests)

TIMING = ("wall_time_s", "elbo_times")  # wall-clock measurements: the only fields two identical runs may differ in


class Killed(BaseException):
    """Stands in for SIGKILL in-process: raised right after a checkpoint is written, so nothing else runs."""


def tiny_config(model: str, out: Path, *extra: str):
    """The model's bundled config at smoke-test sizes: 12 SVI steps, a checkpoint every 4."""
    from vizoo.experiments.compare import base_config, tiny_overrides
    from vizoo.experiments.config import apply_override, parse_config
    from vizoo.experiments.registry import MODELS

    raw, _ = base_config(MODELS[model], None)
    for item in (*tiny_overrides(), "svi.steps=12", "checkpoint.every_steps=4", "checkpoint.every_seconds=0",
                 "progress=false", f"output_dir={json.dumps(str(out))}", *extra):
        apply_override(raw, item)
    raw["name"] = model
    return parse_config(raw)


def strip_timing(obj):
    if isinstance(obj, dict):
        return {k: strip_timing(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [strip_timing(v) for v in obj]
    return obj


def assert_same_run(a: Path, b: Path) -> None:
    """Identical metrics (wall times aside) and identical tensors in every saved file, bit for bit."""
    ma, mb = (strip_timing(json.loads((d / "metrics.json").read_text())) for d in (a, b))
    assert ma == mb
    files = sorted(p.relative_to(a) for sub in ("params", "guides") for p in (a / sub).glob("*.pt"))
    assert files and files == sorted(p.relative_to(b) for sub in ("params", "guides") for p in (b / sub).glob("*.pt"))
    from vizoo.experiments.checkpoint import load_tensors

    for rel in files:
        ta, tb = load_tensors(a / rel), load_tensors(b / rel)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{rel}: {k} differs"


def kill_after(monkeypatch, saves: int, guide: str) -> None:
    """Make the ``saves``-th checkpoint of ``guide`` the last thing the run does."""
    from vizoo.experiments import checkpoint as ck

    save = ck.Checkpointer.save

    def dying_save(self, state):
        save(self, state)
        if self.path.stem == guide and self.saves == saves:
            raise Killed

    monkeypatch.setattr(ck.Checkpointer, "save", dying_save)


def killed_run(cfg, out: Path, monkeypatch, saves: int) -> tuple[Path, Path]:
    """(an uninterrupted run's folder, the folder of the same run killed right after its first guide's ``saves``-th
    checkpoint), both under ``out``: what a resume test resumes and compares."""
    a = run_experiment(cfg, log=lambda *_: None).run_dir
    kill_after(monkeypatch, saves, cfg.guides[0])
    with pytest.raises(Killed):
        run_experiment(cfg, log=lambda *_: None)
    monkeypatch.undo()
    (killed,) = set(run_dirs(out)) - {a}
    return a, killed


def run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir())


@pytest.fixture
def one_thread():
    """One torch thread for the test: bit-for-bit comparisons within it (float sums depend on the thread count),
    and small tensors that would only wait on a busy second core. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
