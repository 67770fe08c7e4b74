r"""Declared models: a TOML declaration (:mod:`models.declaration`) turned into a Pyro model, guides and a registry entry.

For a declaration with latent groups z_1..z_G (in topological order) and observed groups x_1..x_O::

    with plate(points, N):
        z_g ~ p(z_g | eta_g),    eta_g = link_g(h(parents of g))       (a root: its prior parameters)
        x_o ~ p(x_o | eta_o),    eta_o = link_o(h(parents of o))       observed: x[:, columns of o]

where the family gives p (bernoulli bits: ``BernoulliVector`` for a latent, so a whole group is one site
that ``TraceEnum_ELBO`` can sum over; categorical; gaussian, diagonal) and the link gives eta (linear, noisy-OR
or an MLP; :func:`models.exact.declared.natural`, shared with the exact reference). The data are one
(N, sum of the observed sizes) matrix, the observed groups' columns side by side in declaration order.

:func:`spec` builds the :class:`models.ModelSpec` of a declaration: the runner, the CLI and the tests use
it exactly as they use a hand-written model's. :func:`show` writes out what was declared: the generative
process in maths, the parameters, and the plates and tensor shapes of a traced run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroParam
from torch import Tensor

from . import datasets, importance
from .datasets import DataOptions, Dataset
from .declaration import Declaration, Group
from .distributions import BernoulliVector, WordCounts
from .errors import DataError
from .exact import declared as exact
from .exact import linear_gaussian
from .exact.declared import DeclaredParams, bernoulli_logits, natural
from .importance import ImportanceEstimate


@dataclass(frozen=True)
class DeclaredArgs:
    """Model options, as they appear under ``[model_args]`` in a config.

    init_scale: standard deviation of the initial link weights (non-negative weights: uniform on
        [0.5, 1.5] x init_scale), scaled by 1 / sqrt(fan-in) inside an MLP.
    """

    init_scale: float = 0.5

    def __post_init__(self) -> None:
        if not self.init_scale > 0:
            raise ValueError(f"model_args.init_scale must be > 0, got {self.init_scale}")


def _latent_dist(g: Group, nat: dict[str, Tensor]):
    if g.family == "bernoulli":
        return BernoulliVector(bernoulli_logits(nat))
    if g.family == "categorical":
        return dist.Categorical(logits=nat["logits"])
    return dist.Normal(nat["loc"], nat["scale"]).to_event(1)


def _observed_dist(g: Group, nat: dict[str, Tensor], x: Tensor):
    if g.family == "bernoulli":  # one event of D bits; scored by matrix products against enumerated parents
        return BernoulliVector(bernoulli_logits(nat))
    if g.family == "categorical":
        return WordCounts(nat["logits"], total_count=x.sum(-1))
    return dist.Normal(nat["loc"], nat["scale"]).to_event(1)


def model(decl: Declaration, x: Tensor, params: DeclaredParams) -> None:
    r"""Pyro model of the declared network given its parameters (module docstring).

    x: (num_points, sum of observed sizes). Sites: one per group, named after it, in the data plate.
    """
    cols = decl.columns()
    with pyro.plate(decl.plate, x.shape[0], device=x.device):
        values: dict[str, Tensor] = {}
        for g in decl.latents:
            values[g.name] = pyro.sample(g.name, _latent_dist(g, natural(decl, params, g.name, values)))
        for g in decl.observed:
            xo = x[:, cols[g.name]]
            pyro.sample(g.name, _observed_dist(g, natural(decl, params, g.name, values), xo), obs=xo)


class Declared(PyroModule):
    """The declared model with learnable point-estimated parameters, for SVI.

    Each learned parameter of :func:`models.exact.declared.layout` is a ``PyroParam`` with its constraint
    (``<group>__<name>``: attribute names cannot hold dots); fixed ones (a prior with learn_prior = false) are
    buffers."""

    def __init__(self, decl: Declaration, init: DeclaredParams):
        super().__init__()
        self.decl = decl
        self.slots = init.slots
        for name, value in init.tensors.items():
            slot = self.slots[name]
            attr = name.replace(".", "__")
            if slot.learnable:
                setattr(self, attr, PyroParam(exact.interior(value.detach(), slot.constraint).clone(), constraint=slot.constraint))
            else:
                self.register_buffer(attr, value.detach().clone())

    @property
    def params(self) -> DeclaredParams:
        return DeclaredParams({name: getattr(self, name.replace(".", "__")) for name in self.slots}, self.slots)

    def forward(self, x: Tensor) -> None:
        model(self.decl, x, self.params)


# --------------------------------------------------------------------------- parameters and simulation


def init_params(decl: Declaration, x: Tensor, args: DeclaredArgs, seed: int) -> DeclaredParams:
    """Starting parameters shared by generalised EM and every guide.

    Roots: the declared prior. Links: random weights (``init_scale``; non-negative ones uniform on
    [0.5, 1.5] x init_scale), a categorical parent of a gaussian group's linear link starting at K random
    data points (centred), as k-means' random start does; biases at the data's marginal statistics (column
    means, log word frequencies, logits of bit rates), scales at the columns' standard deviations, a noisy-OR
    leak at half each bit's rate (in [0.005, 0.5]).
    """
    gen = torch.Generator().manual_seed(seed)  # random draws on the CPU, then moved: the same start on every device
    dtype, device = x.dtype, x.device
    cpu = {"generator": gen, "device": "cpu"}
    cols = decl.columns()
    slots = exact.layout(decl)
    out: dict[str, Tensor] = {}
    for name, slot in slots.items():
        group, _, key = name.partition(".")
        g = decl.groups[group]
        link = decl.links.get(group)
        xo = x[:, cols[group]] if g.role == "observed" else None
        if link is None:
            out[name] = _prior_value(g, key, dtype, device)
        elif key.endswith("weight") and key != "scale_weight":
            fan_in = slot.shape[0]
            last = key == "weight" or key == f"layers.{len(link.hidden)}.weight"
            scale = args.init_scale if last else args.init_scale / math.sqrt(fan_in)
            if slot.constraint is exact.constraints.positive:
                out[name] = scale * (0.5 + torch.rand(slot.shape, dtype=dtype, **cpu).to(device))
            else:
                out[name] = scale * torch.randn(slot.shape, dtype=dtype, **cpu).to(device)
            if last and link.kind == "linear" and g.family == "gaussian" and xo is not None:
                out[name] = out[name] * xo.std(0, unbiased=False)
                start = 0
                for p in link.parents:
                    pg = decl.groups[p]
                    if pg.family == "categorical":
                        rows = (torch.randperm(x.shape[0], **cpu)[: pg.size] if x.shape[0] >= pg.size
                                else torch.randint(x.shape[0], (pg.size,), **cpu))
                        out[name][start:start + pg.size] = xo[rows.to(device)] - xo.mean(0)
                    start += pg.width
        elif key == "leak":
            out[name] = (0.5 * xo.mean(0)).clamp(0.005, 0.5)
        elif key == "scale":
            out[name] = xo.std(0, unbiased=False).clamp_min(1e-3) if xo is not None else x.new_ones(slot.shape)
        elif key == "scale_weight":
            out[name] = x.new_zeros(slot.shape)
        elif key == "scale_bias":
            out[name] = xo.std(0, unbiased=False).clamp_min(1e-3).log() if xo is not None else x.new_zeros(slot.shape)
        elif key in ("bias", f"layers.{len(link.hidden)}.bias") and xo is not None:  # the output layer's bias
            out[name] = _marginal_bias(g, xo)
        else:  # hidden biases, a latent child's bias
            out[name] = x.new_zeros(slot.shape)
    return DeclaredParams(out, slots)


def _prior_value(g: Group, key: str, dtype: torch.dtype, device: torch.device | str = "cpu") -> Tensor:
    if key == "loc":
        return torch.tensor(g.prior["loc"], dtype=dtype, device=device)
    if key == "scale":
        return torch.tensor(g.prior["scale"], dtype=dtype, device=device)
    probs = torch.tensor(g.prior["probs"], dtype=dtype, device=device)
    return torch.logit(probs) if g.family == "bernoulli" else probs.log()


def _marginal_bias(g: Group, xo: Tensor) -> Tensor:
    if g.family == "gaussian":
        return xo.mean(0)
    if g.family == "bernoulli":
        return torch.logit(xo.mean(0).clamp(0.01, 0.99))
    freq = xo.sum(0) + 0.5
    return (freq / freq.sum()).log()


def random_params(decl: Declaration, seed: int, dtype: torch.dtype = torch.float64) -> DeclaredParams:
    """Parameters to simulate from (synthetic data with a known truth): the declared priors, link weights
    N(0, 2^2) (non-negative ones uniform on [1, 3]: strong causes), biases N(0, 1), noisy-OR leaks in
    [0.01, 0.05], gaussian scales in [0.3, 1]."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    slots = exact.layout(decl)
    for name, slot in slots.items():
        group, _, key = name.partition(".")
        g = decl.groups[group]
        u = torch.rand(slot.shape, generator=gen, dtype=torch.float64)
        if group not in decl.links:
            value = _prior_value(g, key, torch.float64)
        elif key == "leak":
            value = 0.01 + 0.04 * u
        elif key == "scale":
            value = 0.3 + 0.7 * u
        elif key == "scale_bias":
            value = torch.log(0.3 + 0.7 * u)
        elif key == "scale_weight":
            value = 0.3 * torch.randn(slot.shape, generator=gen, dtype=torch.float64)
        elif slot.constraint is exact.constraints.positive:
            value = 1 + 2 * u
        elif key.endswith("weight"):
            value = 2 * torch.randn(slot.shape, generator=gen, dtype=torch.float64)
        else:
            value = torch.randn(slot.shape, generator=gen, dtype=torch.float64)
        out[name] = value.to(dtype)
    return DeclaredParams(out, slots)


def simulate(decl: Declaration, params: DeclaredParams, num_points: int, seed: int,
             doc_length: int = 50) -> tuple[Tensor, dict[str, Tensor]]:
    """Draw ``num_points`` points. Returns the data x: (N, sum of observed sizes) and each latent group's values.

    A categorical observed group draws max(1, Poisson(doc_length)) outcomes per point (exactly one when
    ``doc_length`` is 1) and records their counts."""
    gen = torch.Generator().manual_seed(seed)
    dtype = params.dtype
    values: dict[str, Tensor] = {}
    columns = []
    with torch.no_grad():
        for g in (*decl.latents, *decl.observed):
            nat = natural(decl, params, g.name, values)
            if g.family == "bernoulli":
                p = torch.sigmoid(bernoulli_logits(nat)).expand(num_points, g.size).contiguous()
                v = torch.bernoulli(p, generator=gen)
            elif g.family == "gaussian":
                loc, scale = nat["loc"].expand(num_points, g.size), nat["scale"].expand(num_points, g.size)
                v = loc + scale * torch.randn(num_points, g.size, generator=gen, dtype=dtype)
            else:
                probs = torch.softmax(nat["logits"], -1).expand(num_points, g.size).contiguous()
                if g.role == "latent":
                    v = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
                else:
                    v = _counts(probs, doc_length, gen)
            if g.role == "latent":
                values[g.name] = v
            else:
                columns.append(v.to(dtype))
    return torch.cat(columns, -1), values


def _counts(probs: Tensor, doc_length: int, gen: torch.Generator) -> Tensor:
    n = probs.shape[0]
    if doc_length == 1:
        lengths = torch.ones(n, dtype=torch.int64)
    else:
        lengths = torch.poisson(torch.full((n,), float(doc_length), dtype=torch.float64), generator=gen).long().clamp_min(1)
    draws = torch.multinomial(probs, int(lengths.max()), replacement=True, generator=gen)  # (N, L)
    keep = (torch.arange(draws.shape[1]) < lengths[:, None]).to(probs.dtype)
    return torch.zeros_like(probs).scatter_add_(1, draws, keep)


# --------------------------------------------------------------------------- Monte Carlo evaluation


def log_weights(decl: Declaration, x: Tensor, params: DeclaredParams, guide, num_samples: int) -> Tensor:
    """log w[s, n] = log p(x_n, z_s) - log q(z_s | x_n), z_s ~ q(z | x_n), s = 1..S: (S, N); see
    :func:`models.importance.log_weights`."""
    return importance.log_weights(model, (decl, x, params), guide, (x,), num_samples)


@torch.no_grad()
def importance_sampled(decl: Declaration, x: Tensor, params: DeclaredParams, guide, num_samples: int, seed: int,
                       max_elements: float = 2e7) -> ImportanceEstimate:
    """IWAE log p(x_n) and ELBO estimates per point with q the guide's, samples drawn in chunks so an
    (S, N, width) tensor stays under ``max_elements``."""
    pyro.set_rng_seed(seed)
    widest = max([x.shape[1]] + [h for link in decl.links.values() for h in link.hidden])
    chunk = max(1, int(max_elements // (x.shape[0] * widest)))
    lw = torch.cat([log_weights(decl, x, params, guide, min(chunk, num_samples - start))
                    for start in range(0, num_samples, chunk)])
    return ImportanceEstimate.from_log_weights(lw)


def importance_metrics(decl: Declaration, x: Tensor, params: DeclaredParams, guide, seed: int, samples: int = 1000,
                       points: int = 0) -> dict:
    """A guide's ELBO and log p(x) per point by importance sampling with its q, for declarations with no exact
    reference (the runner's evaluation); ``points`` is not used (a mean-field guide scores its own points)."""
    return importance_sampled(decl, x, params, guide, samples, seed).metrics()


# --------------------------------------------------------------------------- data


def validate(decl: Declaration, x, args: DeclaredArgs | None = None) -> Tensor:
    """Check a data matrix against the declaration before any work starts; return it as float64.

    Raises :class:`DataError` naming the group, the row and the column: not a 2-D numeric matrix, empty,
    the wrong number of columns, non-finite values, a bernoulli column with a value other than 0/1, or a
    categorical count that is negative or not a whole number."""
    if not isinstance(x, Tensor):
        arr = np.asarray(x)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise DataError(f"data for model {decl.name!r} must be numbers; got dtype {arr.dtype}")
        x = torch.as_tensor(arr)
    if x.dim() != 2 or x.is_complex():
        raise DataError(f"data for model {decl.name!r} must be a real matrix (num_points, {decl.data_width}); got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise DataError(f"data for model {decl.name!r} are empty: shape {tuple(x.shape)}")
    widths = ", ".join(f"{g.name}: {g.size}" for g in decl.observed)
    if x.shape[1] != decl.data_width:
        raise DataError(f"data for model {decl.name!r} have {x.shape[1]} columns; the declaration's observed groups "
                        f"need {decl.data_width} ({widths})")
    x = x.to(torch.float64)
    for g in decl.observed:
        cols = decl.columns()[g.name]
        xo = x[:, cols]
        bad = ~torch.isfinite(xo)
        kind = "finite"
        if not bad.any() and g.family == "bernoulli":
            bad, kind = ~((xo == 0) | (xo == 1)), "0 or 1"
        elif not bad.any() and g.family == "categorical":
            bad, kind = (xo < 0) | (xo != xo.round()), "a count (a whole number >= 0)"
        if bad.any():
            row, col = (int(i) for i in bad.nonzero()[0])
            raise DataError(f"observed group {g.name!r} ({g.family}): every entry must be {kind}; {int(bad.sum())} are not, "
                            f"first at row {row}, column {cols.start + col}: {xo[row, col].item()}")
    return x


SOURCES = {  # the data sets a declaration's [data] table may name (models.declaration.DATA_SOURCES gives their families)
    "faithful": datasets.load_faithful,
    "iris": datasets.load_iris,
    "std": datasets.load_std,
    "digits": datasets.load_digits,  # binarised (seed 0): DeclaredArgs has no Gaussian likelihood option
    "news": datasets.load_news,
    "reuters": datasets.load_reuters,
}


def mapped(decl: Declaration, opts: DataOptions, args: DeclaredArgs, seed: int) -> Dataset:
    """The data sets named in the declaration's ``[data]`` table, side by side in the observed groups' order.
    Each must have as many columns as its group's size (named in the error) and all the same rows."""
    parts = []
    for g in decl.observed:
        ds = SOURCES[decl.data[g.name]](opts, args, seed)
        x = ds.x[: opts.subset] if opts.subset else ds.x
        if x.shape[1] != g.size:
            raise DataError(f"{decl.where('observed', g.name, 'size')}: size mismatch: data set {decl.data[g.name]!r} has "
                            f"{x.shape[1]} columns, but observed group {g.name!r} has size {g.size} (change the size, or the "
                            "data options that set the width, e.g. data.vocab_size)")
        parts.append((x, ds))
    rows = {x.shape[0] for x, _ in parts}
    if len(rows) > 1:
        raise DataError(f"the data sets of model {decl.name!r} have different numbers of rows: "
                        + ", ".join(f"{decl.data[g.name]}: {x.shape[0]}" for g, (x, _) in zip(decl.observed, parts)))
    first = parts[0][1]
    labels = first.labels[: parts[0][0].shape[0]] if first.labels is not None else None
    return Dataset(torch.cat([x for x, _ in parts], -1), " + ".join(ds.description for _, ds in parts),
                   tuple(f for _, ds in parts for f in ds.features), labels=labels)


def synthetic(decl: Declaration, opts: DataOptions, args: DeclaredArgs, seed: int) -> Dataset:
    """``opts.num_points`` points simulated from :func:`random_params` (known truth); ``opts.doc_length``
    outcomes per point for categorical observed groups."""
    truth = random_params(decl, seed)
    x, values = simulate(decl, truth, opts.num_points, seed + 1, opts.doc_length)
    labels = values[decl.latents[0].name] if decl.latents[0].family != "gaussian" else None
    features = tuple(f"{g.name}{j}" for g in decl.observed for j in range(g.size))
    return Dataset(x, f"synthetic, simulated from the declaration (N={opts.num_points})", features, truth=truth, labels=labels)


def data_name(decl: Declaration) -> str:
    """The name of the declaration's own data set in ``vizoo list`` and configs: its sources joined by '+'."""
    return "+".join(dict.fromkeys(decl.data[g.name] for g in decl.observed))


# --------------------------------------------------------------------------- describing a declaration


def structure(decl: Declaration) -> str:
    """One line: the groups and what feeds what, e.g. ``z (categorical 3) -> x (gaussian 2)``."""
    parts = []
    for g in (*decl.latents, *decl.observed):
        link = decl.links.get(g.name)
        src = f"{', '.join(link.parents)} -{link.kind}-> " if link else ""
        parts.append(f"{src}{g.name} ({g.family} {g.size}{', observed' if g.role == 'observed' else ''})")
    return "; ".join(parts)


def process(decl: Declaration) -> list[str]:
    """The generative process, one line per group, in plain maths."""
    n = "_n"
    lines = []
    for g in (*decl.latents, *decl.observed):
        link = decl.links.get(g.name)
        lhs = f"{g.name}{n}"
        if link is None:
            rhs = {"bernoulli": f"prod_k Bernoulli(sigmoid(a_{g.name}_k))",
                   "categorical": f"Categorical(softmax(a_{g.name}))",
                   "gaussian": f"Normal(m_{g.name}, diag(s_{g.name}^2))"}[g.family]
            lines.append(f"{lhs} ~ {rhs}")
            continue
        enc = ", ".join(f"onehot({p}{n})" if decl.groups[p].family == "categorical" else f"{p}{n}" for p in link.parents)
        h = f"h = [{enc}]" if len(link.parents) > 1 or decl.groups[link.parents[0]].family == "categorical" else f"h = {enc}"
        w = f"W_{g.name}"
        if link.kind == "noisy_or":
            lines.append(f"{lhs} | {', '.join(p + n for p in link.parents)} ~ prod_j Bernoulli(1 - (1 - leak_{g.name}_j) exp(-(h {w})_j)),"
                         f"  {h},  {w} >= 0")
            continue
        if link.kind == "linear":
            eta = f"h {w} + b_{g.name}"
        else:
            eta = f"MLP_{g.name}(h; hidden {list(link.hidden)}, {link.activation})"
        rhs = {"bernoulli": "prod_j Bernoulli(sigmoid(eta))",
               "categorical": "Categorical(softmax(eta))" if g.role == "latent" else "counts of draws from Categorical(softmax(eta))",
               "gaussian": "Normal(eta, diag(sigma^2))"}[g.family]
        extra = ""
        if g.family == "gaussian":
            extra = {"shared": f",  sigma = s_{g.name} (shared)", "linked": f",  sigma = exp(h V_{g.name} + c_{g.name})"}.get(
                g.scale, f",  sigma = {g.scale} (fixed)")
        cons = f",  {w} >= 0" if link.constraint == "nonnegative" else ""
        lines.append(f"{lhs} | {', '.join(p + n for p in link.parents)} ~ {rhs},  eta = {eta},  {h}{extra}{cons}")
    return lines


def describe_fit(decl: Declaration, fits: dict[str, DeclaredParams], features: tuple[str, ...], max_columns: int = 16) -> str:
    """Markdown for the run's report: each method's discrete priors and the weights of every linear or noisy-OR
    link with at most ``max_columns`` columns (parent units as rows; an MLP's layers are not shown)."""
    cols = decl.columns()
    units = {g.name: [f"{g.name}={k}" if g.family == "categorical" else f"{g.name}{k}" for k in range(g.size)] for g in decl.latents}
    out = []
    for method, p in fits.items():
        parts = [f"### {method}"]
        for g in decl.latents:
            if g.name not in decl.links and g.family != "gaussian":
                logits = p[f"{g.name}.logits"]
                probs = torch.sigmoid(logits) if g.family == "bernoulli" else torch.softmax(logits, -1)
                what = "P({}_k = 1)" if g.family == "bernoulli" else "P({} = k)"
                parts.append(f"{what.format(g.name)}: " + ", ".join(f"{float(v):.3f}" for v in probs))
        for child, link in decl.links.items():
            g = decl.groups[child]
            if link.kind == "mlp" or g.size > max_columns:
                shape = "x".join(str(n) for n in (decl.in_width(link), *link.hidden, g.size))
                parts.append(f"{child} <- {', '.join(link.parents)}: {link.kind} link {shape} (weights not shown)")
                continue
            names = list(features[cols[child]]) if g.role == "observed" and len(features) == decl.data_width else \
                [f"{child}{j}" for j in range(g.size)]
            head = f"| {child} <- {', '.join(link.parents)} ({link.kind}) | " + " | ".join(names) + " |"
            rows = [head, "|---|" + "---:|" * g.size]
            weight = p[f"{child}.weight"]
            rows += [f"| {u} | " + " | ".join(f"{float(w):.2f}" for w in weight[i]) + " |"
                     for i, u in enumerate(u for q in link.parents for u in units[q])]
            extra = "leak" if link.kind == "noisy_or" else "bias"
            rows.append(f"| {extra} | " + " | ".join(f"{float(v):.3f}" for v in p[f"{child}.{extra}"]) + " |")
            parts.append("\n".join(rows))
        out.append("\n\n".join(parts))
    return "\n\n".join(out)


def show(decl: Declaration, num_points: int = 5) -> str:
    """What ``vizoo show`` prints: the process, the parameters, the plates and tensor shapes, and what is exact."""
    slots = exact.layout(decl)
    out = [f"model {decl.name!r} (declared in {decl.source})" + (f": {decl.summary}" if decl.summary else ""), ""]
    out.append(f"Generative process, for each point n = 1..N (plate {decl.plate!r}), latent groups first:")
    out += [f"  {line}" for line in process(decl)]
    out += ["", "Parameters (point-estimated; learned unless fixed):"]
    for name, slot in slots.items():
        cons = {exact.constraints.positive: "> 0", exact.constraints.unit_interval: "in (0, 1)"}.get(slot.constraint, "real")
        out.append(f"  {name:28s} {str(tuple(slot.shape)):12s} {cons:10s}{'' if slot.learnable else ' fixed'}")
    cols = decl.columns()
    out += ["", "Data: one matrix (N, {}), the observed groups' columns side by side: {}".format(
        decl.data_width, ", ".join(f"{g.name} = columns {cols[g.name].start}..{cols[g.name].stop - 1}" for g in decl.observed))]
    if decl.data:
        out.append("  fed by: " + ", ".join(f"{g} <- {src}" for g, src in decl.data.items()))
    x, _ = simulate(decl, random_params(decl, 0), num_points, 1, doc_length=5)
    trace = poutine.trace(model).get_trace(decl, x, random_params(decl, 0))
    out += ["", f"Plates and tensor shapes (Trace.format_shapes() of one run with N = {num_points}):", trace.format_shapes()]
    out.append("")
    if decl.discrete and decl.num_configurations <= exact.MAX_CONFIGURATIONS:
        out.append(f"Exact: every latent group is discrete, {decl.num_configurations:,} joint configurations per point: "
                   "log p(x), the posterior and KL by enumeration; generalised EM as the reference fit.")
    elif decl.discrete:
        out.append(f"Not exact: {decl.num_configurations:,} joint configurations per point, over the limit "
                   f"{exact.MAX_CONFIGURATIONS:,}.")
    elif linear_gaussian.applies(decl):
        out.append("Exact: linear-Gaussian (factor analysis): log p(x), the posterior, ELBO and KL in closed form; "
                   "exact EM as the reference fit.")
    else:
        out.append("Not exact: gaussian latent groups ({}) with a non-linear or non-gaussian part; ELBOs and log p(x) are "
                   "Monte Carlo (importance-sampled) estimates.".format(", ".join(g.name for g in decl.latents if g.family == "gaussian")))
    out.append("Guides: mean_field (free parameters per point and latent group), amortised (one MLP from the "
               "observed groups to every latent group's parameters); the same family: q(z) = prod_g q(z_g).")
    return "\n".join(out)
