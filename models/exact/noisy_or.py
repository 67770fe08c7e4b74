r"""Exact inference for the noisy-OR network (:mod:`models.noisy_or`), in plain torch.

For a configuration of causes c: (K,) the probability that symptom j stays off is

    P(s_j = 0 | c) = (1 - leak_j) prod_i exp(-W_ij c_i),   so   log P(s_j = 0 | c) = log(1 - leak_j) - (c W)_j

and, for all N points and a chunk of C configurations at once (two matrix products, no (N, C, J) tensor),

    log p(s_n | c) = sum_j (1 - s_nj) log P(s_j = 0 | c) + s_nj log(1 - P(s_j = 0 | c)).

Enumeration, the posterior, ELBO, KL, the best mean field and generalised EM are the shared
binary-latent routines of :mod:`models.exact.binary` with this likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from . import binary


@dataclass(frozen=True)
class NoisyORParams:
    """Parameters of a noisy-OR network.

    prior_logits : (K,)   logit of P(d_i = 1)
    weights      : (K, J) W_ij >= 0; exp(-W_ij) is the chance that cause i alone fails to switch on symptom j
    leak         : (J,)   P(s_j = 1 | no active cause), in (0, 1)
    """

    prior_logits: Tensor
    weights: Tensor
    leak: Tensor

    @property
    def num_latents(self) -> int:
        return self.prior_logits.shape[-1]

    def free(self) -> dict[str, Tensor]:
        """Unconstrained coordinates of everything but the prior (for gradient M-steps)."""
        w = self.weights.clamp_min(1e-8)
        return {"weights": w + torch.log(-torch.expm1(-w)), "leak": torch.logit(self.leak)}  # softplus^-1, logit

    def with_free(self, free: dict[str, Tensor]) -> "NoisyORParams":
        return NoisyORParams(self.prior_logits, F.softplus(free["weights"]), torch.sigmoid(free["leak"]))

    def replace_prior(self, prior_logits: Tensor) -> "NoisyORParams":
        return replace(self, prior_logits=prior_logits)

    def detach(self) -> "NoisyORParams":
        return NoisyORParams(*(t.detach().clone() for t in (self.prior_logits, self.weights, self.leak)))

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors, loadable with ``torch.load(..., weights_only=True)``."""
        return {"prior_logits": self.prior_logits.detach().clone(), "weights": self.weights.detach().clone(),
                "leak": self.leak.detach().clone()}

    def permute(self, order: Tensor) -> "NoisyORParams":
        """Reorder causes (to compare fits up to relabelling)."""
        return NoisyORParams(self.prior_logits[order], self.weights[order], self.leak)


def log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(a)) for a < 0, accurate at both ends (Maechler's switch at -log 2)."""
    return torch.where(a > -0.6931471805599453, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def log_p_off(configs: Tensor, params: NoisyORParams) -> Tensor:
    """log P(s_j = 0 | c): (C, J)."""
    return torch.log1p(-params.leak) - configs @ params.weights


def log_likelihood(s: Tensor, configs: Tensor, params: NoisyORParams) -> Tensor:
    """log p(s_n | c): (N, C) for symptoms s: (N, J) and configurations configs: (C, K)."""
    off = log_p_off(configs, params)  # (C, J)
    return (1 - s) @ off.T + s @ log1mexp(off).T


_REFERENCE = binary.Reference(log_likelihood)
posterior = _REFERENCE.posterior
log_evidence = _REFERENCE.log_evidence
elbo = _REFERENCE.elbo
point_elbo = _REFERENCE.point_elbo
kl_to_posterior = _REFERENCE.kl_to_posterior
best_mean_field = _REFERENCE.best_mean_field
certify = _REFERENCE.certify
mode_start = _REFERENCE.mode_start
random_start = _REFERENCE.random_start
draws = _REFERENCE.draws
fit_em = _REFERENCE.fit_em
