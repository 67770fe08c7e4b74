r"""The family's best member per point, by coordinate ascent from several starts, and how firm that best is.

Coordinate ascent (CAVI, Ghahramani & Jordan's fixed points) climbs to a *local* optimum of the ELBO within a
family. At fixed model parameters the ELBO is a sum of independent per-point objectives, so the best member
of the family is found point by point: climb from every start, and keep, **for each point separately**, the
start whose optimum has the highest ELBO there (keeping the start with the best *total* would leave points
stuck in a worse optimum whenever another start is better on average).

    q*_n = q^{(s_n)}_n,   s_n = argmax_s ELBO_n(climb(start_s))

The starts: the prior (or the family's neutral point), the trained guide's own q, and R random ones. Beside
q* this reports, per point, how many *distinct* optima the starts reached (ELBO values further apart than
``tol``), the spread between the best and the worst, and how many starts reached the best: a point where
every start lands on one optimum is firm; one with several optima and few hits on the best may have a better
one still unfound, and there the amortisation gap ELBO(q*) - ELBO(q) is a lower bound. Families that have a
certificate (:func:`models.exact.binary.certify_mean_field`, branch and bound) close that question for K
small enough.

Plain torch; no Pyro. The caller climbs (often all random starts at once, as one climb over S copies of the
data: :func:`concat`, :func:`split`) and hands the optima with ``point_elbo(q) -> (N,)``; a q is a tensor with
the points first, a dict of them, or a NamedTuple of them (every family here).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

TOL = 1e-6
"""Two optima of one point are distinct when their ELBOs differ by more than this (nats)."""


def pick(qs: list[Any], choice: Tensor) -> Any:
    """The q that takes point n from ``qs[choice[n]]``: tensors (points first), dicts and NamedTuples of them."""
    first = qs[0]
    if isinstance(first, Tensor):
        stacked = torch.stack(qs)  # (S, N, ...)
        index = choice.reshape(1, -1, *([1] * (first.dim() - 1))).expand(1, *first.shape)
        return stacked.gather(0, index)[0]
    if isinstance(first, Mapping):
        return {k: pick([q[k] for q in qs], choice) for k in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(pick([getattr(q, f) for q in qs], choice) for f in first._fields))
    raise TypeError(f"cannot pick per point from a q of type {type(first).__name__}")


def concat(qs: list[Any]) -> Any:
    """Stack S qs of N points each into one q of S N points (points of q 0 first): for one climb over S copies."""
    first = qs[0]
    if isinstance(first, Tensor):
        return torch.cat(qs)
    if isinstance(first, Mapping):
        return {k: concat([q[k] for q in qs]) for k in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(concat([getattr(q, f) for q in qs]) for f in first._fields))
    raise TypeError(f"cannot stack qs of type {type(first).__name__}")


def split(q: Any, parts: int) -> list[Any]:
    """The inverse of :func:`concat`: S qs of N points each from one of S N points."""
    if isinstance(q, Tensor):
        return list(q.chunk(parts))
    if isinstance(q, Mapping):
        pieces = {k: split(v, parts) for k, v in q.items()}
        return [{k: v[i] for k, v in pieces.items()} for i in range(parts)]
    if isinstance(q, tuple) and hasattr(q, "_fields"):
        pieces = [split(getattr(q, f), parts) for f in q._fields]
        return [type(q)(*(p[i] for p in pieces)) for i in range(parts)]
    raise TypeError(f"cannot split a q of type {type(q).__name__}")


class Search(NamedTuple):
    """The per-point best of several climbs.

    q          : the best q per point (the family's form)
    elbo       : (N,) ELBO_n(q*)
    start_elbo : (S, N) ELBO_n of each start's optimum, starts in the order of ``labels``
    labels     : the starts' names ("prior", "guide", "random 1", ...)
    """

    q: Any
    elbo: Tensor
    start_elbo: Tensor
    labels: tuple[str, ...]

    def statistics(self, tol: float = TOL) -> dict[str, Any]:
        """How firm q* is, over the points: see :func:`statistics`."""
        return statistics(self.start_elbo, self.labels, tol)


@torch.no_grad()
def best_of(point_elbo: Callable[[Any], Tensor], optima: Mapping[str, Any]) -> Search:
    """Keep, per point, the best of the optima that climbs from several starts reached (start name -> q)."""
    labels = tuple(optima)
    qs = [optima[name] for name in labels]
    values = torch.stack([point_elbo(q) for q in qs])  # (S, N)
    choice = values.argmax(0)
    return Search(pick(qs, choice), values.gather(0, choice[None])[0], values, labels)


def distinct_optima(start_elbo: Tensor, tol: float = TOL) -> Tensor:
    """(N,) the number of distinct values among each point's S optima: sorted, a gap above ``tol`` starts a new one."""
    ordered = start_elbo.sort(0).values
    return 1 + (ordered.diff(dim=0) > tol).sum(0)


def statistics(start_elbo: Tensor, labels: tuple[str, ...], tol: float = TOL) -> dict[str, Any]:
    """Per data set, from the (S, N) optima of S starts:

    starts                 S
    points_several_optima  how many points reached more than one distinct optimum
    max_optima             the most distinct optima any point reached
    mean_spread / max_spread   best minus worst optimum per point (nats), averaged / largest
    mean_hits              the fraction of starts that reached the best (within ``tol``), averaged over points
    min_hits               the smallest number of starts that reached some point's best
    gain_over_<start>      mean over points of ELBO(q*) - ELBO(that start's optimum): what the others added
    """
    best = start_elbo.max(0).values
    hits = (start_elbo >= best - tol).sum(0)
    spread = best - start_elbo.min(0).values
    count = distinct_optima(start_elbo, tol)
    out: dict[str, Any] = {
        "starts": len(labels),
        "points": int(start_elbo.shape[1]),
        "points_several_optima": int((count > 1).sum()),
        "max_optima": int(count.max()),
        "mean_spread": float(spread.mean()),
        "max_spread": float(spread.max()),
        "mean_hits": float((hits.to(start_elbo.dtype) / len(labels)).mean()),
        "min_hits": int(hits.min()),
    }
    for i, name in enumerate(labels):
        if not name.startswith("random"):
            out[f"gain_over_{name}"] = float((best - start_elbo[i]).mean())
    return out
