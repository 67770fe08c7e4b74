"""SVI: one loop for every model and guide.

Each step estimates the ELBO and its gradient with a Pyro estimator (:func:`loss_and_grads` puts the
surrogate gradient on the model's and guide's parameters) and takes a torch optimiser step; a guide
with an ``after_step`` method then takes its own closed-form step (LDA's natural-gradient lambda); a guide with
``local_steps`` > 0 first brings the step's points' own parameters to (near) their optimum (``local_update``,
:mod:`guides.local`: Hoffman et al.'s local step). With
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
from typing import NamedTuple, NoReturn

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

from . import param_groups
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
    times: seconds since the loop started, at the end of each step (for ELBO against wall time).
    out_of_time: stopped between steps because ``svi.max_seconds`` had passed (steps < svi.steps)."""

    elbo_trace: list[float]
    steps: int
    wall_time: float
    interrupted: bool
    times: list[float] = []
    out_of_time: bool = False


class NonFiniteLoss(RuntimeError):
    """The ELBO estimate, a gradient or a parameter became NaN or infinite. The message names the step, the
    guide, and the parameter and Pyro site where it showed first."""


def _non_finite_name(named: list[tuple[str, Tensor]], attr: str = "") -> str:
    """The name of the first parameter (or its gradient, attr="grad") with a NaN or infinite entry, or "".

    One sum per tensor first: a finite sum means every entry is finite (an infinite or NaN entry makes the sum
    infinite or NaN), so only a tensor whose sum is not finite (a bad entry, or finite entries whose sum
    overflows, here or in the float32 the sums are compared in) is looked at entry by entry. The answer is the
    entry-by-entry one; the sums cost a tenth of it on the VAE's 0.4M parameters (no boolean copy of each)."""
    tensors = [(name, getattr(p, attr) if attr else p) for name, p in named]
    tensors = [(name, t.detach()) for name, t in tensors if t is not None]
    if not tensors:
        return ""
    sums = torch.stack([t.sum().float() for _, t in tensors])
    if bool(torch.isfinite(sums).all()):
        return ""
    for (name, t), ok in zip(tensors, torch.isfinite(sums).tolist()):
        if not ok and not torch.isfinite(t).all():
            return name
    return ""


def _cloned(state):
    """``copy.deepcopy`` of a state dict, its tensors cloned directly (deepcopy's per-tensor path costs 2.5x)."""
    if torch.is_tensor(state):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _cloned(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_cloned(v) for v in state]
    if isinstance(state, tuple):
        items = [_cloned(v) for v in state]
        return type(state)(*items) if hasattr(state, "_fields") else tuple(items)
    return copy.deepcopy(state)


def _check_finite(named: list[tuple[str, Tensor]], step: int, desc: str, when: str) -> None:
    bad = _non_finite_name(named)
    if bad:
        raise NonFiniteLoss(f"parameter {bad} is not finite {when} step {step} ({desc})")


def _site_report(model, guide, x: Tensor, kwargs: dict, rng: dict, named: list[tuple[str, Tensor]]) -> str:
    """Which Pyro site made a step non-finite: the step is replayed from its random state (so the guide draws
    the same z), model and guide are traced, and each sample site's value, log-density and the gradient of
    its log-density are checked in execution order (guide first). A diagnosis only; it changes nothing that
    is saved."""
    set_rng_state(rng)
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


def request_stop() -> None:
    """Ask training to stop at the next step boundary, as a first Ctrl-C does (a data-parallel run sets it on
    every process at the same step, once the processes agree that one of them was interrupted)."""
    _STOP.set()


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


def loss_and_grads(elbo, model, guide, x: Tensor, **kwargs) -> float:
    """The -ELBO estimate as a float, with its gradient accumulated on the parameters. Pyro's estimators that
    have ``differentiable_loss`` go through it (the route Pyro documents for module-local parameters, its
    ``ELBOModule``): their ``loss_and_grads`` skip the backward pass when no ``param`` site is traced, and
    networks may emit none (:func:`models.vae.network`). The others (TraceGraph_ELBO, Analytic_ELBO)
    backpropagate unconditionally. With one particle the two routes give the same float64 numbers."""
    if not hasattr(elbo, "differentiable_loss"):
        return elbo.loss_and_grads(model, guide, x, **kwargs)
    try:
        loss = elbo.differentiable_loss(model, guide, x, **kwargs)
    except ValueError as err:  # TraceEnum_ELBO refuses an estimate with no gradient path: nothing to learn this step
        if "cannot be differentiated" not in str(err):
            raise
        return float(loss_value(elbo, model, guide, x, **kwargs))
    if not torch.is_tensor(loss):  # nothing to differentiate
        return float(loss)
    if loss.requires_grad:
        loss.backward()
    return loss.item()


def loss_value(elbo, model, guide, x: Tensor, **kwargs) -> float:
    """The -ELBO estimate alone, no gradient (a step whose estimate has no gradient path)."""
    with torch.no_grad():
        return elbo.loss(model, guide, x, **kwargs)


def make_elbo(cfg: SVIConfig, max_plate_nesting: int = 1) -> ELBO:
    """The estimator. ``max_plate_nesting`` matters to TraceEnum_ELBO (where enumerated dims start); the
    others find the nesting from the model (the factorial HMM nests two plates)."""
    if cfg.elbo == "TraceEnum_ELBO":
        return TraceEnum_ELBO(num_particles=cfg.num_particles, max_plate_nesting=max_plate_nesting)
    return ELBO_CLASSES[cfg.elbo](num_particles=cfg.num_particles)


def _decay_by_time(optim, cfg: SVIConfig, seconds: float) -> None:
    """The step-size decay under a time budget (``svi.max_seconds`` with ``svi.lr_final``): every group at
    lr_g (lr_final / lr)^min(1, seconds / max_seconds), ``seconds`` the training time when the step starts (the
    recorded end of the step before, so a replayed or resumed step gets the same step size)."""
    factor = (cfg.lr_final / cfg.lr) ** min(1.0, seconds / cfg.max_seconds)
    for group in optim.param_groups:
        group["lr"] = group["initial_lr"] * factor


CHECK_EVERY = 100  # steps between full checks (every parameter finite); each passing one keeps a snapshot


def _snapshot(model: nn.Module, guide: nn.Module, optim, schedule, num_steps: int) -> dict:
    """A copy of everything a step reads or changes (the checkpoint's contents, cloned): the state to replay from."""
    return {
        "step": num_steps,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "guide_state": {k: v.detach().clone() for k, v in guide.state_dict().items()},
        "optimiser": _cloned(optim.state_dict()),  # state_dict holds the live moment tensors
        "schedule": schedule.state_dict(), "param_store": param_store_state(), "rng": rng_state(),
    }


def _restore(state: dict, model: nn.Module, guide: nn.Module, optim, schedule) -> None:
    """Put a checkpoint's or a snapshot's state back into the modules, optimiser, schedule, param store and RNGs."""
    with torch.no_grad():
        model.load_state_dict(state["model"])
        guide.load_state_dict(state["guide_state"])
    optim.load_state_dict(_cloned(state["optimiser"]))  # it would keep (and update) the given tensors
    schedule.load_state_dict(state["schedule"])
    set_param_store_state(state["param_store"])
    set_rng_state(state["rng"])


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
    parallel=None,
) -> SVIResult:
    """Maximise the ELBO over the parameters of ``model`` and ``guide`` on data ``x``: (N, ...).

    Pyro's validation is on for the first step and off after it (it costs a quarter of a small VAE step).

    Numerical guards. A non-finite ELBO estimate or gradient stops the run before the update
    (:class:`NonFiniteLoss`, naming the step, the parameter and the Pyro site); an update that makes a parameter
    non-finite stops it too, naming the step and the parameter. No checkpoint is written after the last good
    state, and the ELBO trace holds finite values only. The checks are split by cost: every step checks the ELBO
    estimate (a float, already computed); every ``CHECK_EVERY`` steps, before every checkpoint and at the end,
    every parameter is checked, and a state that passes is kept as a snapshot. When either check fails, the
    steps since the snapshot are replayed (bit for bit, from its random state) with the gradient and the
    parameters checked at each step, so the error names the first bad step exactly as a check at every step
    would, and the modules are left as they were before that step's update. (A non-finite gradient makes the
    update non-finite under SGD and Adam, so the parameter check finds it at the latest.) Checking every
    parameter at every step cost a fifth of a small VAE step.

    ``checkpoint`` (an :class:`experiments.checkpoint.Checkpointer`): saves the whole training state when its
    schedule says so, when training ends (``finished``) and when Ctrl-C stops it. ``resume``: such a state;
    training continues from it, and ends bit for bit where an uninterrupted run would (same machine and
    thread count). A finished state is restored and returned without a step.

    With ``cfg.batch_size`` (< N), model and guide are called with ``subsample_size`` and each step sees
    that many points; the estimate is rescaled to all N, so the trace stays an ELBO per point.

    ``parallel`` (an :class:`experiments.distributed.DataParallel`, one process of a data-parallel run): it
    broadcasts rank 0's parameters before the first step, gives each step this process's point indices and seed
    (``subsample``), and combines the gradients and the estimate over the processes before the checks and the
    update, so every process takes the same step; the guide's per-point parameters hold only this process's rows
    during training (its checkpoints gather them to rank 0, a resume scatters them) and every row again when it
    returns. None (the default) leaves the loop exactly as it is."""
    pyro.set_rng_seed(seed)
    # Model and guide parameters live in their modules (module_local_params); the global store holds
    # only estimator state, such as TraceGraph_ELBO's decaying-average baselines. Start it empty.
    pyro.clear_param_store()
    elbo = make_elbo(cfg)
    guide_fn = config_enumerate(guide, "parallel") if cfg.elbo == "TraceEnum_ELBO" else guide
    named = [(f"model.{n}", p) for n, p in model.named_parameters() if p.requires_grad]
    named += [(f"guide.{n}", p) for n, p in guide.named_parameters() if p.requires_grad]
    extra = {"betas": cfg.betas} if cfg.optimiser == "adam" else {}
    # one group over every parameter, or (svi.lr_model/lr_network/lr_local) one per group: experiments/param_groups.py
    optim = OPTIMISERS[cfg.optimiser](param_groups.optimiser_groups(model, guide, cfg), lr=cfg.lr, **extra)
    timed_decay = bool(cfg.lr_final and cfg.max_seconds)  # under a time budget the decay runs over its seconds
    gamma = (cfg.lr_final / cfg.lr) ** (1.0 / max(cfg.steps, 1)) if cfg.lr_final and not timed_decay else 1.0
    schedule = torch.optim.lr_scheduler.ExponentialLR(optim, gamma)
    num_points = x.shape[0]
    kwargs = {"subsample_size": cfg.batch_size} if cfg.batch_size and cfg.batch_size < num_points else {}
    after_step = getattr(guide, "after_step", None)  # a guide's own closed-form update (LDA's natural step)
    # Hoffman et al.'s local step (guides/local.py): the guide sets the step's points' own parameters first
    local_update = guide.local_update if getattr(guide, "local_steps", 0) else None
    step_kwargs = kwargs  # the last step's arguments (its point indices, with a local update)
    trace: list[float] = []
    times: list[float] = []
    offset = 0.0  # seconds spent before a resume
    if parallel is not None:  # per-point rows sharded: saves gather them to rank 0, a resume takes this process's
        checkpoint, resume = parallel.begin(optim, checkpoint, resume)
    if resume is not None:
        _restore(resume, model, guide, optim, schedule)
        trace, times = list(resume["elbo_trace"]), list(resume["times"])
        offset = times[-1] if times else 0.0
        if resume.get("finished"):
            if parallel is not None:
                parallel.finish()
            return SVIResult(trace, len(trace), float(resume.get("wall_time", offset)), False, times,
                             len(trace) < cfg.steps and cfg.max_seconds is not None)
    if parallel is not None:  # every process starts from rank 0's parameters
        parallel.broadcast()
    _check_finite(named, len(trace), desc, "before")
    optim.zero_grad(set_to_none=True)  # a guide's builder may leave gradients behind (a network pre-fitted to a start)
    good = _snapshot(model, guide, optim, schedule, len(trace))  # the last state whose parameters were all checked

    def state(finished: bool) -> dict:
        return {
            "step": len(trace), "steps": cfg.steps, "finished": finished,
            "model": model.state_dict(), "guide_state": guide.state_dict(),
            "optimiser": optim.state_dict(), "schedule": schedule.state_dict(),
            "param_store": param_store_state(), "rng": rng_state(),
            "elbo_trace": list(trace), "times": list(times), "wall_time": offset + time.perf_counter() - start,
        }

    def step_once(step: int) -> float:
        """One estimate and its gradient, no update: the -ELBO as a float, not yet checked. With a guide's local
        update: the step's points are drawn here (all of them without svi.batch_size), their local parameters set
        without gradient, and model and guide run on those points (``subsample``)."""
        nonlocal step_kwargs
        if timed_decay:
            _decay_by_time(optim, cfg, times[step - 1] if step else 0.0)
        if local_update is not None:
            idx = torch.randperm(num_points, device=x.device)[: cfg.batch_size] if kwargs else None
            with torch.no_grad():
                local_update(x, idx, model)
            step_kwargs = {} if idx is None else {"subsample": idx}
        # Pyro's validation (shapes, supports, distribution arguments) checks the first step; later steps
        # run the same code on the same kinds of values, and are guarded by the finite checks
        if parallel is not None:  # data-parallel SVI (experiments/distributed.py): this process's points and seed
            step_kwargs = parallel.step_kwargs(step)
        with pyro.validation_enabled(step == 0):
            loss = loss_and_grads(elbo, model, guide_fn, x, **step_kwargs)
        if parallel is not None:  # the gradients and the estimate combined over the processes, before any check
            loss = parallel.reduce(loss)
        return loss

    def update() -> None:
        optim.step()
        optim.zero_grad(set_to_none=True)
        if after_step is not None:
            with torch.no_grad():
                after_step()
        if gamma != 1.0:
            schedule.step()

    def replay(found: str, found_step: int) -> NoReturn:
        """Rerun the steps since the snapshot ``good`` with every check at every step, and raise the error of the
        first bad one (the modules are left before its update). ``found``: what the cheap check saw at step
        ``found_step``, said if the replay does not meet it again (a guide with state outside its modules)."""
        _restore(good, model, guide, optim, schedule)
        optim.zero_grad(set_to_none=True)  # the failed step's gradients
        for step in range(good["step"], found_step + 1):
            before = rng_state()  # for the diagnosis (Pyro draws from torch's RNG: the CPU's or the data's CUDA device's)
            loss = step_once(step)
            if not math.isfinite(loss) and hasattr(elbo, "differentiable_loss"):
                # its value is loss + (surrogate - surrogate.item()): NaN where the ELBO is infinite; say which
                set_rng_state(before)
                with pyro.validation_enabled(False), torch.no_grad():
                    loss = elbo.loss(model, guide_fn, x, **step_kwargs)
            bad_grad = _non_finite_name(named, "grad")
            if not math.isfinite(loss) or bad_grad:
                what = f"the ELBO estimate is {-loss}" if not math.isfinite(loss) else f"the gradient of {bad_grad} is not finite"
                site = _site_report(model, guide, x, step_kwargs, before, named) if cfg.elbo != "Analytic_ELBO" else ""
                raise NonFiniteLoss(f"{what} at step {step} ({desc}){site}; stopped before the update")
            update()
            _check_finite(named, step, desc, "after the update of")
        raise NonFiniteLoss(f"{found} ({desc}); replaying from step {good['step']} did not reproduce it")

    def full_check(step: int, keep: bool = True) -> None:
        """Every parameter finite after ``step`` steps; the state becomes the snapshot (``keep``) when they are."""
        nonlocal good
        if good["step"] == step:
            return
        bad = _non_finite_name(named)
        if parallel is not None:  # a process's own per-point rows: every process replays when any finds one bad
            bad = parallel.agree(bad)
        if bad:
            replay(f"parameter {bad} is not finite after the update of step {step - 1}", step - 1)
        if keep:
            good = _snapshot(model, guide, optim, schedule, step)

    interrupted = out_of_time = False
    clean = True  # no step was cut in half (a second Ctrl-C raises mid-step): the state is one to save
    bar = tqdm(total=cfg.steps, initial=len(trace), desc=desc, disable=not show_bar(progress), leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    try:
        for step in range(len(trace), cfg.steps):
            if _STOP.is_set():  # Ctrl-C under interruptible(): stop between steps
                interrupted = True
                break
            if cfg.max_seconds is not None and times and times[-1] >= cfg.max_seconds:  # the time budget is spent
                out_of_time = True
                break
            loss = step_once(step)
            if not math.isfinite(loss):
                replay(f"the ELBO estimate is {-loss} at step {step}", step)
            update()
            trace.append(-loss / num_points)
            times.append(offset + time.perf_counter() - start)
            if (step + 1) % CHECK_EVERY == 0:
                full_check(step + 1)
            if checkpoint is not None and step + 1 < cfg.steps and checkpoint.due(step + 1, time.perf_counter()):
                full_check(step + 1)
                checkpoint.save(state(finished=False))
            if step % 10 == 0 or step == cfg.steps - 1:
                bar.set_postfix_str(f"ELBO/point {trace[-1]:.4f}", refresh=False)
            bar.update()
        full_check(len(trace), keep=False)  # the end, or the step boundary where Ctrl-C stopped it
        if local_update is not None and not interrupted and (len(trace) == cfg.steps or out_of_time):
            with torch.no_grad():  # every point's local factors at the final parameters (saved in the final state)
                local_update(x, None, model, final=True)
    except KeyboardInterrupt:  # mid-step: the last checkpoint on disk stays the one to resume from
        interrupted, clean = True, False
    finally:
        bar.close()
    if checkpoint is not None and clean:  # the end of training, or the step boundary where Ctrl-C stopped it
        checkpoint.save(state(finished=not interrupted and (len(trace) == cfg.steps or out_of_time)))
    if parallel is not None:  # every process holds every point's parameters again, for the evaluation
        parallel.finish()
    return SVIResult(trace, len(trace), offset + time.perf_counter() - start, interrupted, times, out_of_time)
