r"""Exact inference for the latent factor document model (:mod:`models.lfdm`), in plain torch.

For a configuration of factors c: (K,) the decoder gives word log-probabilities
log f(c) = log_softmax(g(c; theta)): (V,), and a document with counts n_d: (V,) has

    log p(n_d | c) = sum_v n_dv log f(c)_v,     for all D documents and C configurations at once (D, C).

The decoder is applied once per configuration (2^K of them), never per document, and the counts meet
the word logits only through the decoder's last layer (see :func:`log_likelihood`). Enumeration, ELBO,
KL, the best mean field and generalised EM are :mod:`models.exact.binary` with this likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from . import binary


@dataclass(frozen=True)
class LFDMParams:
    """Parameters of the latent factor document model.

    prior_logits : (K,)  logit of P(z_k = 1)
    layers       : ((weight, bias), ...) of the decoder, torch.nn.Linear's layout: weight (out, in),
                   bias (out,); from K through the hidden sizes to V
    """

    prior_logits: Tensor
    layers: tuple[tuple[Tensor, Tensor], ...]

    @property
    def num_latents(self) -> int:
        return self.prior_logits.shape[-1]

    @property
    def vocab_size(self) -> int:
        return self.layers[-1][1].shape[-1]

    def free(self) -> dict[str, Tensor]:
        """The decoder's weights and biases (already unconstrained), for gradient M-steps."""
        return {k: v for k, v in self.state_dict().items() if k != "prior_logits"}

    def with_free(self, free: dict[str, Tensor]) -> "LFDMParams":
        layers = tuple((free[f"layers.{i}.weight"], free[f"layers.{i}.bias"]) for i in range(len(self.layers)))
        return LFDMParams(self.prior_logits, layers)

    def replace_prior(self, prior_logits: Tensor) -> "LFDMParams":
        return replace(self, prior_logits=prior_logits)

    def detach(self) -> "LFDMParams":
        return LFDMParams(self.prior_logits.detach().clone(),
                          tuple((w.detach().clone(), b.detach().clone()) for w, b in self.layers))

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors, loadable with ``torch.load(..., weights_only=True)``."""
        out = {"prior_logits": self.prior_logits.detach().clone()}
        for i, (w, b) in enumerate(self.layers):
            out[f"layers.{i}.weight"] = w.detach().clone()
            out[f"layers.{i}.bias"] = b.detach().clone()
        return out

    def factor_effects(self) -> Tensor:
        """How switching factor k on alone moves each word's log-probability: (K, V),
        log f(e_k) - log f(0). For a linear decoder this is row k of the weights, centred."""
        k = self.num_latents
        like = {"dtype": self.prior_logits.dtype, "device": self.prior_logits.device}
        z = torch.cat([torch.zeros(1, k, **like), torch.eye(k, **like)])
        log_f = torch.log_softmax(decode(z, self), -1)
        return log_f[1:] - log_f[:1]


def hidden(z: Tensor, params: LFDMParams) -> Tensor:
    """The decoder's last hidden features h(z): (..., H); z itself for a linear decoder (H = K)."""
    h = z
    for weight, bias in params.layers[:-1]:
        h = torch.tanh(h @ weight.T + bias)
    return h


def decode(z: Tensor, params: LFDMParams) -> Tensor:
    """Word logits g(z; theta) = h(z) W^T + b: (..., V) for factors z: (..., K); tanh between layers."""
    weight, bias = params.layers[-1]
    return hidden(z, params) @ weight.T + bias


def log_likelihood(x: Tensor, configs: Tensor, params: LFDMParams) -> Tensor:
    """log p(x_d | c): (D, C) for counts x: (D, V) and configurations configs: (C, K).

    With logits h(c) W^T + b, sum_v x_dv log f(c)_v = (x_d W) . h(c) + x_d . b - n_d logsumexp(h(c) W^T + b),
    n_d = sum_v x_dv: the (D, V) counts meet the (C, V) logits only through (D, H) and (C, H) products,
    O(D H C) instead of O(D V C).
    """
    weight, bias = params.layers[-1]  # (V, H), (V,)
    xw, xb, n = _document_terms(x, weight, bias)  # (D, H), (D,), (D,)
    h = hidden(configs, params)  # (C, H)
    log_norm = torch.logsumexp(h @ weight.T + bias, -1)  # (C,)
    return xw @ h.T + xb[:, None] - n[:, None] * log_norm


_LAST: list = []  # one entry: the tensors and versions last seen, and their document terms


def _document_terms(x: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x W, x b and the document lengths, reused across the chunks of one enumeration pass (the same
    tensors, unmodified), recomputed otherwise; O(D V H) once instead of once per chunk."""
    key = (x, x._version, weight, weight._version, bias, bias._version)
    if _LAST and all(a is b if isinstance(a, Tensor) else a == b for a, b in zip(_LAST[0], key)):
        return _LAST[1]
    terms = (x @ weight, x @ bias, x.sum(-1))
    _LAST[:] = [key, terms]
    return terms


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
