"""The gap split of a guide at its own learned parameters theta, where the posterior is exact:

    total gap          log p(x) - ELBO(q)              = KL(q || p(z | x, theta))
    approximation gap  log p(x) - ELBO(q*)             = KL(q* || p(z | x, theta))
    amortisation gap   ELBO(q*) - ELBO(q)

where q* is the best member of the guide's family for each point (``GuideSpec.optimum``: coordinate ascent,
fixed points or closed form). Coordinate ascent finds local optima, so it runs twice, from the prior and from
the guide's own q, and the higher ELBO is q*: the amortisation gap is then never negative, and is a lower
bound on the distance to the family's global optimum where CAVI could miss it. The total and approximation
gaps are computed as KL divergences by enumeration, the amortisation gap as a difference of two ELBOs, so
"approximation + amortisation = total" is a check between independent routes. For a free (per-point) guide
the "amortisation" gap is its optimisation shortfall: how far SVI stopped from its family's optimum.
"""

from __future__ import annotations

from typing import Any

import torch

from ..models.spec import ModelSpec


@torch.no_grad()
def gap_split(spec: ModelSpec, optimum, x: torch.Tensor, params: Any, guide: Any, elbo_q: float | None = None) -> dict[str, float]:
    """Per point, at the guide's parameters: log p(x), ELBO(q), ELBO(q*), and the gaps (see the module docstring).
    Total and approximation gaps are KL divergences by enumeration; the amortisation gap is ELBO(q*) - ELBO(q).
    A guide with no table (an autoguide) brings its Monte Carlo ELBO as ``elbo_q``; its total gap is then
    log p(x) - elbo_q."""
    exact, n = spec.exact, x.shape[0]
    log_p = float(exact.log_evidence(x, params)) / n
    best = optimum(x, params)
    best_elbo = float(exact.elbo(x, params, best)) / n
    if hasattr(guide, "probs"):
        q = guide.probs(x, params)
        elbo_q = float(exact.elbo(x, params, q)) / n
        total = float(exact.kl(x, params, q)) / n
        warm = optimum(x, params, start=q)  # coordinate ascent is local: also climb from the guide's own q
        warm_elbo = float(exact.elbo(x, params, warm)) / n
        if warm_elbo > best_elbo:
            best, best_elbo = warm, warm_elbo
    else:
        total = log_p - elbo_q
    approximation = float(exact.kl(x, params, best)) / n
    return {"log_p": log_p, "elbo": elbo_q, "best_elbo": best_elbo, "total_gap": total,
            "approximation_gap": approximation, "amortisation_gap": best_elbo - elbo_q}
