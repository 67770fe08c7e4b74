r"""Importance sampling with a guide as proposal: the Monte Carlo reference for models where nothing is exact
(the non-linear VAE, declared models with gaussian latents and a non-linear or non-gaussian part).

For S samples z_s ~ q(z | x_n), w_s = p(x_n, z_s) / q(z_s | x_n):

    IWAE   log (1/S) sum_s w_s   (Burda et al. 2016): a lower bound on log p(x_n) in expectation, rising with S
    ELBO   (1/S) sum_s log w_s
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import Tensor


def log_weights(model: Callable, model_args: tuple, guide: Callable, guide_args: tuple, num_samples: int,
                **kwargs) -> Tensor:
    """log w[s, n] = log p(x_n, z_s) - log q(z_s | x_n): (S, n). The guide runs under an outer plate of S samples
    (dim -2) and the model is replayed on its trace, so any guide of the model works; ``kwargs`` go to both.
    Differentiable (reparameterised guides)."""
    device = next((a.device for a in (*guide_args, *model_args) if isinstance(a, Tensor)), None)  # the data's
    with pyro.plate("samples", num_samples, dim=-2, device=device):
        guide_trace = poutine.trace(guide).get_trace(*guide_args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*model_args, **kwargs)
    return log_density(model_trace) - log_density(guide_trace)


def log_density(trace) -> Tensor:
    """The sum of a trace's sample sites' log-probabilities, batch shape kept (subsample sites excluded)."""
    return sum(site["fn"].log_prob(site["value"]) for site in trace.nodes.values()
               if site["type"] == "sample" and not site_is_subsample(site))


class ImportanceEstimate(NamedTuple):
    """Per point n, from S samples h_s ~ q(h | x_n) with weights w_s = p(x_n, h_s) / q(h_s | x_n), all (N,):

    log_p: the IWAE estimate log (1/S) sum_s w_s (Burda et al. 2016): a lower bound on log p(x_n) in
        expectation, rising with S to log p(x_n); log_p_var: its delta-method variance, var(w) / (S mean(w)^2).
    elbo: the ELBO estimate (1/S) sum_s log w_s; elbo_var: var(log w) / S.
    """

    log_p: Tensor
    log_p_var: Tensor
    elbo: Tensor
    elbo_var: Tensor
    num_samples: int

    @classmethod
    def from_log_weights(cls, lw: Tensor) -> "ImportanceEstimate":
        """The estimates from log weights lw: (S, N); variances are NaN for S = 1."""
        s = lw.shape[0]
        log_p = torch.logsumexp(lw, 0) - math.log(s)
        nan = torch.full_like(log_p, float("nan"))
        var = torch.exp(lw - log_p).var(0) / s if s > 1 else nan  # w / mean(w) has mean 1
        lvar = lw.var(0) / s if s > 1 else nan
        return cls(log_p, var, lw.mean(0), lvar, s)

    @classmethod
    def concat(cls, parts: Sequence["ImportanceEstimate"]) -> "ImportanceEstimate":
        """Estimates of consecutive chunks of points, as one."""
        return cls(*(torch.cat(c) for c in list(zip(*parts))[:4]), parts[0].num_samples)

    def summary(self) -> dict[str, float]:
        """Means per point and their Monte Carlo standard errors."""
        n = self.log_p.shape[0]
        return {
            "log_p": float(self.log_p.mean()), "log_p_se": float(self.log_p_var.sum().sqrt()) / n,
            "elbo": float(self.elbo.mean()), "elbo_se": float(self.elbo_var.sum().sqrt()) / n,
            "samples": self.num_samples,
        }

    def metrics(self, where: str = "") -> dict:
        """The runner's entries for a guide evaluated by importance sampling (``where``: which points, if not all)."""
        est = self.summary()
        return {
            "final_elbo_per_point": est["elbo"], "final_elbo_se": est["elbo_se"],
            "final_elbo_method": f"Monte Carlo, {self.num_samples} samples per point{where}",
            "log_likelihood_per_point": est["log_p"], "log_likelihood_se": est["log_p_se"],
            "log_likelihood_method": f"IWAE, k = {self.num_samples}{where} (a lower bound in expectation)",
        }
