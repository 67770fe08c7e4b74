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
import math
import signal
import threading
import time
from typing import NamedTuple

import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO, config_enumerate
from torch import Tensor, nn
from tqdm.auto import tqdm

from experiments.config import SVIConfig

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
    """The ELBO estimate or a parameter became NaN or infinite."""


def _check_finite(named: list[tuple[str, Tensor]], step: int, desc: str) -> None:
    """Stop before a step whose parameters are not finite, naming the first such parameter."""
    for name, p in named:
        if not torch.isfinite(p).all():
            raise NonFiniteLoss(f"parameter {name} is not finite at step {step} ({desc})")


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
) -> SVIResult:
    """Maximise the ELBO over the parameters of ``model`` and ``guide`` on data ``x``: (N, ...).

    Pyro's validation is on for the first step and off after it (it costs a quarter of a small VAE step);
    a non-finite loss or parameter stops the run at any step (:class:`NonFiniteLoss`).

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
    interrupted = False
    bar = tqdm(total=cfg.steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for step in range(cfg.steps):
            if _STOP.is_set():  # Ctrl-C under interruptible(): stop between steps
                interrupted = True
                break
            _check_finite(named, step, desc)
            # Pyro's validation (shapes, supports, distribution arguments) checks the first step; later steps
            # run the same code on the same kinds of values, and are guarded by the finite checks here
            with pyro.validation_enabled(step == 0):
                loss = elbo.loss_and_grads(model, guide_fn, x, **kwargs)
            if not math.isfinite(loss):
                raise NonFiniteLoss(f"ELBO estimate is {-loss} at step {step} ({desc})")
            optim.step()
            optim.zero_grad(set_to_none=True)
            if after_step is not None:
                with torch.no_grad():
                    after_step()
            schedule.step()
            trace.append(-loss / num_points)
            times.append(time.perf_counter() - start)
            if step % 10 == 0 or step == cfg.steps - 1:
                bar.set_postfix_str(f"ELBO/point {trace[-1]:.4f}", refresh=False)
            bar.update()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    return SVIResult(trace, len(trace), time.perf_counter() - start, interrupted, times)
