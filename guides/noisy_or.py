r"""Guides for the noisy-OR network (:mod:`models.noisy_or`): q(d_n) = prod_i Bern(d_ni | b_ni).

* ``mean_field``: b_ni free per observation.
* ``amortised``: b_n = sigmoid(g(s_n)), an MLP recognition network on the symptoms.

The family, the valid estimators and ``probs`` are those of :mod:`guides.binary`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..models.exact import noisy_or as exact
from ..models.noisy_or import NoisyORParams
from . import binary


def features(s: Tensor) -> Tensor:
    """The recognition network sees the symptoms as they are (0/1)."""
    return s


def _marginals(s: Tensor, init: NoisyORParams):
    return lambda: exact.posterior(s, init).marginals


def mean_field(s: Tensor, init: NoisyORParams, hidden: Sequence[int] = (32,), start: str = "uniform",
               baseline: str = "average", local_steps: int | None = 0) -> binary.MeanField:
    """Free q(d_ni = 1) per observation; ``hidden`` sizes only a network baseline."""
    return binary.build_mean_field("d", "points", s, init.num_latents, features, _marginals(s, init), hidden, start, baseline,
                                   local_steps, exact.best_mean_field)


def amortised(s: Tensor, init: NoisyORParams, hidden: Sequence[int] = (32,), start: str = "uniform",
              baseline: str = "average") -> binary.Amortised:
    """q(d_n | s_n) from an MLP on s_n with the given hidden sizes."""
    return binary.build_amortised("d", "points", s, init.num_latents, features, _marginals(s, init), hidden, start, baseline)
