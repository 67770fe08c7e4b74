r"""One driver for the EM and coordinate-ascent loops of :mod:`models.exact`; plain Python (no Pyro).

Every fit here (EM for the Gaussian mixture, generalised EM for the binary-latent and declared models, EM for
linear-Gaussian declared models, Baum-Welch and variational EM for the factorial HMM, the mean-field fixed
points, CAVI for LDA) is the same loop: a step that moves the state and reports the objective (log-likelihood
for EM, ELBO for CAVI and variational EM), a stopping rule on consecutive objective values, and a cap on the
number of steps. :func:`iterate` owns that loop, as scikit-learn's ``BaseMixture.fit`` owns the loop of its
mixtures; each algorithm supplies only its step::

    step(state) -> (new_state, value)

``value`` is the objective the step reports: of the new state (an M-step followed by the E-step that scores
it), or of the state it started from (scikit-learn's order: an E-step scores theta_t, then the M-step moves
to theta_{t+1}). The driver compares consecutive values only, so either order works; the algorithm documents
which it uses. After each step the driver

1. records the value in the trace;
2. checks monotonicity: every algorithm here provably never lowers its objective (EM and generalised EM
   by Jensen's inequality, CAVI and the fixed points because each update maximises the ELBO over its block),
   so a fall by more than round-off (:func:`round_off`) is a bug or numerical trouble. What happens then is
   ``on_decrease``: ``"warn"`` (the default: an :class:`ObjectiveDecreaseWarning` naming the algorithm, the
   step and both values; the loop goes on), ``"raise"`` (an :class:`ObjectiveDecreaseError` with the same
   message) or ``"ignore"``. Either way the step is listed in :attr:`Iteration.decreases`;
3. applies the stopping rule to the last two values (with a threshold ``tol * scale``):

   ``"abs"``       |new - old| < tol * scale        two-sided (scikit-learn's rule): a large fall does not stop
   ``"gain"``      new - old < tol * scale          one-sided: stops when a step gains too little, or falls
   ``"relative"``  new - old <= tol * scale * |old|  one-sided, relative to the objective's size

   ``scale`` turns a per-unit tolerance into one for a total (the number of points, or of tokens, when the
   objective is a sum and ``tol`` is per point); if the rule fires, the run has converged and stops.

The run stops after ``max_iter`` steps otherwise (converged = False). ``initial``, when given, is the objective
at the starting state and heads the trace (so the first step is already checked); ``final`` is an optional
last move after the loop (say, an E-step that scores the last M-step's parameters), whose value, if any, is
appended and checked for monotonicity but not for convergence.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar

import torch

S = TypeVar("S")

Rule = Literal["abs", "gain", "relative"]
OnDecrease = Literal["warn", "raise", "ignore"]
RULES: tuple[str, ...] = ("abs", "gain", "relative")


class ObjectiveDecreaseWarning(RuntimeWarning):
    """An objective that should never decrease fell by more than round-off (the loop went on)."""


class ObjectiveDecreaseError(RuntimeError):
    """An objective that should never decrease fell by more than round-off (``on_decrease="raise"``)."""


class Iteration(NamedTuple):
    """The outcome of :func:`iterate`.

    state     : the state after the last step (and after ``final``)
    trace     : the objective values in order: ``initial`` (if given), one per step, then ``final``'s (if any),
                each as the step returned it (a float or a 0-dim tensor)
    converged : the stopping rule fired (False: the run used all ``max_iter`` steps)
    num_steps : how many times ``step`` ran
    decreases : indices into ``trace`` of the values that fell below their predecessor by more than round-off
    """

    state: Any
    trace: list
    converged: bool
    num_steps: int
    decreases: list[int]


def round_off(old: Any, new: Any, rtol: float | None = None) -> float:
    """How far a value may fall from ``old`` to ``new`` and still count as round-off: ``rtol * max(1, |old|,
    |new|)``, with ``rtol`` = sqrt(machine epsilon) of the values' dtype by default (1.5e-8 for float64, and
    Python floats; 3.5e-4 for float32). Loose enough for sums over many terms computed by different routes,
    tight enough that a real decrease (a wrong update) shows."""
    if rtol is None:
        dtype = new.dtype if isinstance(new, torch.Tensor) and new.is_floating_point() else torch.float64
        rtol = math.sqrt(torch.finfo(dtype).eps)
    return rtol * max(1.0, abs(float(old)), abs(float(new)))


def stopped(rule: str, old: Any, new: Any, threshold: float) -> bool:
    """Whether ``rule`` fires for consecutive values ``old``, ``new`` at ``threshold`` (= tol * scale); the
    difference is taken in the values' own type (so float32 tensors compare as float32)."""
    if rule == "abs":
        return bool(abs(new - old) < threshold)
    if rule == "gain":
        return bool(new - old < threshold)
    if rule == "relative":
        return bool(new - old <= threshold * abs(old))
    raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


def iterate(
    step: Callable[[S], tuple[S, Any]],
    state: S,
    *,
    max_iter: int,
    tol: float,
    rule: Rule = "abs",
    scale: float = 1.0,
    initial: Any = None,
    final: Callable[[S, bool], tuple[S, Any]] | None = None,
    on_decrease: OnDecrease = "warn",
    decrease_rtol: float | None = None,
    name: str = "coordinate ascent",
) -> Iteration:
    """Run ``state, value = step(state)`` up to ``max_iter`` times, stopping when ``rule`` fires on the last two
    values (module docstring); monotonicity of the values is checked after every step (and ``final``).

    step      : state -> (new state, objective value)
    max_iter  : the most steps (0: none; only ``final`` runs)
    tol, rule, scale : the stopping rule, threshold ``tol * scale``; ``"abs"``, ``"gain"`` or ``"relative"``
    initial   : the objective at ``state``, if known: heads the trace, so the first step can stop the run
    final     : (state, converged) -> (state, value or None), run once after the loop
    on_decrease : ``"warn"`` / ``"raise"`` / ``"ignore"`` when a value falls by more than
                  :func:`round_off` (``decrease_rtol``); always listed in ``decreases``
    name      : the algorithm, for the messages
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if on_decrease not in ("warn", "raise", "ignore"):
        raise ValueError(f"on_decrease must be 'warn', 'raise' or 'ignore', got {on_decrease!r}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    threshold = tol * scale
    trace: list = [] if initial is None else [initial]
    decreases: list[int] = []

    def record(value: Any, num_steps: int) -> None:
        trace.append(value)
        if len(trace) < 2:
            return
        old, new = trace[-2], trace[-1]
        drop = float(old) - float(new)
        allowed = round_off(old, new, decrease_rtol)
        if not drop > allowed:  # NaN is not a decrease: the stopping rule never fires on it either
            return
        decreases.append(len(trace) - 1)
        if on_decrease == "ignore":
            return
        message = (f"{name}: the objective fell from {float(old):.17g} to {float(new):.17g} (by {drop:.3g}, more "
                   f"than round-off {allowed:.3g}) at step {num_steps}; it never decreases in exact arithmetic, "
                   "so this is a bug or numerical trouble (ill-conditioning, too low a precision)")
        if on_decrease == "raise":
            raise ObjectiveDecreaseError(message)
        warnings.warn(message, ObjectiveDecreaseWarning, stacklevel=3)

    converged = False
    num_steps = 0
    while num_steps < max_iter:
        state, value = step(state)
        num_steps += 1
        record(value, num_steps)
        if len(trace) > 1 and stopped(rule, trace[-2], trace[-1], threshold):
            converged = True
            break
    if final is not None:
        state, value = final(state, converged)
        if value is not None:
            record(value, num_steps)
    return Iteration(state, trace, converged, num_steps, decreases)
