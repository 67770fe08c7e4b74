r"""Local optimisation inside SVI, for guides with free per-point parameters (Hoffman et al., 2013).

Stochastic variational inference alternates two kinds of step. For each minibatch B (every point, for the
models that take no minibatches):

1. local: the points' own variational parameters are brought to (near) their optimum given the current global
   parameters theta (the model's) -- closed-form coordinate updates where the family has them, a few inner
   gradient steps elsewhere;
2. global: one optimiser step on theta along the gradient of ELBO(q*_B, theta), the bound with the local
   factors at that optimum.

Guides that support it define ``local_steps`` (> 0: on) and ``local_update(x, idx, model, final=False)``, which
:func:`experiments.train.train_svi` calls under ``torch.no_grad()`` before each step (``idx``: the step's
point indices, or None for all) and once after the last for every point (``final=True``: coordinate ascent then
runs to convergence, up to :data:`FINAL_SWEEPS` sweeps, so the trained guide is at its family's local optimum at
the final model). While it is on, the local parameters are frozen
(``requires_grad`` off): no optimiser moves them, so their values are exactly those the update left (they are
saved with the guide's state, and a resumed run continues from them).

``guide_args.local_steps`` (per guide family; unset: the family's default):

=====================  ======================================================  ========  ==========
guide                  local update                                            exact?    default
=====================  ======================================================  ========  ==========
gmm mean_field         responsibilities q(z_n) = p(z_n | x_n; theta)           yes, 1    on (1)
noisy_or, lfdm         CAVI sweeps over the K bits, expectations by            coord.    on (20) for
  mean_field           enumeration (:func:`models.exact.binary.best_mean_field`)  ascent  K <= 12
fhmm mean_field,       Ghahramani & Jordan's fixed-point sweeps                coord.    on (1)
  structured_mean_field  (:func:`models.exact.fhmm.fit_mean_field`)            ascent
vae mean_field         Adam steps on the batch's (loc, log scale), decoder     no        off (0)
                       fixed (reparameterised Monte Carlo ELBO), each point
                       continuing its own Adam state
lda (``local``)        CAVI document updates to convergence (its own option)   coord.    off
=====================  ======================================================  ========  ==========

"On by default" where the update is exact (a closed form, or exact coordinate updates that never lower the
ELBO) and costs about what one ELBO evaluation of the same points costs (the factorial HMM: one sweep per step,
warm started from the last step's values -- an incremental E-step -- as more sweeps per step cost more global
steps than they gain at equal wall time on the chorales); the VAE's update is stochastic and costs
``local_steps`` forward and backward passes, so it is asked for explicitly.
"""

from __future__ import annotations

import torch
from pyro.nn import PyroModule
from torch import Tensor
from torch.distributions import transform_to

FINAL_SWEEPS = 500
"""The most coordinate-ascent sweeps of the update after the last SVI step (each family stops at its tolerance)."""


def check_local_steps(local_steps: int | None, default: int) -> int:
    """The guide's ``local_steps`` (None: ``default``), refused below 0 (one line naming the field)."""
    steps = default if local_steps is None else local_steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"guide_args.local_steps must be an integer >= 0, got {local_steps!r}")
    return steps


def raw(module: PyroModule, name: str) -> Tensor:
    """The unconstrained tensor behind PyroParam ``name`` (the one the optimiser and the state dict hold)."""
    return getattr(module, name + "_unconstrained") if name in module._pyro_params else getattr(module, name)


def freeze(module: PyroModule, *names: str) -> None:
    """No gradient for these parameters: the local update alone moves them (and no optimiser sees them)."""
    for name in names:
        raw(module, name).requires_grad_(False)


@torch.no_grad()
def set_rows(module: PyroModule, name: str, idx: Tensor | None, value: Tensor) -> None:
    """Write the constrained ``value`` into rows ``idx`` (None: all) of PyroParam ``name``, in place (the tensor
    object, and so any optimiser's or checkpoint's reference to it, is kept)."""
    target = raw(module, name)
    if name in module._pyro_params:
        value = transform_to(module._pyro_params[name][0]).inv(value)
    if idx is None:
        target.copy_(value)
    else:
        target[idx] = value.to(target.dtype)
