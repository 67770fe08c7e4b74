"""The VAE's Monte Carlo evaluation, where nothing is exact: importance-sampled log p(x) (IWAE) and ELBO with a
guide's q as proposal, the per-point refit of q on a fixed decoder (the amortisation gap), and the held-out
test log p(x). It needs both the model (:mod:`vizoo.models.vae`) and its guides (:mod:`vizoo.guides.vae`), so
it lives above both; the registry hands its functions to the runner.
"""

from __future__ import annotations

import pyro
import torch
from torch import Tensor

from ..guides.vae import Amortised, MeanField
from ..models import importance
from ..models.exact import ppca
from ..models.importance import ImportanceEstimate
from ..models.vae import Decoder, model


def log_weights(x: Tensor, decoder: Decoder, guide, num_samples: int, subsample: Tensor | None = None) -> Tensor:
    """log w[s, n] = log p(x_n, h_s) - log q(h_s | x_n) with h_s ~ q(h | x_n), s = 1..S, for the points in
    ``subsample`` (default all): (S, n); see :func:`models.importance.log_weights`."""
    return importance.log_weights(model, (x, decoder), guide, (x,), num_samples, subsample=subsample)


@torch.no_grad()
def importance_sampled(x: Tensor, decoder: Decoder, guide, num_samples: int, seed: int, points: int = 0,
                       max_elements: float = 2e7) -> ImportanceEstimate:
    """IWAE and ELBO estimates for every point of x (the first ``points`` of them, if > 0), with q the
    guide's. Points go in chunks so that an (S, chunk, width) tensor stays under ``max_elements``
    (k = 5,000 on 784 pixels: 5 points at a time)."""
    pyro.set_rng_seed(seed)
    widest = max(x.shape[1], *decoder.args.hidden, *decoder.args.latent_sizes)
    chunk = max(1, int(max_elements // (num_samples * widest)))
    end = min(points, x.shape[0]) if points else x.shape[0]
    return ImportanceEstimate.concat([
        ImportanceEstimate.from_log_weights(log_weights(x, decoder, guide, num_samples,
                                                        torch.arange(start, min(start + chunk, end), device=x.device)))
        for start in range(0, end, chunk)
    ])


def fit_per_point(x: Tensor, decoder: Decoder, steps: int, seed: int, start=None, lr: float = 0.05,
                  num_samples: int = 8):
    """The per-point optimum: a mean-field q (free loc and scale per point and layer, see
    :class:`guides.vae.MeanField`) fitted on a fixed decoder by Adam on the reparameterised ELBO
    (``num_samples`` per point and step, step size decaying tenfold). ``start``: (loc, scale) per layer, e.g.
    an amortised guide's output (default: the prior's N(0, I)). On the same decoder, an amortised q of the
    same family can be no better than this optimum: the difference is the amortisation gap."""

    frozen = decoder.detach().requires_grad_(False)
    guide = MeanField(x.shape[0], decoder.args.latent_sizes, x.dtype, start=start, device=x.device)
    optim = torch.optim.Adam(guide.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optim, 0.1 ** (1 / max(steps, 1)))
    pyro.set_rng_seed(seed)
    for _ in range(steps):
        loss = -log_weights(x, frozen, guide, num_samples).mean(0).sum()
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        schedule.step()
    return guide


def importance_metrics(x: Tensor, decoder: Decoder, guide, seed: int, samples: int = 1000, points: int = 0) -> dict:
    """A guide's ELBO and log p(x) per point on its own training points (the first ``points``, if > 0), by
    importance sampling with its q (the runner's evaluation where nothing is exact)."""
    where = f", first {points} points" if points and points < x.shape[0] else ""
    return importance_sampled(x, decoder, guide, samples, seed, points=points).metrics(where)


def heldout_metrics(x_train: Tensor, x_test: Tensor, decoder: Decoder, seed: int, guide=None,
                    samples: int = 1000, refit_steps: int = 300) -> dict[str, float]:
    """Test log p(x) per point. Linear (PPCA): exact. Otherwise the IWAE estimate with k = ``samples``, its
    standard error, and the test ELBO, with q the amortised guide's encoder when there is one, else a
    per-point fit of q on the test points (``refit_steps``). With an encoder and ``refit_steps`` > 0, the
    per-point fit starting from the encoder's q also gives the amortisation gap on the test points (a lower
    bound on it: the fit stops at the optimum nearest the encoder) and a second IWAE estimate with the
    refitted q as proposal (``log_likelihood_refit``; both are lower bounds in expectation, the larger the
    tighter)."""

    if decoder.args.linear:
        with torch.no_grad():
            return {"log_likelihood_per_point": float(ppca.log_evidence(x_test, decoder.ppca()).mean())}
    out: dict[str, float] = {}
    if isinstance(guide, Amortised):
        est = importance_sampled(x_test, decoder, guide, samples, seed).summary()
        if refit_steps:
            with torch.no_grad():
                start = guide.layers(x_test)
            refit = fit_per_point(x_test, decoder, refit_steps, seed, start=start)
            best = importance_sampled(x_test, decoder, refit, samples, seed).summary()
            out["log_likelihood_refit"] = best["log_p"]
            out["elbo_per_point_refit"] = best["elbo"]
            out["amortisation_gap"] = best["elbo"] - est["elbo"]
    elif refit_steps:
        est = importance_sampled(x_test, decoder, fit_per_point(x_test, decoder, refit_steps, seed), samples, seed).summary()
    else:
        return {}
    return {"log_likelihood_per_point": est["log_p"], "log_likelihood_se": est["log_p_se"], "elbo_per_point": est["elbo"], **out}


