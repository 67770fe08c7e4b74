"""The gap split of a guide at its own learned parameters theta, where the posterior is exact:

    total gap          log p(x) - ELBO(q)              = KL(q || p(z | x, theta))
    approximation gap  log p(x) - ELBO(q*)             = KL(q* || p(z | x, theta))
    amortisation gap   ELBO(q*) - ELBO(q)

where q* is the best member of the guide's family for each point. Closed-form families (the mixture's exact
posterior, the Gaussian ones) have one optimum. Families that climb (coordinate ascent, fixed points) have
local optima, so q* is searched per point (:func:`family_best`, :mod:`models.exact.restarts`): climbs from the
prior, the guide's own q, each point's posterior mode (where there is one) and ``restarts`` random starts, and
for each point the best; then, for binary families with K small enough, branch and bound
(:func:`models.exact.binary.certify_mean_field`) either certifies that no q in the family beats q* by more than
its tolerance, or finds a start in a better basin and climbs from it. Beside the split the row says how firm
q* is: the share of points certified, the share where the starts reached several distinct optima and their
spread, and, where a certificate gives an upper bound U_n on the family's optimum, the approximation gap's
lower end log p(x) - U. Where q* is not certified, the amortisation gap is a lower bound (the true family
optimum can only be higher) and the approximation gap an upper bound.

The total and approximation gaps are computed as KL divergences by enumeration, the amortisation gap as a
difference of two ELBOs, so "approximation + amortisation = total" is a check between independent routes. For
a free (per-point) guide the "amortisation" gap is its optimisation shortfall: how far SVI stopped from its
family's optimum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..models.exact import restarts
from ..models.spec import GuideSpec, ModelSpec


@dataclass(frozen=True)
class SearchOptions:
    """How hard the gap split looks for q*. restarts: random starts per point (beside the prior, the guide's q
    and the posterior mode). certify: run branch and bound where the family has it, to ``tol`` nats per point,
    with at most ``max_work`` entries of box tables per round (K 2^K per box: a million boxes at K = 6, 39,000
    at K = 10) and ``rounds`` rounds of climbing from what it finds."""

    restarts: int = 8
    seed: int = 0
    certify: bool = True
    tol: float = 1e-8
    max_work: float = 4e8
    rounds: int = 3


class FamilyBest(NamedTuple):
    """q: the best member per point (``probs`` form); elbo: (N,) its ELBO_n, or None for a closed form;
    upper: (N,) an upper bound on the family's optimum per point where certified search ran, else None;
    firmness: the statistics of the search (see :func:`family_best`)."""

    q: Any
    elbo: torch.Tensor | None
    upper: torch.Tensor | None
    firmness: dict[str, Any]


@torch.no_grad()
def family_best(spec: ModelSpec, g: GuideSpec, x: torch.Tensor, params: Any, q: Any = None,
                options: SearchOptions = SearchOptions()) -> FamilyBest:
    """The best member of ``g``'s family per point at ``params`` (see the module docstring), and how firm it is:

    starts, points_several_optima, max_optima, mean_spread, max_spread, mean_hits, min_hits, gain_over_<start>
        from the climbs (:func:`models.exact.restarts.statistics`); two_start_mean: the mean ELBO_n that the
        better (in total) of the prior and guide starts reached, the rule this search replaces;
    certified: points whose q* is certified the global optimum (to 2 tol); found_by_search: points where branch
        and bound found a better basin than every start; boxes: boxes bounded in all.
    """
    if g.random_start is None or spec.exact.point_elbo is None:  # a closed form: one optimum
        return FamilyBest(g.optimum(x, params), None, None, {"closed_form": True})
    gen = torch.Generator(device=x.device).manual_seed(options.seed)

    def climb(start):
        return g.optimum(x, params, start=start)

    def climb_all(starts: list) -> list:  # same-form starts: one climb over S copies of the data, when it fits
        if len(starts) < 2:
            return [climb(s) for s in starts]
        try:
            many = g.optimum(x.repeat(len(starts), *[1] * (x.dim() - 1)), params, start=restarts.concat(starts))
        except ValueError:  # the copies exceed a table limit: one climb at a time
            return [climb(s) for s in starts]
        return restarts.split(many, len(starts))

    def point_elbo(qq):
        return spec.exact.point_elbo(x, params, qq)

    optima: dict[str, Any] = {"prior": climb(None)}
    if q is not None:
        optima["guide"] = climb(q)
    names = (["mode"] if g.mode_start is not None else []) + [f"random {i + 1}" for i in range(options.restarts)]
    starts = ([g.mode_start(x, params)] if g.mode_start is not None else []) + \
        [g.random_start(x, params, gen) for _ in range(options.restarts)]
    optima.update(zip(names, climb_all(starts)))
    search = restarts.best_of(point_elbo, optima)
    firmness = search.statistics()
    two = [search.start_elbo[search.labels.index(k)].mean() for k in ("prior", "guide") if k in search.labels]
    firmness["two_start_mean"] = float(max(two))  # what the better of the prior and guide starts gave, in total
    best, value, upper = search.q, search.elbo, None
    if options.certify and g.certify is not None:
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        boxes = 0
        for _ in range(options.rounds):
            cert = g.certify(x, params, best, value, tol=options.tol, max_work=options.max_work)
            if cert is None:
                break
            boxes += cert.boxes
            upper = cert.upper
            better = cert.best > value + options.tol
            if not bool(better.any()):
                break
            found |= better  # climb from the better centres; the other points start (and stay) at q*
            again = climb(restarts.pick([best, cert.centre], better.long()))
            again_value = point_elbo(again)
            take = (again_value > value).long()
            best = restarts.pick([best, again], take)
            value = torch.maximum(value, again_value)
        if upper is not None:
            upper = torch.maximum(upper, value)
            firmness.update(certified=int((upper <= value + options.tol).sum()), found_by_search=int(found.sum()),
                            boxes=boxes, max_slack=float((upper - value).max()))
    return FamilyBest(best, value, upper, firmness)


@torch.no_grad()
def gap_split(spec: ModelSpec, g: GuideSpec, x: torch.Tensor, params: Any, guide: Any, elbo_q: float | None = None,
              options: SearchOptions = SearchOptions()) -> dict[str, Any]:
    """Per point, at the guide's parameters: log p(x), ELBO(q), ELBO(q*), the gaps (see the module docstring), and
    how firm q* is. Total and approximation gaps are KL divergences by enumeration; the amortisation gap is
    ELBO(q*) - ELBO(q). A guide with no table (an autoguide) brings its Monte Carlo ELBO as ``elbo_q``; its total
    gap is then log p(x) - elbo_q.

    Keys beyond the gaps: ``certified`` (share of points whose q* is certified global, None where the family has
    no certificate), ``several_optima`` (share of points whose starts reached more than one optimum),
    ``max_spread`` (the largest best-minus-worst optimum of a point), ``starts``, ``gain_over_two_starts`` (mean
    ELBO(q*) minus what the better in total of the prior and guide starts alone gave), ``approximation_gap_low``
    (log p(x) - mean upper bound: the approximation gap is between it and ``approximation_gap``), and
    ``amortisation_lower_bound`` (1.0 when the amortisation gap rests on an uncertified local search)."""
    exact, n = spec.exact, x.shape[0]
    log_p = float(exact.log_evidence(x, params)) / n
    q = guide.probs(x, params) if hasattr(guide, "probs") else None
    found = family_best(spec, g, x, params, q, options)
    best_elbo = float(found.elbo.sum()) / n if found.elbo is not None else float(exact.elbo(x, params, found.q)) / n
    if q is not None:
        elbo_q = float(exact.elbo(x, params, q)) / n
        total = float(exact.kl(x, params, q)) / n
    else:
        total = log_p - elbo_q
    approximation = float(exact.kl(x, params, found.q)) / n
    out: dict[str, Any] = {"log_p": log_p, "elbo": elbo_q, "best_elbo": best_elbo, "total_gap": total,
                           "approximation_gap": approximation, "amortisation_gap": best_elbo - elbo_q}
    f = found.firmness
    if f.get("closed_form"):
        out.update(certified=1.0, several_optima=0.0, amortisation_lower_bound=0.0)
        return out
    out.update(starts=f["starts"], several_optima=f["points_several_optima"] / n, max_spread=f["max_spread"],
               gain_over_two_starts=float(found.elbo.mean()) - f["two_start_mean"])
    if found.upper is not None:
        out.update(certified=f["certified"] / n, found_by_search=f["found_by_search"] / n,
                   approximation_gap_low=log_p - float(found.upper.mean()))
        out["amortisation_lower_bound"] = float(f["certified"] < n)
    else:
        out.update(certified=None, amortisation_lower_bound=1.0)
    return out
