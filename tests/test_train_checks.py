"""The training loop's numerical guards, now that the full one runs on a schedule.

``train_svi`` checks the ELBO estimate at every step and every parameter every ``CHECK_EVERY`` steps, before
every checkpoint and at the end; when a check fails it replays the steps since the last good snapshot with
every check at every step. These tests put the fault in the middle of a run, between two full checks, where
only the replay can name its step: the messages must be exactly those of a check at every step, the modules
must be left before the bad update, and no checkpoint may be written after the last good state.
"""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.nn import PyroModule
from torch import nn
from vizoo.experiments import checkpoint as ck
from vizoo.experiments import train
from vizoo.experiments.config import SVIConfig
from vizoo.experiments.train import CHECK_EVERY, NonFiniteLoss, train_svi

FAULT = CHECK_EVERY + CHECK_EVERY // 2  # between the first scheduled check and the second


class Ramp(PyroModule):
    """x ~ N(z, 1), z ~ N(0, 1), a factor "push" = t that SGD (lr 1) raises by exactly 1 per step, and a factor
    "trap" = log(limit - t) on a detached t: finite until step ``limit``, where log p = -inf."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.t = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0).expand(x.shape).to_event(2), obs=x)
        pyro.factor("push", self.t)
        pyro.factor("trap", torch.log(self.limit - self.t.detach()))


class FaultyGuide(PyroModule):
    """q(z) = N(loc, 1), and an ``after_step`` (a closed-form update, as LDA's) that writes inf into a parameter
    the ELBO never reads, after step ``fault``: the ELBO estimate stays finite, so only the full check sees it.
    ``counted_in_state``: the step counter is a buffer (restored with the snapshot, as LDA's ``topic_steps``);
    otherwise a Python attribute, which a replay cannot rewind. ``calls`` counts every after_step, replays included."""

    def __init__(self, fault: int, counted_in_state: bool = True):
        super().__init__()
        self.fault = fault
        self.loc = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.unused = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.counted_in_state = counted_in_state
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.python_steps = 0
        self.calls = 0

    def forward(self, x):
        pyro.sample("z", dist.Normal(self.loc, 1.0))

    def after_step(self) -> None:
        done = int(self.steps_done) if self.counted_in_state else self.python_steps
        if done == self.fault:
            self.unused.fill_(float("inf"))
        self.steps_done += 1
        self.python_steps += 1
        self.calls += 1


def _train(model, guide, steps: int, checkpoint=None, lr: float = 1.0):
    cfg = SVIConfig(optimiser="sgd", lr=lr, steps=steps)
    x = torch.zeros(1, 1, dtype=torch.float64)
    return train_svi(model, guide, x, cfg, seed=0, progress=False, desc="mid", checkpoint=checkpoint)


def test_a_non_finite_elbo_in_the_middle_is_named_and_the_modules_stop_before_it():
    model = Ramp(limit=FAULT)
    with pytest.raises(NonFiniteLoss, match=rf"ELBO estimate is -?inf at step {FAULT} \(mid\); first at model site 'trap': "
                                            r"log p = -inf; stopped before the update"):
        _train(model, FaultyGuide(fault=10**9), steps=3 * CHECK_EVERY)
    assert float(model.t.detach()) == FAULT  # as after FAULT good updates, not one more


def test_a_parameter_made_non_finite_between_checks_is_named_with_its_step():
    """The ELBO stays finite: the scheduled check after step 2 * CHECK_EVERY finds the inf, the replay from the
    snapshot at CHECK_EVERY names the update that made it, and training stops there, not at the end."""
    guide = FaultyGuide(fault=FAULT)
    with pytest.raises(NonFiniteLoss, match=rf"parameter guide\.unused is not finite after the update of step {FAULT} \(mid\)$"):
        _train(Ramp(limit=10**9), guide, steps=10 * CHECK_EVERY)
    assert guide.calls == 2 * CHECK_EVERY + (FAULT - CHECK_EVERY + 1)  # up to the scheduled check, then the replay


def test_a_fault_after_the_last_scheduled_check_is_found_at_the_end():
    steps = 2 * CHECK_EVERY + 7
    with pytest.raises(NonFiniteLoss, match=rf"parameter guide\.unused is not finite after the update of step {steps - 3} "):
        _train(Ramp(limit=10**9), FaultyGuide(fault=steps - 3), steps=steps)


def test_a_replay_that_does_not_meet_the_fault_again_still_stops_the_run():
    """State outside the modules (a Python counter) is not rewound: the replay passes the step, and the error
    says what the check found and that the replay did not reproduce it."""
    with pytest.raises(NonFiniteLoss, match=rf"parameter guide\.unused is not finite after the update of step {2 * CHECK_EVERY - 1} "
                                            rf"\(mid\); replaying from step {CHECK_EVERY} did not reproduce it"):
        _train(Ramp(limit=10**9), FaultyGuide(fault=FAULT, counted_in_state=False), steps=10 * CHECK_EVERY)


def test_no_checkpoint_is_written_after_the_last_good_state(tmp_path):
    """Checkpoints every 7 steps: each is preceded by the full check, so the one on disk is the last before the
    fault, finite, with a finite ELBO trace of one value per step."""
    saver = ck.Checkpointer(tmp_path / "g.pt", {}, every_steps=7)
    with pytest.raises(NonFiniteLoss, match=rf"after the update of step {FAULT} "):
        _train(Ramp(limit=10**9), FaultyGuide(fault=FAULT), steps=3 * CHECK_EVERY, checkpoint=saver)
    state = ck.load_tensors(tmp_path / "g.pt")
    assert state["step"] == 7 * (FAULT // 7) and not state["finished"] and not ck._first_non_finite(state)
    assert len(state["elbo_trace"]) == state["step"] and all(v == v and abs(v) < float("inf") for v in state["elbo_trace"])


def test_a_clean_run_is_unchanged_by_the_checks(monkeypatch):
    """Snapshots and full checks change no number: the trace equals a run checked at every step (CHECK_EVERY = 1)."""
    a = _train(Ramp(limit=10**9), FaultyGuide(fault=10**9), steps=2 * CHECK_EVERY + 5, lr=0.01)
    monkeypatch.setattr(train, "CHECK_EVERY", 1)
    b = _train(Ramp(limit=10**9), FaultyGuide(fault=10**9), steps=2 * CHECK_EVERY + 5, lr=0.01)
    assert a.elbo_trace == b.elbo_trace


def test_the_finite_check_by_sums_names_what_the_entry_by_entry_check_names():
    """The sums are a shortcut, never a different answer: finite entries whose sum overflows (float32 and float64)
    pass, a NaN or an infinity anywhere is named, and the first bad tensor in order is the one named."""
    big32 = torch.full((4,), 3e38, dtype=torch.float32)  # finite entries, sum = inf in float32
    big64 = torch.full((4,), 1e308, dtype=torch.float64)  # finite entries, sum = inf in float64
    ok = torch.randn(3, 5, dtype=torch.float64)
    named = [("a", big32), ("b", big64), ("c", ok)]
    assert train._non_finite_name(named) == ""

    for bad in (float("nan"), float("inf"), -float("inf")):
        for where in range(3):
            tensors = [t.clone() for _, t in named]
            tensors[where].view(-1)[1] = bad
            got = train._non_finite_name([(n, t) for (n, _), t in zip(named, tensors)])
            assert got == "abc"[where]
    two_bad = [("first", torch.tensor([1.0, float("nan")])), ("second", torch.tensor([float("inf")]))]
    assert train._non_finite_name(two_bad) == "first"
    # cancelling infinities (inf + -inf = NaN) and a gradient attribute
    p = nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([float("inf"), -float("inf")])
    assert train._non_finite_name([("p", p)], "grad") == "p"
    assert train._non_finite_name([("p", nn.Parameter(torch.zeros(2)))], "grad") == ""  # no gradient yet


def test_the_snapshot_clone_of_the_optimiser_state_is_a_deep_copy():
    """_cloned gives what copy.deepcopy gives (equal values, no shared tensors), the moments of a real Adam."""
    w = nn.Parameter(torch.randn(3, dtype=torch.float64))
    optim = torch.optim.Adam([w], lr=0.1)
    (w**2).sum().backward()
    optim.step()
    state = optim.state_dict()
    got, want = train._cloned(state), copy.deepcopy(state)
    assert got["param_groups"] == want["param_groups"]
    for k, s in want["state"].items():
        for name, v in s.items():
            assert torch.equal(got["state"][k][name], v)
            assert got["state"][k][name].data_ptr() != state["state"][k][name].data_ptr()
    point = ck.rng_state()
    assert train._cloned(point)["python"] == point["python"]
