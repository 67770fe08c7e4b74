r"""Guides for the latent factor document model (:mod:`models.lfdm`): q(z_d) = prod_k Bern(z_dk | b_dk).

* ``mean_field``: b_dk free per document.
* ``amortised``: b_d = sigmoid(g(log(1 + x_d))), an MLP on the document's (log-damped) word counts,
  still mean field over the K factors.

The family, the valid estimators and ``probs`` are those of :mod:`guides.binary`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..models.exact import lfdm as exact
from ..models.lfdm import LFDMParams
from . import binary


def features(x: Tensor) -> Tensor:
    """log(1 + counts): word presence and, damped, frequency; long documents do not swamp the network."""
    return torch.log1p(x)


def _marginals(x: Tensor, init: LFDMParams):
    return lambda: exact.posterior(x, init).marginals


def mean_field(x: Tensor, init: LFDMParams, hidden: Sequence[int] = (32,), start: str = "uniform",
               baseline: str = "average", local_steps: int | None = 0) -> binary.MeanField:
    """Free q(z_dk = 1) per document; ``hidden`` sizes only a network baseline."""
    return binary.build_mean_field("z", "docs", x, init.num_latents, features, _marginals(x, init), hidden, start, baseline,
                                   local_steps, exact.best_mean_field)


def amortised(x: Tensor, init: LFDMParams, hidden: Sequence[int] = (32,), start: str = "uniform",
              baseline: str = "average") -> binary.Amortised:
    """q(z_d | x_d) from an MLP on log(1 + x_d) with the given hidden sizes."""
    return binary.build_amortised("z", "docs", x, init.num_latents, features, _marginals(x, init), hidden, start, baseline)
