r"""Factorial hidden Markov model (Ghahramani & Jordan 1997): M independent Markov chains, one observation stream.

Generative process, for sequences n = 1..N of lengths T_n, chains m = 1..M of L states, steps t = 1..T_n::

    s_{n,1}^m ~ Cat(pi_m)                        pi: (M, L)       (softmax of init_logits)
    s_{n,t}^m | s_{n,t-1}^m ~ Cat(A_m[s_{n,t-1}^m])  A: (M, L, L)    (softmax of trans_logits, row = previous)
    Gaussian:  y_{n,t} ~ N(sum_m W_m[s_{n,t}^m], C)                  W: (M, L, D), C: (D, D)
    Bernoulli: y_{n,t} ~ Bern(sigmoid(sum_m W_m[s_{n,t}^m] + b))     b: (D,)    (binary piano rolls)

Graphical model (one sequence; each chain is its own Markov chain, y_t depends on every chain at t)::

    s_1^1 --> s_2^1 --> ... --> s_T^1
      |  s_1^2 --|-> s_2^2 --> ... |
      |    |     |     |           |
      v    v     v     v           v
     y_1        y_2        ...    y_T

Data are padded: y: (N, T_max, D) with NaN rows past each sequence's end (:func:`pad` builds it from a list;
:func:`models.exact.fhmm.sequence_lengths` reads the lengths back). Padded steps are masked out of every
term.

Tensor shapes under ``Trace.format_shapes()`` (y: (N, T, D))::

     Sample Sites:
    sequences dist       |
             value     N |
       chains dist       |
             value     M |
            s dist   M N | T          one site holds each chain's whole path (MarkovChain)
             value   M N | T
            y dist     N | T D        masked past each length
             value     N | T D

Exact inference on the L^M joint state space is :mod:`models.exact.fhmm` (forward-backward, Baum-Welch,
and Ghahramani & Jordan's fixed points for both mean-field families); the guides are in :mod:`guides.fhmm`.
The Bach chorales (binary piano rolls) are loaded by :mod:`models.datasets.chorales`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor
from torch.distributions import constraints

from .datasets import DataOptions, Dataset
from .distributions import MarkovChain
from .errors import DataError
from .exact import fhmm as exact
from .exact.fhmm import FHMMParams, sequence_lengths

EMISSIONS = ("gaussian", "bernoulli")


@dataclass(frozen=True)
class FHMMArgs:
    """Model options, as they appear under ``[model_args]`` in a config.

    num_chains: M, the number of independent Markov chains.
    num_states: L, the states of each chain (exact inference works on L^M joint states, at most 4,096).
    emission: "gaussian" (y real, shared full covariance C) or "bernoulli" (y binary, logits + bias).
    """

    num_chains: int = 3
    num_states: int = 2
    emission: str = "gaussian"

    def __post_init__(self) -> None:
        if self.num_chains < 1:
            raise ValueError(f"model_args.num_chains must be >= 1, got {self.num_chains}")
        if self.num_states < 2:
            raise ValueError(f"model_args.num_states must be >= 2, got {self.num_states}")
        if self.emission not in EMISSIONS:
            raise ValueError(f"model_args.emission must be one of {EMISSIONS}, got {self.emission!r}")
        if self.emission == "bernoulli" and self.num_states**self.num_chains > exact.MAX_JOINT_STATES:
            # no closed form for E_q[log sigmoid(...)]: every Bernoulli expectation (exact, mean-field ELBO,
            # fixed points, held-out score) contracts the L^M table
            raise ValueError(
                f"model_args.num_chains={self.num_chains}, num_states={self.num_states}: Bernoulli emissions need "
                f"the L^M = {self.num_states**self.num_chains:,}-state table for every expectation; the limit is "
                f"{exact.MAX_JOINT_STATES:,} (Gaussian emissions have closed-form mean-field expectations beyond it)"
            )


def exact_size_error(args: FHMMArgs) -> str:
    """Why exact inference is out of reach for these args ("" when it is not)."""
    try:
        exact.check_joint_size(args.num_chains, args.num_states)
    except ValueError as err:
        return f"model_args.num_chains={args.num_chains}, num_states={args.num_states}: {err}"
    return ""


def pad(sequences) -> Tensor:
    """(N, T_max, D) float64 from a list of (T_n, D) arrays or tensors, NaN rows past each one's end."""
    seqs = [torch.as_tensor(np.asarray(s), dtype=torch.float64) for s in sequences]
    if not seqs or any(s.dim() != 2 or s.shape[0] == 0 for s in seqs) or len({s.shape[1] for s in seqs}) != 1:
        raise DataError("pad: expected a non-empty list of (num_steps, dim) arrays, each with at least one step and the same dim")
    out = torch.full((len(seqs), max(s.shape[0] for s in seqs), seqs[0].shape[1]), float("nan"), dtype=torch.float64)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
    return out


def _emission_dist(params: FHMMParams, s: Tensor, mask: Tensor):
    """p(y_t | s_t) for every step, masked past each end: batch (N,), event (T, D). s: (M, N, T)."""
    m = params.num_chains
    loc = params.weights[torch.arange(m, device=s.device)[:, None, None], s].sum(0)  # (N, T, D)
    if params.bias is None:
        base = dist.MultivariateNormal(loc, scale_tril=torch.linalg.cholesky(params.cov))
    else:
        base = dist.Bernoulli(logits=loc + params.bias).to_event(1)
    return base.mask(mask).to_event(1)


def model(y: Tensor, params: FHMMParams) -> None:
    r"""Pyro model of the factorial HMM given its parameters.

    s^m_{n,1:T} ~ MarkovChain(pi_m, A_m);  y_{n,t} | s_{n,t} ~ N(sum_m W_m[s^m_{n,t}], C) or Bern(...)
    y: (num_sequences, num_steps, dim), NaN-padded.
    """
    lengths = sequence_lengths(y)
    mask = exact.step_mask(lengths, y.shape[1])
    n, t = y.shape[:2]
    m, l = params.num_chains, params.num_states
    with pyro.plate("sequences", n, dim=-1, device=y.device):
        with pyro.plate("chains", m, dim=-2, device=y.device):
            trans = params.trans_logits[:, None, None].expand(m, 1, t - 1, l, l)
            s = pyro.sample("s", MarkovChain(params.init_logits[:, None], trans, lengths))  # (M, N, T)
        pyro.sample("y", _emission_dist(params, s.long(), mask), obs=torch.nan_to_num(y, nan=0.0))


class FHMM(PyroModule):
    """The factorial HMM with learnable point-estimated parameters, for SVI. ``params`` gives the current
    :class:`FHMMParams` (cov = scale_tril scale_tril^T)."""

    def __init__(self, init: FHMMParams):
        super().__init__()
        self.init_logits = PyroParam(init.init_logits.detach().clone())
        self.trans_logits = PyroParam(init.trans_logits.detach().clone())
        self.weights = PyroParam(init.weights.detach().clone())
        if init.bias is None:
            self.scale_tril = PyroParam(torch.linalg.cholesky(init.cov).detach().clone(), constraint=constraints.lower_cholesky)
        else:
            self.bias = PyroParam(init.bias.detach().clone())
        self.gaussian = init.bias is None

    @property
    def params(self) -> FHMMParams:
        if self.gaussian:
            return FHMMParams(self.init_logits, self.trans_logits, self.weights, cov=self.scale_tril @ self.scale_tril.T)
        return FHMMParams(self.init_logits, self.trans_logits, self.weights, bias=self.bias)

    def forward(self, y: Tensor) -> None:
        model(y, self.params)


def validate_data(y, args: FHMMArgs) -> Tensor:
    """Check sequences before any work: a (N, T, D) tensor, NaN-padded (whole rows, only after each end),
    finite elsewhere, and 0/1 for Bernoulli emissions. Returns float64. Raises DataError naming the problem."""
    if isinstance(y, (list, tuple)):
        lens = sorted({len(s) for s in y})
        raise DataError(
            f"sequences given as a list (lengths {lens[:5]}{'...' if len(lens) > 5 else ''}): ragged sequences need "
            "their lengths; pad them into one (N, T, D) tensor with NaN rows past each end (models.fhmm.pad)"
        )
    if not isinstance(y, Tensor):
        raise DataError(f"sequences must be a tensor, got {type(y).__name__}")
    if y.dim() != 3:
        raise DataError(f"sequences must be (num_sequences, num_steps, dim), got shape {tuple(y.shape)}")
    if y.numel() == 0:
        raise DataError(f"sequences are empty: shape {tuple(y.shape)}")
    if not (y.is_floating_point() or y.dtype in (torch.int64, torch.int32, torch.uint8, torch.bool)):
        raise DataError(f"sequences must hold numbers, got dtype {y.dtype}")
    y = y.to(torch.float64)
    try:
        lengths = sequence_lengths(y)
    except ValueError as err:
        raise DataError(f"sequences: {err}") from None
    mask = exact.step_mask(lengths, y.shape[1])
    bad = torch.isinf(y).any(-1) & mask
    if bad.any():
        n, t = map(int, torch.nonzero(bad)[0])
        raise DataError(f"sequences: sequence {n}, step {t} holds an infinite value")
    if args.emission == "bernoulli":
        nonbinary = ((y != 0) & (y != 1)) & mask[..., None]
        if nonbinary.any():
            n, t, d = map(int, torch.nonzero(nonbinary)[0])
            raise DataError(
                f"sequences: the Bernoulli emission needs binary rolls (0 or 1), but sequence {n}, step {t}, "
                f"column {d} is {float(y[n, t, d])}"
            )
    return y


def init_params(y: Tensor, args: FHMMArgs, seed: int) -> FHMMParams:
    """Shared starting point for EM and every guide: uniform pi, rows of A drawn from Dir(1) mixed half and half
    with the identity (chains start persistent), W random around the data's scale (symmetry must be broken:
    identical chains would stay identical). Gaussian: W_m[l] ~ N(0, C0 / M), C = C0 the data covariance.
    Bernoulli: b = logit of each column's frequency, W ~ N(0, 1)."""
    gen = torch.Generator().manual_seed(seed)  # random draws on the CPU, then moved: the same start on every device
    m, l = args.num_chains, args.num_states
    lengths = sequence_lengths(y)
    rows = torch.nan_to_num(y, nan=0.0)[exact.step_mask(lengths, y.shape[1])]  # (sum T_n, D)
    d = rows.shape[1]
    dirichlet = torch.distributions.Dirichlet(torch.ones(l, dtype=y.dtype, device="cpu"))
    trans = torch.stack([0.5 * torch.eye(l, dtype=y.dtype, device="cpu") + 0.5 * _dirichlet(dirichlet, l, gen) for _ in range(m)])
    trans = trans.to(y.device)
    init_logits = y.new_zeros(m, l)
    noise = torch.randn(m, l, d, generator=gen, dtype=y.dtype, device="cpu").to(y.device)
    if args.emission == "gaussian":
        centred = rows - rows.mean(0)
        cov = centred.T @ centred / rows.shape[0] + 1e-6 * torch.eye(d, dtype=y.dtype, device=y.device)
        weights = rows.mean(0) / m + noise @ torch.linalg.cholesky(cov / m).T
        return FHMMParams(init_logits, torch.log(trans), weights, cov=cov)
    freq = rows.mean(0).clamp(0.01, 0.99)
    return FHMMParams(init_logits, torch.log(trans), noise, bias=torch.logit(freq))


def _dirichlet(d, l: int, gen: torch.Generator) -> Tensor:
    g = -torch.log(torch.rand(l, l, generator=gen, dtype=d.concentration.dtype, device=gen.device))  # Exp(1) = Gamma(1): Dir(1) rows
    return g / g.sum(-1, keepdim=True)


def true_params(args: FHMMArgs, dim: int, seed: int, scale: float = 1.0) -> FHMMParams:
    """Ghahramani & Jordan's synthetic set-up: W entries ~ N(0, scale^2), pi and rows of A ~ Dir(1),
    C = 0.5 I (Gaussian) or b ~ N(-1, 1) (Bernoulli, mostly-off columns)."""
    gen = torch.Generator().manual_seed(seed)
    m, l = args.num_chains, args.num_states
    expo = lambda *shape: -torch.log(torch.rand(*shape, generator=gen, dtype=torch.float64))  # noqa: E731
    init = expo(m, l)
    trans = expo(m, l, l)
    weights = scale * torch.randn(m, l, dim, generator=gen, dtype=torch.float64)
    init_logits = torch.log(init / init.sum(-1, keepdim=True))
    trans_logits = torch.log(trans / trans.sum(-1, keepdim=True))
    if args.emission == "gaussian":
        return FHMMParams(init_logits, trans_logits, weights, cov=0.5 * torch.eye(dim, dtype=torch.float64))
    return FHMMParams(init_logits, trans_logits, weights, bias=torch.randn(dim, generator=gen, dtype=torch.float64) - 1)


def simulate(params: FHMMParams, num_sequences: int, num_steps: int, seed: int) -> tuple[Tensor, Tensor]:
    """y: (N, T, D) and the states s: (N, T, M), every sequence of length T, by ancestral sampling in plain torch."""
    gen = torch.Generator().manual_seed(seed)
    m = params.num_chains
    pi = torch.softmax(params.init_logits, -1)
    a = torch.softmax(params.trans_logits, -1)
    chains = torch.arange(m)
    s = [torch.multinomial(pi.repeat(num_sequences, 1), 1, generator=gen).reshape(num_sequences, m)]
    for _ in range(num_steps - 1):
        rows = a[chains, s[-1]]  # (N, M, L)
        s.append(torch.multinomial(rows.reshape(-1, rows.shape[-1]), 1, generator=gen).reshape(num_sequences, m))
    states = torch.stack(s, 1)  # (N, T, M)
    loc = params.weights[chains, states].sum(-2)  # (N, T, D)
    if params.bias is None:
        noise = torch.randn(loc.shape, generator=gen, dtype=loc.dtype) @ torch.linalg.cholesky(params.cov).T
        return loc + noise, states
    probs = torch.sigmoid(loc + params.bias)
    return (torch.rand(probs.shape, generator=gen, dtype=probs.dtype) < probs).to(probs.dtype), states


def synthetic(opts: DataOptions, args: FHMMArgs, seed: int) -> Dataset:
    """``num_points`` training and as many test sequences of length ``num_steps`` and dimension ``dim`` from
    :func:`true_params` (seeded by the run's seed); W's scale is ``separation`` / 4 (default 1)."""
    truth = true_params(args, opts.dim, seed, scale=opts.separation / 4)
    y, _ = simulate(truth, 2 * opts.num_points, opts.num_steps, seed + 1)
    kind = "Gaussian" if args.emission == "gaussian" else "binary"
    description = (f"synthetic {kind} factorial HMM data (M={args.num_chains}, L={args.num_states}, D={opts.dim}; "
                   f"{opts.num_points} train + {opts.num_points} test sequences of {opts.num_steps} steps)")
    features = tuple(f"y{i}" for i in range(opts.dim))
    return Dataset(y[: opts.num_points], description, features, truth=truth, x_test=y[opts.num_points :])


def heldout_metrics(y_train: Tensor, y_test: Tensor, params: FHMMParams, seed: int, **_options) -> dict[str, float]:
    """Log-likelihood per time step on the training and test sequences at the fitted parameters: exact
    (forward-backward) when L^M allows, else the structured mean-field fixed point's ELBO (a lower bound)."""
    out = {}
    for name, y in (("train", y_train), ("test", y_test)):
        steps = int(sequence_lengths(y).sum())
        if params.num_states**params.num_chains <= exact.MAX_JOINT_STATES:
            out[f"{name} log p(y)/step"] = float(exact.log_evidence(y, params)) / steps
        else:
            out[f"{name} ELBO/step (structured)"] = exact.fit_mean_field(y, params, "structured", max_sweeps=50).elbo[-1] / steps
    return out


def describe_fit(fits: dict[str, FHMMParams], features: tuple[str, ...]) -> str:
    """Each method's chains: how persistent each state is (the diagonal of A_m) and its initial distribution."""
    lines = ["Chains (diagonal of each A_m, the probability a state persists):", ""]
    for method, p in fits.items():
        stay = torch.softmax(p.trans_logits, -1).diagonal(dim1=-2, dim2=-1)
        chains = "; ".join("[" + ", ".join(f"{v:.2f}" for v in row.tolist()) + "]" for row in stay)
        lines.append(f"- {method}: {chains}")
    return "\n".join(lines)


def log_evidence_per_step(y: Tensor, params: FHMMParams) -> float:
    return float(exact.log_evidence(y, params)) / int(sequence_lengths(y).sum())

