"""SVI: one loop for every model and guide.

Each step estimates the ELBO and its gradient with a Pyro estimator (``loss_and_grads`` puts the
surrogate gradient on the model's and guide's parameters) and takes a torch optimiser step; a guide
with an ``after_step`` method then takes its own closed-form step (LDA's natural-gradient lambda). With
``TraceEnum_ELBO`` the guide is wrapped in ``config_enumerate`` so its discrete sites are summed out
exactly, in parallel. ``Analytic_ELBO`` is not a Pyro estimator: it backpropagates the guide's ELBO in
closed form (``guide.analytic_elbo``), for guides whose expectations are analytic (the factorial HMM's).
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import sys
import threading
import time
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.infer import (
    ELBO,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    config_enumerate,
)
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checkpoint import (
    param_store_state,
    rng_state,
    set_param_store_state,
    set_rng_state,
)
from .config import SVIConfig


class Analytic_ELBO:
    """The ELBO in closed form, no sampling: for guides with ``analytic_elbo(x, params)`` (the factorial HMM's,
    whose expectations under q are analytic). ``loss_and_grads`` backpropagates the exact ELBO: the gradient
    has no Monte Carlo variance, so this is the low-variance path; each step costs one evaluation of the
    ELBO. ``num_particles`` is ignored."""

    def __init__(self, num_particles: int = 1, max_plate_nesting: int = 1):
        del num_particles, max_plate_nesting

    def loss_and_grads(self, model: nn.Module, guide: nn.Module, x: Tensor, **kwargs) -> float:
        loss = -guide.analytic_elbo(x, model.params)
        loss.backward()
        return float(loss.detach())

    def loss(self, model: nn.Module, guide: nn.Module, x: Tensor, **kwargs) -> float:
        with torch.no_grad():
            return float(-guide.analytic_elbo(x, model.params))


ELBO_CLASSES: dict[str, type] = {
    "Trace_ELBO": Trace_ELBO,
    "TraceGraph_ELBO": TraceGraph_ELBO,
    "TraceEnum_ELBO": TraceEnum_ELBO,
    "TraceMeanField_ELBO": TraceMeanField_ELBO,
    "Analytic_ELBO": Analytic_ELBO,
}
OPTIMISERS: dict[str, type[torch.optim.Optimizer]] = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class SVIResult(NamedTuple):
    """elbo_trace: the ELBO estimate per data point at each step (before that step's update).
    steps: steps completed. wall_time: seconds in the loop. interrupted: stopped by Ctrl-C.
    times: seconds since the loop started, at the end of each step (for ELBO against wall time)."""

    elbo_trace: list[float]
    steps: int
    wall_time: float
    interrupted: bool
    times: list[float] = []


class NonFiniteLoss(RuntimeError):
    """The ELBO estimate, a gradient or a parameter became NaN or infinite. The message names the step, the
    guide, and the parameter and Pyro site where it showed first."""


def _non_finite_name(named: list[tuple[str, Tensor]], attr: str = "") -> str:
    """The name of the first parameter (or its gradient, attr="grad") with a NaN or infinite entry, or ""."""
    for name, p in named:
        t = getattr(p, attr) if attr else p
        if t is not None and not torch.isfinite(t).all():
            return name
    return ""


def _check_finite(named: list[tuple[str, Tensor]], step: int, desc: str, when: str) -> None:
    bad = _non_finite_name(named)
    if bad:
        raise NonFiniteLoss(f"parameter {bad} is not finite {when} step {step} ({desc})")


def _site_report(model, guide, x: Tensor, kwargs: dict, rng: Tensor, named: list[tuple[str, Tensor]]) -> str:
    """Which Pyro site made a step non-finite: the step is replayed from its random state (so the guide draws
    the same z), model and guide are traced, and each sample site's value, log-density and the gradient of
    its log-density are checked in execution order (guide first). A diagnosis only; it changes nothing that
    is saved."""
    torch.set_rng_state(rng)
    params = [p for _, p in named]
    with pyro.validation_enabled(False):  # let NaN reach the log-densities, where the site is named
        try:
            guide_trace = poutine.trace(guide).get_trace(x, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, **kwargs)
        except Exception as err:  # the replay itself fails (a distribution given NaN): that is the diagnosis
            return f"; replaying the step fails: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        for part, tr in (("guide", guide_trace), ("model", model_trace)):
            for name, site in tr.nodes.items():
                if site["type"] != "sample":
                    continue
                value = site["value"]
                if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                    return f"; first at {part} site {name!r}: its draw is not finite"
                try:
                    lp = site["fn"].log_prob(value)
                except Exception as err:
                    return f"; first at {part} site {name!r}: log_prob fails ({str(err).splitlines()[0]})"
                total = lp.sum() if torch.is_tensor(lp) else torch.as_tensor(lp)
                if not torch.isfinite(total):
                    return f"; first at {part} site {name!r}: log {'q' if part == 'guide' else 'p'} = {float(total.detach())}"
                if total.requires_grad:
                    grads = torch.autograd.grad(total, params, allow_unused=True, retain_graph=True)
                    for (pname, _), g in zip(named, grads):
                        if g is not None and not torch.isfinite(g).all():
                            return f"; first at {part} site {name!r}: the gradient of its log density in {pname} is not finite"
    return ""


_STOP = threading.Event()


@contextlib.contextmanager
def interruptible():
    """Within this block the first Ctrl-C only asks training to stop: ``train_svi`` finishes its current
    step and returns, marked interrupted, so no step is cut in half and nothing in between (an exact
    fit, an evaluation, a file being written) is interrupted at all. A second Ctrl-C raises
    KeyboardInterrupt as usual. Outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _STOP.clear()

    def handler(signum, frame):
        if _STOP.is_set():
            raise KeyboardInterrupt
        _STOP.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _STOP.clear()


def stop_requested() -> bool:
    """Whether Ctrl-C was pressed inside the current ``interruptible`` block."""
    return _STOP.is_set()


def show_bar(progress: bool, stream=None) -> bool:
    """Whether to draw a progress bar: asked for, and the stream (stderr) is a terminal. Redirected to a file or a
    pipe (``make run > log``) a bar would write a line of carriage-return updates per refresh; the runs' own log
    lines (one per model, seed and guide) are the progress there."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(progress) and stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def make_elbo(cfg: SVIConfig, max_plate_nesting: int = 1) -> ELBO:
    """The estimator. ``max_plate_nesting`` matters to TraceEnum_ELBO (where enumerated dims start); the
    others find the nesting from the model (the factorial HMM nests two plates)."""
    if cfg.elbo == "TraceEnum_ELBO":
        return TraceEnum_ELBO(num_particles=cfg.num_particles, max_plate_nesting=max_plate_nesting)
    return ELBO_CLASSES[cfg.elbo](num_particles=cfg.num_particles)


def train_svi(
    model: nn.Module,
    guide: nn.Module,
    x: Tensor,
    cfg: SVIConfig,
    seed: int,
    progress: bool = True,
    desc: str = "svi",
    checkpoint=None,
    resume: dict | None = None,
) -> SVIResult:
    """Maximise the ELBO over the parameters of ``model`` and ``guide`` on data ``x``: (N, ...).

    Pyro's validation is on for the first step and off after it (it costs a quarter of a small VAE step).
    A non-finite ELBO estimate or gradient stops the run before the update (:class:`NonFiniteLoss`, naming
    the step, the parameter and the Pyro site); an update that makes a parameter non-finite stops it too.
    Either way no checkpoint is written after the last good one.

    ``checkpoint`` (an :class:`experiments.checkpoint.Checkpointer`): saves the whole training state when its
    schedule says so, when training ends (``finished``) and when Ctrl-C stops it. ``resume``: such a state;
    training continues from it, and ends bit for bit where an uninterrupted run would (same machine and
    thread count). A finished state is restored and returned without a step.

    With ``cfg.batch_size`` (< N), model and guide are called with ``subsample_size`` and each step sees
    that many points; the estimate is rescaled to all N, so the trace stays an ELBO per point."""
    pyro.set_rng_seed(seed)
    # Model and guide parameters live in their modules (module_local_params); the global store holds
    # only estimator state, such as TraceGraph_ELBO's decaying-average baselines. Start it empty.
    pyro.clear_param_store()
    elbo = make_elbo(cfg)
    guide_fn = config_enumerate(guide, "parallel") if cfg.elbo == "TraceEnum_ELBO" else guide
    named = [(f"model.{n}", p) for n, p in model.named_parameters() if p.requires_grad]
    named += [(f"guide.{n}", p) for n, p in guide.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    extra = {"betas": cfg.betas} if cfg.optimiser == "adam" else {}
    optim = OPTIMISERS[cfg.optimiser](params, lr=cfg.lr, **extra)
    gamma = (cfg.lr_final / cfg.lr) ** (1.0 / max(cfg.steps, 1)) if cfg.lr_final else 1.0
    schedule = torch.optim.lr_scheduler.ExponentialLR(optim, gamma)
    num_points = x.shape[0]
    kwargs = {"subsample_size": cfg.batch_size} if cfg.batch_size and cfg.batch_size < num_points else {}
    after_step = getattr(guide, "after_step", None)  # a guide's own closed-form update (LDA's natural step)
    trace: list[float] = []
    times: list[float] = []
    offset = 0.0  # seconds spent before a resume
    if resume is not None:
        with torch.no_grad():
            model.load_state_dict(resume["model"])
            guide.load_state_dict(resume["guide_state"])
        optim.load_state_dict(copy.deepcopy(resume["optimiser"]))  # it would keep (and update) the given tensors
        schedule.load_state_dict(resume["schedule"])
        set_param_store_state(resume["param_store"])
        set_rng_state(resume["rng"])
        trace, times = list(resume["elbo_trace"]), list(resume["times"])
        offset = times[-1] if times else 0.0
        if resume.get("finished"):
            return SVIResult(trace, len(trace), float(resume.get("wall_time", offset)), False, times)
    _check_finite(named, len(trace), desc, "before")
    optim.zero_grad(set_to_none=True)  # a guide's builder may leave gradients behind (a network pre-fitted to a start)

    def state(finished: bool) -> dict:
        return {
            "step": len(trace), "steps": cfg.steps, "finished": finished,
            "model": model.state_dict(), "guide_state": guide.state_dict(),
            "optimiser": optim.state_dict(), "schedule": schedule.state_dict(),
            "param_store": param_store_state(), "rng": rng_state(),
            "elbo_trace": list(trace), "times": list(times), "wall_time": offset + time.perf_counter() - start,
        }

    interrupted = False
    clean = True  # no step was cut in half (a second Ctrl-C raises mid-step): the state is one to save
    bar = tqdm(total=cfg.steps, initial=len(trace), desc=desc, disable=not show_bar(progress), leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for step in range(len(trace), cfg.steps):
            if _STOP.is_set():  # Ctrl-C under interruptible(): stop between steps
                interrupted = True
                break
            before = torch.get_rng_state()  # for the diagnosis of a non-finite step (Pyro draws from torch's RNG)
            # Pyro's validation (shapes, supports, distribution arguments) checks the first step; later steps
            # run the same code on the same kinds of values, and are guarded by the finite checks here
            with pyro.validation_enabled(step == 0):
                loss = elbo.loss_and_grads(model, guide_fn, x, **kwargs)
            bad_grad = _non_finite_name(named, "grad")
            if not math.isfinite(loss) or bad_grad:
                what = f"the ELBO estimate is {-loss}" if not math.isfinite(loss) else f"the gradient of {bad_grad} is not finite"
                site = _site_report(model, guide, x, kwargs, before, named) if cfg.elbo != "Analytic_ELBO" else ""
                raise NonFiniteLoss(f"{what} at step {step} ({desc}){site}; stopped before the update")
            optim.step()
            optim.zero_grad(set_to_none=True)
            if after_step is not None:
                with torch.no_grad():
                    after_step()
            _check_finite(named, step, desc, "after the update of")
            schedule.step()
            trace.append(-loss / num_points)
            times.append(offset + time.perf_counter() - start)
            if checkpoint is not None and step + 1 < cfg.steps and checkpoint.due(step + 1, time.perf_counter()):
                checkpoint.save(state(finished=False))
            if step % 10 == 0 or step == cfg.steps - 1:
                bar.set_postfix_str(f"ELBO/point {trace[-1]:.4f}", refresh=False)
            bar.update()
    except KeyboardInterrupt:  # mid-step: the last checkpoint on disk stays the one to resume from
        interrupted, clean = True, False
    finally:
        bar.close()
    if checkpoint is not None and clean:  # the end of training, or the step boundary where Ctrl-C stopped it
        checkpoint.save(state(finished=not interrupted and len(trace) == cfg.steps))
    return SVIResult(trace, len(trace), offset + time.perf_counter() - start, interrupted, times)
