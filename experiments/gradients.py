"""Gradient variance of ELBO estimators: the same guide, reparameterised and score function (the seed's
comparison; Kingma & Welling 2014, sec. 2.3; Williams 1992).

With S samples per step, ``Trace_ELBO(num_particles=S)`` gives an unbiased estimate g_S of the ELBO's
gradient with respect to the guide's parameters lambda:

* reparameterised: h = loc + scale * eps, and g_S is the mean over s of d/d lambda [log p(x, h_s) - log q(h_s)];
* score function (the guide's sites hide ``rsample``): g_S is the mean over s of
  [log p(x, h_s) - log q(h_s)] d/d lambda log q(h_s), Rao-Blackwellised over the data plate by Pyro, with no
  baseline.

Both have mean grad ELBO and covariance Cov(g_1) / S. :func:`gradient_samples` draws R independent g_S;
:func:`variance_curve` reports, for each estimator and each S, the total variance tr Cov(g_S) and the
signal-to-noise ratio |E g_S| / sqrt(tr Cov(g_S)), with |E g_S|^2 estimated without the bias of the
sample mean's own noise (|g bar|^2 - tr Cov / R). Guides opt in with a ``reparameterised`` attribute
(the VAE's do).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from pyro.infer import Trace_ELBO
from torch import Tensor, nn

from .train import loss_and_grads


def gradient_samples(model: nn.Module, guide: nn.Module, x: Tensor, num_samples: int, repeats: int, seed: int) -> Tensor:
    """(repeats, P): independent estimates of d ELBO / d lambda, each from ``num_samples`` vectorised
    samples, flattened over the guide's P trainable parameters (the model's gradients are discarded)."""
    params = [p for p in guide.parameters() if p.requires_grad]
    everything = params + [p for p in model.parameters() if p.requires_grad]
    elbo = Trace_ELBO(num_particles=num_samples, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(seed)
    out = torch.empty(repeats, sum(p.numel() for p in params), dtype=torch.float64)
    for r in range(repeats):
        for p in everything:
            p.grad = None
        loss_and_grads(elbo, model, guide, x)
        out[r] = -torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]).double()
    for p in everything:
        p.grad = None
    return out


def variance_curve(model: nn.Module, guide: nn.Module, x: Tensor, sample_counts: Sequence[int], repeats: int,
                   seed: int) -> list[dict[str, float | int | str]]:
    """For each estimator (the guide's ``reparameterised`` switched on, then off) and each S in
    ``sample_counts``: total variance tr Cov(g_S), |E g_S| (debiased) and the signal-to-noise ratio, from
    ``repeats`` estimates. The guide's setting is restored afterwards."""
    if not hasattr(guide, "reparameterised"):
        raise ValueError(f"{type(guide).__name__} has no 'reparameterised' switch: it cannot be run with both estimators")
    before = guide.reparameterised
    rows: list[dict[str, float | int | str]] = []
    try:
        for reparameterised in (True, False):
            guide.reparameterised = reparameterised
            for s in sample_counts:
                g = gradient_samples(model, guide, x, s, repeats, seed)
                total = float(g.var(0).sum())
                # |mean of R draws|^2 overestimates |E g|^2 by tr Cov / R: subtract it (0 when noise is all there is)
                norm = max(0.0, float(g.mean(0).pow(2).sum()) - total / repeats) ** 0.5
                rows.append({"estimator": "reparameterised" if reparameterised else "score function", "samples": s,
                             "total_variance": total, "mean_norm": norm, "snr": norm / total**0.5})
    finally:
        guide.reparameterised = before
    return rows
