r"""Declared models (:mod:`models.declaration`) in plain torch: their parameters, decoders and exact inference.

Parameters are one flat mapping ``name -> tensor``, named after the group they belong to
(:func:`layout`)::

    <z>.logits        (K,)          a bernoulli or categorical root's prior logits
    <z>.loc, <z>.scale (K,)         a gaussian root's prior
    <g>.weight        (in, out)     linear and noisy_or links; in = sum of the parents' widths
    <g>.bias          (out,)        linear links
    <g>.leak          (out,)        noisy_or links, in (0, 1)
    <g>.layers.<i>.weight, .bias    mlp links, (in, out) layout, the last layer to out
    <g>.scale         (out,)        a gaussian child with scale = "shared"
    <g>.scale_weight, .scale_bias   a gaussian child with scale = "linked": scale = exp(h V + c)

A parent enters a link through its encoding h: its bits (bernoulli), its one-hot vector (categorical:
row z of the weight, by indexing) or its values (gaussian), concatenated in ``from`` order.

Exact inference, when every latent group is discrete: the joint configurations of all latent groups
(mixed radix, the first group's digit least significant; 2^K for a bernoulli group, K for a categorical
one) are enumerated in chunks, each decoded once, and meet the data only through matrix products::

    log p(x_n, c) = log p(c) + sum_o log p(x_no | c)                       (N, C) per chunk
    bernoulli, logits l(c):   x l_+^T + (1 - x) l_-^T,  l_± = log sigmoid(±l)
    noisy-OR, A(c) = log P(off | c):  (1 - x) A^T + x log(1 - e^A)^T
    categorical counts:       x log_softmax(l(c))^T       (the word sequence's probability, no multinomial coefficient)
    gaussian (m(c), s(c)):    -x^2 (1/2s^2)^T + x (m/s^2)^T - sum_d (m^2/2s^2 + log s) - D/2 log 2 pi

and log p(x), the posterior marginals, ELBO(q), KL(q || p(z | x)) and generalised EM follow as in
:mod:`models.exact.binary`, with running log-sum-exp accumulators (memory O(N x chunk)). ELBO takes the
entropy in closed form and KL sums q log q over configurations, so ELBO + KL = log p(x) is a check.
No Pyro here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import biject_to, constraints

from ..declaration import Declaration, Group, Link
from . import binary, em
from .draws import from_table

MAX_CONFIGURATIONS = 2**binary.MAX_LATENTS
"""Largest number of joint latent configurations per point that exact enumeration takes."""

MAX_PARALLEL_CONFIGURATIONS = 2**binary.MAX_PARALLEL_LATENTS
"""Largest product of the latent groups' supports for TraceEnum_ELBO (held in memory for every point)."""


class Slot(NamedTuple):
    """One parameter: its shape, its constraint, and whether it is learned."""

    shape: tuple[int, ...]
    constraint: Any
    learnable: bool = True


def layout(decl: Declaration) -> dict[str, Slot]:
    """Every parameter of the declared model, in a fixed order (see the module docstring)."""
    out: dict[str, Slot] = {}
    for g in (*decl.latents, *decl.observed):
        link = decl.links.get(g.name)
        if link is None:  # a latent root
            if g.family == "gaussian":
                out[f"{g.name}.loc"] = Slot((g.size,), constraints.real, g.learn_prior)
                out[f"{g.name}.scale"] = Slot((g.size,), constraints.positive, g.learn_prior)
            else:
                out[f"{g.name}.logits"] = Slot((g.size,), constraints.real, g.learn_prior)
            continue
        width = decl.in_width(link)
        weights = constraints.positive if link.constraint == "nonnegative" else constraints.real
        if link.kind == "mlp":
            sizes = [width, *link.hidden, g.size]
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
                out[f"{g.name}.layers.{i}.weight"] = Slot((a, b), weights)
                out[f"{g.name}.layers.{i}.bias"] = Slot((b,), constraints.real)
        else:
            out[f"{g.name}.weight"] = Slot((width, g.size), weights)
            if link.kind == "noisy_or":
                out[f"{g.name}.leak"] = Slot((g.size,), constraints.unit_interval)
            else:
                out[f"{g.name}.bias"] = Slot((g.size,), constraints.real)
        if g.family == "gaussian" and g.scale == "shared":
            out[f"{g.name}.scale"] = Slot((g.size,), constraints.positive)
        elif g.family == "gaussian" and g.scale == "linked":
            out[f"{g.name}.scale_weight"] = Slot((width, g.size), constraints.real)
            out[f"{g.name}.scale_bias"] = Slot((g.size,), constraints.real)
    return out


@dataclass(frozen=True)
class DeclaredParams:
    """Parameters of a declared model: ``tensors`` maps each name of :func:`layout` to its value."""

    tensors: Mapping[str, Tensor]
    slots: Mapping[str, Slot]

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.tensors.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors.values())).device

    def detach(self) -> "DeclaredParams":
        return DeclaredParams({k: v.detach().clone() for k, v in self.tensors.items()}, self.slots)

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors, loadable with ``torch.load(..., weights_only=True)``."""
        return {k: v.detach().clone() for k, v in self.tensors.items()}

    def free(self) -> dict[str, Tensor]:
        """Unconstrained coordinates of the learned parameters (for gradient M-steps)."""
        return {k: biject_to(self.slots[k].constraint).inv(interior(v, self.slots[k].constraint))
                for k, v in self.tensors.items() if self.slots[k].learnable}

    def with_free(self, free: Mapping[str, Tensor]) -> "DeclaredParams":
        new = dict(self.tensors)
        new.update({k: biject_to(self.slots[k].constraint)(u) for k, u in free.items()})
        return DeclaredParams(new, self.slots)


def interior(value: Tensor, constraint: Any) -> Tensor:
    """Nudge a value on the boundary (a weight of exactly 0, a leak of 0 or 1) inside, so its free coordinate is finite."""
    tiny = torch.finfo(value.dtype).tiny ** 0.5
    if constraint is constraints.positive:
        return value.clamp_min(tiny)
    if constraint is constraints.unit_interval:
        return value.clamp(tiny, 1 - torch.finfo(value.dtype).eps)
    return value


# --------------------------------------------------------------------------- decoding


def affine(decl: Declaration, link: Link, values: Mapping[str, Tensor], weight: Tensor, bias: Tensor | None) -> Tensor:
    """h W + b, where h concatenates the parents' encodings: (..., out). A categorical parent selects its
    rows of W by index (one-hot times W without the product), so enumerated values broadcast as they come."""
    out = None if bias is None else bias
    start = 0
    for p in link.parents:
        g = decl.groups[p]
        w = weight[start:start + g.width]
        start += g.width
        term = w[values[p].long()] if g.family == "categorical" else values[p] @ w
        out = term if out is None else out + term
    return out


def log1mexp(a: Tensor) -> Tensor:
    """log(1 - exp(a)) for a < 0 (Maechler's switch at -log 2)."""
    return torch.where(a > -0.6931471805599453, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def natural(decl: Declaration, params: DeclaredParams, name: str, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The parameters of group ``name``'s distribution given its parents' ``values``.

    bernoulli: {"logits"} or, for a noisy_or link, {"log_off"} = log P(off) = log(1 - leak) - h W;
    categorical: {"logits"} (unnormalised); gaussian: {"loc", "scale"}. Shapes: (..., size), the parents'
    batch shape in front (none for a root).
    """
    g = decl.groups[name]
    link = decl.links.get(name)
    if link is None:
        if g.family == "gaussian":
            return {"loc": params[f"{name}.loc"], "scale": params[f"{name}.scale"]}
        return {"logits": params[f"{name}.logits"]}
    if link.kind == "noisy_or":
        return {"log_off": torch.log1p(-params[f"{name}.leak"]) - affine(decl, link, values, params[f"{name}.weight"], None)}
    if link.kind == "linear":
        pre = affine(decl, link, values, params[f"{name}.weight"], params[f"{name}.bias"])
    else:
        act = torch.tanh if link.activation == "tanh" else torch.relu
        pre = act(affine(decl, link, values, params[f"{name}.layers.0.weight"], params[f"{name}.layers.0.bias"]))
        for i in range(1, len(link.hidden) + 1):
            pre = pre @ params[f"{name}.layers.{i}.weight"] + params[f"{name}.layers.{i}.bias"]
            if i < len(link.hidden):
                pre = act(pre)
    if g.family != "gaussian":
        return {"logits": pre}
    if g.scale == "shared":
        scale = params[f"{name}.scale"]
    elif g.scale == "linked":
        scale = torch.exp(affine(decl, link, values, params[f"{name}.scale_weight"], params[f"{name}.scale_bias"]))
    else:
        scale = pre.new_full((g.size,), float(g.scale))
    return {"loc": pre, "scale": scale.expand(pre.shape)}


def bernoulli_logits(nat: Mapping[str, Tensor]) -> Tensor:
    """Logits of a bernoulli group's bits, from either parameterisation (logit = log(1 - P0) - log P0)."""
    if "log_off" in nat:
        return log1mexp(nat["log_off"]) - nat["log_off"]
    return nat["logits"]


# --------------------------------------------------------------------------- enumeration


def radix(g: Group) -> int:
    return 2**g.size if g.family == "bernoulli" else g.size


def configurations(decl: Declaration, start: int, stop: int, dtype=torch.float64,
                   device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """Joint configurations start..stop-1 of the latent groups, on ``device``: bernoulli (C, K) 0/1, categorical
    (C,) int64."""
    c = torch.arange(start, stop, dtype=torch.int64, device=device)
    out = {}
    for g in decl.latents:
        digit = c % radix(g)
        c = c // radix(g)
        bits = torch.arange(g.size, device=device)
        out[g.name] = ((digit[:, None] >> bits) & 1).to(dtype) if g.family == "bernoulli" else digit
    return out


def encode(g: Group, value: Tensor, dtype=torch.float64) -> Tensor:
    """A group's value as a vector: bits, one-hot, or the values themselves: (..., size)."""
    return F.one_hot(value.long(), g.size).to(dtype) if g.family == "categorical" else value


def check_enumerable(decl: Declaration) -> None:
    """Refuse a declaration whose posterior cannot be enumerated here, saying why."""
    if not decl.discrete:
        names = [g.name for g in decl.latents if g.family == "gaussian"]
        raise ValueError(f"model {decl.name!r} has gaussian latent groups ({', '.join(names)}): its posterior cannot be enumerated")
    if decl.num_configurations > MAX_CONFIGURATIONS:
        raise ValueError(f"model {decl.name!r} has {decl.num_configurations:,} joint latent configurations per point, more than "
                         f"the exact-enumeration limit {MAX_CONFIGURATIONS:,}")


def log_prior(decl: Declaration, params: DeclaredParams, values: Mapping[str, Tensor]) -> Tensor:
    """log p(c) = sum_g log p(c_g | c_parents(g)) over the latent groups: (C,)."""
    total = 0.0
    for g in decl.latents:
        nat = natural(decl, params, g.name, values)
        v = values[g.name]
        if g.family == "bernoulli":
            if "log_off" in nat:
                term = (v * log1mexp(nat["log_off"]) + (1 - v) * nat["log_off"]).sum(-1)
            else:
                term = (v * F.logsigmoid(nat["logits"]) + (1 - v) * F.logsigmoid(-nat["logits"])).sum(-1)
        else:
            log_p = torch.log_softmax(nat["logits"], -1)
            term = log_p.expand(v.shape + log_p.shape[-1:]).gather(-1, v[..., None]).squeeze(-1)
        total = total + term
    return total


def log_likelihood(decl: Declaration, params: DeclaredParams, x: Tensor, values: Mapping[str, Tensor]) -> Tensor:
    """log p(x_n | c) summed over the observed groups: (N, C), as matrix products (module docstring)."""
    cols = decl.columns()
    total = 0.0
    for g in decl.observed:
        xo = x[:, cols[g.name]]
        nat = natural(decl, params, g.name, values)
        if g.family == "bernoulli" and "log_off" in nat:
            off = nat["log_off"]
            term = (1 - xo) @ off.T + xo @ log1mexp(off).T
        elif g.family == "bernoulli":
            term = xo @ F.logsigmoid(nat["logits"]).T + (1 - xo) @ F.logsigmoid(-nat["logits"]).T
        elif g.family == "categorical":
            term = xo @ torch.log_softmax(nat["logits"], -1).T
        else:
            loc, scale = nat["loc"], nat["scale"]
            prec = scale.pow(-2)
            term = (-0.5 * xo.pow(2) @ prec.T + xo @ (loc * prec).T
                    - (0.5 * loc.pow(2) * prec + scale.log()).sum(-1) - 0.5 * g.size * math.log(2 * math.pi))
        total = total + term
    return total


def log_joint_chunks(decl: Declaration, params: DeclaredParams, x: Tensor) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """Yield (configurations, log p(x_n, c): (N, C)) over every joint configuration, chunk by chunk."""
    check_enumerable(decl)
    total = decl.num_configurations
    size = min(total, max(1, binary.CHUNK_ELEMENTS // (x.shape[0] + x.shape[1])))
    for start in range(0, total, size):
        values = configurations(decl, start, min(start + size, total), params.dtype, params.device)
        yield values, log_likelihood(decl, params, x, values) + log_prior(decl, params, values)


class Posterior(NamedTuple):
    """log_evidence: (N,) log p(x_n). marginals: group -> (N, size), p(z_gk = 1 | x_n) (bits, or categories)."""

    log_evidence: Tensor
    marginals: dict[str, Tensor]


def posterior(decl: Declaration, params: DeclaredParams, x: Tensor) -> Posterior:
    """log p(x_n) and the posterior marginals of every latent group, in one streaming pass."""
    n = x.shape[0]
    run_max = x.new_full((n,), -math.inf, dtype=params.dtype)
    total = x.new_zeros(n, dtype=params.dtype)
    first = {g.name: x.new_zeros(n, g.size, dtype=params.dtype) for g in decl.latents}
    for values, table in log_joint_chunks(decl, params, x):
        new_max = torch.maximum(run_max, table.max(-1).values)
        rescale = torch.exp(run_max - new_max)
        w = torch.exp(table - new_max[:, None])
        total = total * rescale + w.sum(-1)
        for g in decl.latents:
            first[g.name] = first[g.name] * rescale[:, None] + w @ encode(g, values[g.name], params.dtype)
        run_max = new_max
    return Posterior(run_max + total.log(), {k: v / total[:, None] for k, v in first.items()})


def draws(decl: Declaration, params: DeclaredParams, x: Tensor, num_samples: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Exact posterior draws of every latent group for a few points: group -> (S, N, size) bits or (S, N) categories."""
    check_enumerable(decl)
    values = configurations(decl, 0, decl.num_configurations, params.dtype, params.device)
    table = log_likelihood(decl, params, x, values) + log_prior(decl, params, values)
    index = from_table(table, num_samples, generator)
    return {name: v[index] for name, v in values.items()}


def log_evidence(decl: Declaration, params: DeclaredParams, x: Tensor) -> Tensor:
    """log p(x) = sum_n log p(x_n): a scalar."""
    return posterior(decl, params, x).log_evidence.sum()


def log_q(decl: Declaration, q: Mapping[str, Tensor], values: Mapping[str, Tensor]) -> Tensor:
    """log q_n(c) for a mean-field q (group -> (N, size): bernoulli q(bit = 1), categorical q(z = k)): (N, C)."""
    return sum(log_q_group(g, q[g.name], values[g.name]) for g in decl.latents)


def log_q_group(g: Group, probs: Tensor, value: Tensor) -> Tensor:
    """One group's factor of log q_n(c): (N, C); the most negative float stands in for log 0 (see binary.log_q_table)."""
    if g.family == "bernoulli":
        return binary.log_q_table(value, probs)
    return torch.log(probs).clamp_min(torch.finfo(probs.dtype).min)[:, value]


def entropy(decl: Declaration, q: Mapping[str, Tensor]) -> Tensor:
    """H(q) in closed form, summed over points and groups: a scalar."""
    total = next(iter(q.values())).new_zeros(())
    for g in decl.latents:
        p = q[g.name]
        total = total + (binary.entropy(p) if g.family == "bernoulli" else -torch.special.xlogy(p, p).sum())
    return total


def point_elbo(decl: Declaration, params: DeclaredParams, x: Tensor, q: Mapping[str, Tensor]) -> Tensor:
    """ELBO_n(q) = E_q[log p(x_n, z)] + H(q_n) per point, exactly: (N,)."""
    expected = x.new_zeros(x.shape[0], dtype=params.dtype)
    for values, table in log_joint_chunks(decl, params, x):
        expected = expected + binary.weighted(torch.exp(log_q(decl, q, values)), table).sum(-1)
    for g in decl.latents:
        p = q[g.name]
        h = torch.special.xlogy(p, p) + (torch.special.xlogy(1 - p, 1 - p) if g.family == "bernoulli" else 0)
        expected = expected - h.sum(-1)
    return expected


def random_start(decl: Declaration, x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
    """A random q in the guides' family, for a restart of :func:`best_mean_field`: bits as in
    :func:`binary.random_probs` (spread towards 0 and 1, where narrow basins lie), categories softmax(3 eps).
    {group: (N, size)}."""
    n = x.shape[0]
    return {g.name: binary.random_probs((n, g.size), generator, x.dtype) if g.family == "bernoulli"
            else torch.softmax(3 * torch.randn(n, g.size, generator=generator, dtype=x.dtype, device=generator.device).to(x.device), -1)
            for g in decl.latents}


def _full_table(decl: Declaration, params: DeclaredParams, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Every configuration and the whole (N, C) table of log p(x_n, c), refused beyond ``binary.MAX_TABLE``."""
    check_enumerable(decl)
    n = x.shape[0]
    if n * decl.num_configurations > binary.MAX_TABLE:
        raise ValueError(f"the full table, N x C = {n} x {decl.num_configurations:,}, is more than the limit "
                         f"{binary.MAX_TABLE:,}: use fewer points")
    values = configurations(decl, 0, decl.num_configurations, params.dtype, params.device)
    return values, log_likelihood(decl, params, x, values) + log_prior(decl, params, values)


def mode_start(decl: Declaration, params: DeclaredParams, x: Tensor, soft: float = 1e-3) -> dict[str, Tensor]:
    """Each point's most probable joint configuration, as a softened q: a start for :func:`best_mean_field`."""
    values, table = _full_table(decl, params, x)
    best = table.argmax(-1)
    return {g.name: (values[g.name][best].clamp(soft, 1 - soft) if g.family == "bernoulli"
                     else (1 - soft) * encode(g, values[g.name][best], params.dtype) + soft / g.size)
            for g in decl.latents}


def certify(decl: Declaration, params: DeclaredParams, x: Tensor, q: Mapping[str, Tensor], lower: Tensor,
            **kwargs) -> binary.Certificate | None:
    """Branch and bound on the mean-field optimum (:func:`binary.certify_mean_field`) when every latent group is
    bernoulli: the groups' bits, concatenated in order, number the configurations exactly as the binary engine
    does (group 0's bits lowest). None for declarations with categorical groups or too many bits."""
    bits = sum(g.size for g in decl.latents)
    if any(g.family != "bernoulli" for g in decl.latents) or bits > binary.MAX_CERTIFIED_LATENTS:
        return None
    _, table = _full_table(decl, params, x)
    probs = torch.cat([q[g.name] for g in decl.latents], -1)
    cert = binary.certify_mean_field(table, probs, lower, **kwargs)
    parts = cert.centre.split([g.size for g in decl.latents], -1)  # back to the family's form, group by group
    return cert._replace(centre={g.name: part for g, part in zip(decl.latents, parts)})


def elbo(decl: Declaration, params: DeclaredParams, x: Tensor, q: Mapping[str, Tensor]) -> Tensor:
    """ELBO(q) = sum_n E_q[log p(x_n, z)] + H(q_n), exactly: a scalar."""
    expected = x.new_zeros((), dtype=params.dtype)
    for values, table in log_joint_chunks(decl, params, x):
        expected = expected + binary.weighted(torch.exp(log_q(decl, q, values)), table).sum()
    return expected + entropy(decl, q)


def kl_to_posterior(decl: Declaration, params: DeclaredParams, x: Tensor, q: Mapping[str, Tensor]) -> Tensor:
    """KL(q || p(z | x)) = sum_n sum_c q_n(c) (log q_n(c) - log p(c | x_n)), exactly: a scalar."""
    log_px = posterior(decl, params, x).log_evidence
    kl = x.new_zeros((), dtype=params.dtype)
    for values, table in log_joint_chunks(decl, params, x):
        lq = log_q(decl, q, values)
        kl = kl + binary.weighted(torch.exp(lq), lq - (table - log_px[:, None])).sum()
    return kl


def best_mean_field(decl: Declaration, params: DeclaredParams, x: Tensor, init: Mapping[str, Tensor] | None = None,
                    max_sweeps: int = 200, tol: float = 1e-10) -> binary.MeanFieldOptimum:
    r"""The best member of the guides' family per point (the approximation gap's reference), by coordinate ascent
    (CAVI) with expectations summed over the whole (N, C) table of log p(x_n, c).

    One unit at a time, every point in parallel, holding the others fixed; each update is exact, so the ELBO
    never decreases:

        a bit k of a bernoulli group:  logit b = E_{q_-}[log p(x, z_k = 1, z_-)] - E_{q_-}[log p(x, z_k = 0, z_-)]
        a categorical group g:         log q_g(k) = E_{q_-}[log p(x, z_g = k, z_-)] + const

    Starts at ``init`` (group -> (N, size)) or at fair bits and uniform categories; stops when a sweep gains less
    than ``tol`` per point. Returns the tables (group -> (N, size)) and the ELBO after each sweep.
    """
    n = x.shape[0]
    values, table = _full_table(decl, params, x)  # (N, C)
    q = {g.name: (x.new_full((n, g.size), 0.5 if g.family == "bernoulli" else 1.0 / g.size, dtype=params.dtype)
                  if init is None else init[g.name].clone()) for g in decl.latents}

    def bound() -> float:
        return float(binary.weighted(torch.exp(log_q(decl, q, values)), table).sum() + entropy(decl, q))

    def sweep(q: dict[str, Tensor]) -> tuple[dict[str, Tensor], float]:  # updates q in place
        for g in decl.latents:
            others = sum((log_q_group(h, q[h.name], values[h.name]) for h in decl.latents if h.name != g.name),
                         torch.zeros_like(table))  # log q of every other group: (N, C)
            v = values[g.name]
            if g.family == "categorical":
                terms = binary.weighted(torch.exp(others), table)
                expected = terms @ F.one_hot(v, g.size).to(table.dtype)  # (N, K)
                q[g.name] = torch.softmax(expected, -1).clamp_min(1e-300)
                continue
            for k in range(g.size):  # a loop over the bits of one group, not over data
                rest = [j for j in range(g.size) if j != k]
                lq = others + (binary.log_q_table(v[:, rest], q[g.name][:, rest]) if rest else 0.0)
                terms = binary.weighted(torch.exp(lq), table)
                on = v[:, k] == 1
                q[g.name][:, k] = torch.sigmoid(terms[:, on].sum(-1) - terms[:, ~on].sum(-1)).clamp(1e-12, 1 - 1e-12)
        return q, bound()

    run = em.iterate(sweep, q, max_iter=max_sweeps, tol=tol, rule="gain", scale=n, initial=bound(),
                     name="declared.best_mean_field")
    return binary.MeanFieldOptimum(run.state, run.trace)


def fit_em(decl: Declaration, x: Tensor, init: DeclaredParams, max_iter: int = 200, tol: float = 1e-6,
           m_steps: int = 20) -> binary.GEMResult:
    r"""Generalised EM: exact E-step by enumeration; M-step: up to ``m_steps`` L-BFGS iterations (strong-Wolfe)
    on Q(theta) = sum_n sum_c r_n(c) log p(x_n, c; theta) over every learned parameter (free coordinates),
    from theta_old; a result that lowers Q is discarded, so log p(x) never decreases (up to round-off).
    Stops when log p(x) per point changes by less than ``tol``."""
    n = x.shape[0]
    post = posterior(decl, init, x)

    def step(state: tuple[DeclaredParams, Posterior]) -> tuple[tuple[DeclaredParams, Posterior], float]:
        old, post = state
        old_log_px = post.log_evidence
        with torch.no_grad():
            resp = [torch.exp(table - old_log_px[:, None]) for _, table in log_joint_chunks(decl, old, x)] \
                if n * decl.num_configurations <= binary.MAX_TABLE else None

        def q_value(p: DeclaredParams) -> Tensor:
            total = x.new_zeros((), dtype=p.dtype)
            for i, (values, table) in enumerate(log_joint_chunks(decl, p, x)):
                if resp is not None:
                    r = resp[i]
                else:
                    with torch.no_grad():
                        r = torch.exp(log_likelihood(decl, old, x, values) + log_prior(decl, old, values) - old_log_px[:, None])
                total = total + binary.weighted(r, table).sum()
            return total

        params = binary.m_step(old, q_value, n, m_steps)
        with torch.no_grad():
            post = posterior(decl, params, x)
        return (params, post), float(post.log_evidence.sum()) / n

    run = em.iterate(step, (init, post), max_iter=max_iter, tol=tol, rule="abs",
                     initial=float(post.log_evidence.sum()) / n, name="declared.fit_em")
    return binary.GEMResult(run.state[0], run.trace, run.converged)

