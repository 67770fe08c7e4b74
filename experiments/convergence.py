r"""How long a guide took to converge: the time to reach within 1% of its own final ELBO.

The comparison's fair mode (``vizoo compare MODEL --time S``) trains every guide for the same wall time; this is
the column that says how much of that time each one needed. From a run's ELBO trace (one estimate per step,
``SVIResult.elbo_trace``) and its clock (``SVIResult.times``, the seconds at the end of each step):

* the trace is smoothed by a trailing running mean over ``window`` steps (default 5% of the steps, at least 1),
  s_i = mean(ELBO_{max(0, i - w + 1)}, ..., ELBO_i), so Monte Carlo noise in a single estimate does not decide
  it (with an exact, closed-form ELBO the smoothing only delays the answer by at most w / 2 steps);
* the final ELBO is the last smoothed value, ELBO_final = s_{T-1} (the mean of the last w estimates);
* "within 1%" is |s_i - ELBO_final| <= 0.01 |ELBO_final|, a band around the final value that holds for negative
  ELBOs as for positive ones;
* the step reached is the first i from which s_j stays in the band for every j >= i (entering the band and
  leaving it again does not count), and its time is when that step's estimate was taken: the end of step i - 1
  (times[i - 1]; 0 for i = 0), since estimate i scores the parameters left by the i steps before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

WINDOW_SHARE = 0.05  # the default smoothing window, as a share of the steps
TOLERANCE = 0.01


class Converged(NamedTuple):
    """seconds: the training time when the smoothed ELBO entered the band for good; step: how many steps had been
    taken then; final: the smoothed final ELBO the band is around."""

    seconds: float
    step: int
    final: float


def smooth(trace: Sequence[float], window: int) -> list[float]:
    """The trailing running mean of ``trace`` over ``window`` values (fewer at the start). Each mean is a sum of its
    own values (a convolution), not a running total, so round-off does not build up along a long trace."""
    values = np.asarray(trace, dtype=np.float64)
    sums = np.convolve(values, np.ones(window), "full")[: len(values)]
    return (sums / np.minimum(np.arange(1, len(values) + 1), window)).tolist()


def time_to_within(trace: Sequence[float], times: Sequence[float], tolerance: float = TOLERANCE,
                   window: int | None = None) -> Converged | None:
    """When the smoothed ELBO came within ``tolerance`` (relative) of its final value and stayed there (the module
    docstring gives the definition); None for an empty trace. ``trace`` and ``times`` have one entry per step."""
    if len(trace) != len(times):
        raise ValueError(f"the ELBO trace has {len(trace)} steps and the clock {len(times)}: they must match")
    if not trace:
        return None
    window = max(1, round(WINDOW_SHARE * len(trace))) if window is None else window
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    s = smooth(trace, window)
    final = s[-1]
    band = tolerance * abs(final)
    first = len(s) - 1
    while first > 0 and abs(s[first - 1] - final) <= band:
        first -= 1
    return Converged(times[first - 1] if first else 0.0, first, final)
