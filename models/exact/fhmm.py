r"""Exact inference for the factorial HMM (Ghahramani & Jordan 1997) on the joint state space; plain torch.

M chains m = 1..M of L states each; sequences n = 1..N of lengths T_n <= T (padded to T)::

    s_1^m ~ Cat(pi_m),   s_t^m | s_{t-1}^m ~ Cat(A_m[s_{t-1}^m])          (independent chains)
    Gaussian:   y_t | s_t ~ N(sum_m W_m[s_t^m], C)                        W: (M, L, D), C: (D, D)
    Bernoulli:  y_t | s_t ~ Bern(sigmoid(sum_m W_m[s_t^m] + b))           b: (D,)

Joint states are the S = L^M configurations c = (c_1, ..., c_M), in row-major order (chain 1 slowest).
The forward-backward recursions are scaled (each step renormalised, log p(y) from the normalisers), run
over S states vectorised over sequences, and apply the factored transition one chain at a time (a
matrix product on that chain's axis of the (L,)*M view): O(T N M L^(M+1)) time instead of the
O(T N L^(2M)) of a dense S x S transition, and never an S x S matrix in memory. Time is the only Python
loop (the recursion is sequential in t). Sequences are NaN-padded: see :func:`sequence_lengths`.

Also here: Baum-Welch (:func:`fit_em`), the two mean-field families of Ghahramani & Jordan as tables
(:class:`Variational`: :func:`factorised`, :func:`structured`), their ELBO in closed form (:func:`elbo`),
their fixed-point updates (:func:`fit_mean_field`) and learning algorithm (:func:`fit_variational_em`),
and brute-force enumeration of every joint path for tests (:func:`brute_force`, :func:`brute_force_kl`).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import Tensor

from . import em

MAX_JOINT_STATES = 4096  # L^M above this is refused: (N, T, S) tables would not fit comfortably


class FHMMParams(NamedTuple):
    """init_logits: (M, L); trans_logits: (M, L, L) (row = previous state); weights: (M, L, D);
    Gaussian: cov (D, D), bias None; Bernoulli: bias (D,), cov None. Logits are normalised on use."""

    init_logits: Tensor
    trans_logits: Tensor
    weights: Tensor
    cov: Tensor | None = None
    bias: Tensor | None = None

    @property
    def num_chains(self) -> int:
        return self.init_logits.shape[0]

    @property
    def num_states(self) -> int:
        return self.init_logits.shape[1]

    @property
    def emission(self) -> str:
        return "gaussian" if self.bias is None else "bernoulli"

    def detach(self) -> "FHMMParams":
        return FHMMParams(*(None if t is None else t.detach().clone() for t in self))

    def to(self, dtype: torch.dtype) -> "FHMMParams":
        return FHMMParams(*(None if t is None else t.to(dtype) for t in self))

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors, loadable with ``torch.load(..., weights_only=True)``."""
        return {k: v.detach().clone() for k, v in self._asdict().items() if v is not None}


def check_joint_size(num_chains: int, num_states: int) -> int:
    """S = L^M, or a ValueError naming the limit when exact inference would need too many joint states."""
    s = num_states**num_chains
    if s > MAX_JOINT_STATES:
        raise ValueError(
            f"exact inference needs L^M = {num_states}^{num_chains} = {s:,} joint states; the limit is "
            f"{MAX_JOINT_STATES:,}: use fewer chains or states, or a mean-field guide without the exact reference"
        )
    return s


def joint_states(num_chains: int, num_states: int, device: torch.device | str = "cpu") -> Tensor:
    """(S, M) long on ``device``: every joint configuration, row-major (chain 1 slowest)."""
    table = list(itertools.product(range(num_states), repeat=num_chains))
    return torch.tensor(table, dtype=torch.long, device=device).reshape(-1, num_chains)


def emission_log_prob(y: Tensor, params: FHMMParams) -> Tensor:
    """log p(y_nt | joint state c): (N, T, S) for y: (N, T, D)."""
    m, l = params.num_chains, params.num_states
    check_joint_size(m, l)
    states = joint_states(m, l, y.device)
    mean = params.weights[torch.arange(m, device=y.device), states].sum(1)  # (S, D): sum_m W_m[c_m]
    if params.bias is not None:
        logits = mean + params.bias
        return y @ torch.nn.functional.logsigmoid(logits).T + (1 - y) @ torch.nn.functional.logsigmoid(-logits).T
    chol = torch.linalg.cholesky(params.cov)
    d = y.shape[-1]
    diff = y[:, :, None, :] - mean  # (N, T, S, D)
    z = torch.linalg.solve_triangular(chol, diff.unsqueeze(-1), upper=False).squeeze(-1)
    log_det = 2 * torch.log(torch.diagonal(chol)).sum()
    return -0.5 * ((z**2).sum(-1) + log_det + d * torch.log(y.new_tensor(2 * torch.pi)))


def _chainwise(x: Tensor, trans: Tensor, axis: int) -> Tensor:
    """Apply each chain's transition matrix to its own axis of x: (B, S) viewed as (B, L, ..., L), one matrix
    product per chain. axis 0 contracts the previous state (forward: sum_c' x(c') A(c' -> c)); axis 1 the
    next state (backward: sum_c' A(c -> c') x(c')). trans: (M, L, L) probabilities."""
    b = x.shape[0]
    m, l, _ = trans.shape
    a = x.reshape((b,) + (l,) * m)
    for i in range(m):
        a = torch.tensordot(a, trans[i], dims=([i + 1], [axis])).movedim(-1, i + 1)
    return a.reshape(b, -1)


def _push(alpha: Tensor, trans: Tensor) -> Tensor:
    """sum over previous joint states of alpha(c') A(c' -> c): (B, S) -> (B, S)."""
    return _chainwise(alpha, trans, 0)


def _pull(beta: Tensor, trans: Tensor) -> Tensor:
    """sum over next joint states of A(c -> c') beta(c'): (B, S) -> (B, S)."""
    return _chainwise(beta, trans, 1)


class Posterior(NamedTuple):
    """log_evidence: (N,) log p(y_n); marginals: (N, T, M, L) p(s_t^m = l | y_n) (zero beyond T_n);
    pairwise: (N, T-1, M, L, L) p(s_t^m = i, s_{t+1}^m = j | y_n) (zero where t+1 >= T_n);
    joint: (N, T, S) p(s_t = c | y_n) (zero beyond T_n)."""

    log_evidence: Tensor
    marginals: Tensor
    pairwise: Tensor
    joint: Tensor


def sequence_lengths(y: Tensor) -> Tensor:
    """(N,) lengths of NaN-padded sequences y: (N, T, D): rows past a sequence's end are all NaN.

    Raises ValueError when NaN appears anywhere else (inside a row, or before a sequence's end), or when
    a sequence is empty: those are not padding and cannot be told apart from missing data."""
    if y.dim() != 3:
        raise ValueError(f"sequences must be a (num_sequences, num_steps, dim) tensor, got shape {tuple(y.shape)}")
    nan_rows = torch.isnan(y).all(-1)
    if (torch.isnan(y).any(-1) & ~nan_rows).any():
        n, t = map(int, torch.nonzero(torch.isnan(y).any(-1) & ~nan_rows)[0])
        raise ValueError(f"sequence {n} has NaN in step {t} next to numbers: only whole rows past a sequence's end may be NaN (padding)")
    lengths = (~nan_rows).sum(1)
    steps = torch.arange(y.shape[1], device=y.device)
    if ((steps[None, :] < lengths[:, None]) == nan_rows).any():
        n = int(torch.nonzero(((steps[None, :] < lengths[:, None]) == nan_rows).any(1))[0])
        raise ValueError(f"sequence {n} has NaN rows before its last observed step: padding must come after a sequence's end")
    if (lengths == 0).any():
        raise ValueError(f"sequence {int(torch.nonzero(lengths == 0)[0])} is empty (every row NaN)")
    return lengths


def _lengths(y: Tensor, lengths: Tensor | None) -> tuple[Tensor, Tensor]:
    """(y with padding zeroed, lengths); lengths from the NaN padding when not given."""
    if lengths is None:
        lengths = sequence_lengths(y)
    else:
        lengths = _checked_lengths(y, lengths)
    return torch.nan_to_num(y, nan=0.0), lengths


def _checked_lengths(y: Tensor, lengths: Tensor) -> Tensor:
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=y.device)
    if lengths.shape != (y.shape[0],) or (lengths < 1).any() or (lengths > y.shape[1]).any():
        raise ValueError(f"lengths must be (N,) = ({y.shape[0]},) integers in [1, {y.shape[1]}], got {lengths.tolist()}")
    return lengths


def _padding_zeroed(y: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """(y with every step past its sequence's end set to 0, lengths): NaN padding (or anything else there) never
    reaches a sum, where 0 * NaN would still be NaN. A NaN inside a sequence is a ValueError naming it."""
    lengths = _checked_lengths(y, lengths)
    mask = step_mask(lengths, y.shape[1])
    inside = torch.isnan(y).any(-1) & mask
    if inside.any():
        n, t = map(int, torch.nonzero(inside)[0])
        raise ValueError(f"y has NaN inside sequence {n} at step {t} (its length is {int(lengths[n])}); only the "
                         "padding past a sequence's end may be NaN")
    return torch.where(mask[..., None], y, y.new_zeros(())), lengths


def step_mask(lengths: Tensor, num_steps: int) -> Tensor:
    """(N, T) bool: step t is inside sequence n."""
    return torch.arange(num_steps, device=lengths.device)[None, :] < lengths[:, None]


class _Forward(NamedTuple):
    alpha: Tensor  # (N, T, S): p(s_t | y_1..t), frozen past each sequence's end
    norm: Tensor  # (N, T): p(y_t | y_1..t-1) / exp(log_shift_t), 1 past the end
    log_shift: Tensor  # (N, T, 1)
    e: Tensor  # (N, T, S): emissions relative to each step's largest
    trans: Tensor  # (M, L, L) transition probabilities
    mask: Tensor  # (N, T) inside the sequence
    lengths: Tensor  # (N,)


def _forward(y: Tensor, params: FHMMParams, lengths: Tensor | None) -> _Forward:
    """The scaled forward recursion (Rabiner 1989): emissions are exponentiated relative to each step's largest
    log term (their log kept aside) and alpha is renormalised every step, so every table stays in [0, 1]."""
    y, lengths = _lengths(y, lengths)
    t_max = y.shape[1]
    m, l = params.num_chains, params.num_states
    log_e = emission_log_prob(y, params)  # (N, T, S)
    log_shift = log_e.max(-1, keepdim=True).values
    e = torch.exp(log_e - log_shift)  # (N, T, S), max 1 per step
    trans = torch.softmax(params.trans_logits, -1)
    states = joint_states(m, l, y.device)
    prior = torch.softmax(params.init_logits, -1)[torch.arange(m, device=y.device), states].prod(-1)  # (S,)
    mask = step_mask(lengths, t_max)
    a = prior * e[:, 0]
    norms = [a.sum(-1)]
    alphas = [a / norms[0][:, None]]
    for t in range(1, t_max):
        a = _push(alphas[-1], trans) * e[:, t]
        c = a.sum(-1)
        keep = mask[:, t]
        alphas.append(torch.where(keep[:, None], a / torch.where(keep, c, 1.0)[:, None], alphas[-1]))
        norms.append(torch.where(keep, c, 1.0))
    return _Forward(torch.stack(alphas, 1), torch.stack(norms, 1), log_shift, e, trans, mask, lengths)


def forward_backward(y: Tensor, params: FHMMParams, lengths: Tensor | None = None) -> Posterior:
    """Exact posterior of the factorial HMM for y: (N, T, D), padded with NaN rows past each end (or
    anything, with ``lengths``: (N,) given).

    The scaled recursions (:func:`_forward`): log p(y) accumulates the logs of the normalisers, and the
    factored transitions are matrix products."""
    f = _forward(y, params, lengths)
    alpha, norm, e, trans, mask = f.alpha, f.norm, f.e, f.trans, f.mask
    n, t_max, _ = alpha.shape
    m, l = params.num_chains, params.num_states
    log_evidence = ((torch.log(norm) + f.log_shift[..., 0]) * mask).sum(1)
    b = alpha.new_ones(n, l**m)
    betas = [b]
    for t in range(t_max - 2, -1, -1):
        new = _pull(b * e[:, t + 1], trans) / norm[:, t + 1, None]
        b = torch.where(mask[:, t + 1, None], new, b)  # one until the sequence's last step
        betas.append(b)
    beta = torch.stack(betas[::-1], 1)
    joint = alpha * beta * mask[..., None]
    onehot = torch.nn.functional.one_hot(joint_states(m, l, alpha.device), l).to(alpha.dtype)  # (S, M, L)
    marginals = torch.einsum("nts,sml->ntml", joint, onehot)
    pairwise = _pairwise(alpha, beta * e / norm[..., None], trans) * mask[:, 1:, None, None, None]
    return Posterior(log_evidence, marginals, pairwise, joint)


def draws(y: Tensor, params: FHMMParams, num_samples: int, generator: torch.Generator, lengths: Tensor | None = None) -> Tensor:
    """(S, M, N, T) exact posterior draws of every chain's state path (forward filtering, backward sampling on
    the joint chain), in the layout of the model's site ``s``; steps past a sequence's end are 0."""
    f = _forward(y, params, lengths)
    n, t_max, _ = f.alpha.shape
    m, l = params.num_chains, params.num_states
    states = joint_states(m, l, y.device)  # (S_joint, M)
    last = (f.lengths - 1).clamp_min(0)
    rows = torch.arange(n, device=y.device)
    probs = f.alpha[rows, last]  # (N, S_joint): p(s_T | y)
    c = torch.multinomial(probs, num_samples, replacement=True, generator=generator).T  # (draws, N)
    path = torch.zeros(num_samples, n, t_max, dtype=torch.long, device=y.device)
    path[:, rows, last] = c
    for t in range(t_max - 2, -1, -1):
        inside = t < last  # (N,): step t + 1 is inside, so s_t is drawn given s_{t+1}
        nxt = path[:, :, t + 1]  # (draws, N) joint indices
        # A(c -> c') for every c and the drawn c': prod over chains of trans[k, c_k, c'_k]: (draws, N, S_joint)
        a = f.alpha.new_ones(num_samples, n, states.shape[0])
        for k in range(m):
            a = a * f.trans[k][states[:, k]][:, states[nxt, k]].permute(1, 2, 0)
        w = f.alpha[:, t] * a
        drawn = torch.multinomial(w.reshape(-1, w.shape[-1]), 1, generator=generator).reshape(num_samples, n)
        path[:, :, t] = torch.where(inside, drawn, path[:, :, t])
    out = states[path].movedim(-1, 1)  # (draws, M, N, T)
    return out * f.mask[None, None]


def _pairwise(alpha: Tensor, g: Tensor, trans: Tensor) -> Tensor:
    """p(s_t^m = i, s_{t+1}^m = j | y): (N, T-1, M, L, L), all t at once.

    p(c_t, c_{t+1} | y) = alpha_t(c_t) prod_k A_k(c_t^k, c_{t+1}^k) g_{t+1}(c_{t+1}), g = e beta / norm (scaled).
    For chain m: push alpha_t through every other chain's transition, then pair chain m's axis of the result
    with chain m's axis of g_{t+1}, summing the others (a batched matrix product): O(S L) per step and
    chain, never S x S."""
    n, t_max, s = alpha.shape
    m, l, _ = trans.shape
    if t_max == 1:
        return alpha.new_zeros(n, 0, m, l, l)
    a = alpha[:, :-1].reshape(-1, s)  # (N (T-1), S)
    g = g[:, 1:].reshape((-1,) + (l,) * m)
    eye = torch.eye(l, dtype=trans.dtype, device=trans.device)
    out = []
    for i in range(m):
        others = torch.stack([trans[k] if k != i else eye for k in range(m)])
        pushed = _push(a, others).reshape((-1,) + (l,) * m)  # chain i still at time t, the others at t+1
        pa = pushed.movedim(i + 1, -1).reshape(pushed.shape[0], -1, l)  # (B, rest, L_t)
        pg = g.movedim(i + 1, -1).reshape(pushed.shape[0], -1, l)  # (B, rest, L_{t+1})
        out.append(pa.transpose(1, 2) @ pg * trans[i])  # (B, L, L)
    return torch.stack(out, 1).reshape(n, t_max - 1, m, l, l)


def log_evidence(y: Tensor, params: FHMMParams, lengths: Tensor | None = None) -> Tensor:
    """sum_n log p(y_n): a scalar."""
    return forward_backward(y, params, lengths).log_evidence.sum()


# --------------------------------------------------------------------------- variational families


class Variational(NamedTuple):
    """A q(s) = prod_m q(s^m_{1:T}) in either mean-field family, by the tables the ELBO needs.

    marginals: (N, T, M, L) q(s_t^m = l); pairwise: (N, T-1, M, L, L) q(s_t^m = i, s_{t+1}^m = j)
    (the outer product of marginals for the completely factorised family); entropy: (N,) H[q(s_n)].
    Entries past a sequence's end are ignored."""

    marginals: Tensor
    pairwise: Tensor
    entropy: Tensor


def factorised(probs: Tensor, lengths: Tensor) -> Variational:
    """The completely factorised q(s) = prod_t prod_m q(s_t^m) from probs: (N, T, M, L)."""
    mask = step_mask(lengths, probs.shape[1])
    pairwise = probs[:, :-1, :, :, None] * probs[:, 1:, :, None, :] * mask[:, 1:, None, None, None]  # zero past ends
    entropy = -(torch.special.xlogy(probs, probs).sum((-1, -2)) * mask).sum(1)
    return Variational(probs, pairwise, entropy)


class ChainPosterior(NamedTuple):
    """log_normaliser: (B,); marginals: (B, T, L); pairwise: (B, T-1, L, L) (zero past each end)."""

    log_normaliser: Tensor
    marginals: Tensor
    pairwise: Tensor


def chain_forward_backward(log_init: Tensor, log_trans: Tensor, log_unary: Tensor, lengths: Tensor) -> ChainPosterior:
    """q(s_{1:T}) proportional to exp(log_init[s_1] + sum_t log_trans[s_t, s_{t+1}] + sum_t log_unary[t, s_t]) for
    a batch of independent L-state chains: log_init (B, L), log_trans (B, L, L), log_unary (B, T, L), lengths (B,).

    Differentiable (plain torch ops): the structured guides use it inside SVI. Steps past a chain's end
    contribute nothing."""
    b, t_max, l = log_unary.shape
    keep = step_mask(lengths, t_max)
    alphas = [log_init + log_unary[:, 0]]
    for t in range(1, t_max):
        new = torch.logsumexp(alphas[-1][:, :, None] + log_trans, 1) + log_unary[:, t]
        alphas.append(torch.where(keep[:, t, None], new, alphas[-1]))
    log_alpha = torch.stack(alphas, 1)
    log_z = torch.logsumexp(log_alpha[torch.arange(b, device=lengths.device), lengths - 1], -1)
    betas = [log_unary.new_zeros(b, l)]
    for t in range(t_max - 2, -1, -1):
        new = torch.logsumexp(log_trans + (betas[-1] + log_unary[:, t + 1])[:, None, :], -1)
        betas.append(torch.where(keep[:, t + 1, None], new, betas[-1]))
    log_beta = torch.stack(betas[::-1], 1)
    marginals = torch.exp(log_alpha + log_beta - log_z[:, None, None]) * keep[..., None]
    log_xi = (log_alpha[:, :-1, :, None] + log_trans[:, None] + (log_beta + log_unary)[:, 1:, None, :]) - log_z[:, None, None, None]
    pairwise = torch.exp(log_xi) * keep[:, 1:, None, None]
    return ChainPosterior(log_z, marginals, pairwise)


def structured(log_init: Tensor, log_trans: Tensor, log_unary: Tensor, lengths: Tensor) -> Variational:
    """The structured family: independent chains, q(s^m) proportional to exp(log_init_m[s_1] + sum_t
    log_trans_m[s_t, s_{t+1}] + sum_t h_t^m[s_t]); log_init (M, L) or (N, M, L), log_trans (M, L, L) or
    (N, M, L, L), log_unary h: (N, T, M, L). Entropy H = log Z - E_q[log potentials]."""
    n, t_max, m, l = log_unary.shape
    log_init = torch.log_softmax(log_init, -1).expand(n, m, l)
    log_trans = torch.log_softmax(log_trans, -1).expand(n, m, l, l)
    mask = step_mask(lengths, t_max)
    post = chain_forward_backward(
        log_init.reshape(n * m, l), log_trans.reshape(n * m, l, l),
        log_unary.transpose(1, 2).reshape(n * m, t_max, l), lengths.repeat_interleave(m),
    )
    marginals = post.marginals.reshape(n, m, t_max, l).transpose(1, 2)
    pairwise = post.pairwise.reshape(n, m, t_max - 1, l, l).transpose(1, 2)
    energy = (marginals[:, 0] * log_init).sum((-1, -2)) + (pairwise * log_trans[:, None]).sum((1, 2, 3, 4))
    energy = energy + ((marginals * log_unary).sum((-1, -2)) * mask).sum(1)
    entropy = post.log_normaliser.reshape(n, m).sum(1) - energy
    return Variational(marginals, pairwise, entropy)


def _gaussian_terms(params: FHMMParams) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """C^{-1}: (D, D); P W_m[l]: (M, L, D); W_m[l]^T P W_m[l]: (M, L); and log|2 pi C| (scalar)."""
    chol = torch.linalg.cholesky(params.cov)
    prec = torch.cholesky_inverse(chol)
    pw = params.weights @ prec  # (M, L, D)
    quad = (pw * params.weights).sum(-1)
    log_det = 2 * torch.log(torch.diagonal(chol)).sum() + params.cov.shape[0] * torch.log(prec.new_tensor(2 * torch.pi))
    return prec, pw, quad, log_det


def expected_log_emission(y: Tensor, params: FHMMParams, probs: Tensor, chain: int | None = None) -> Tensor:
    """Expectations of log p(y_t | s_t) under the product q(s_t) = prod_m probs[:, t, m] (N, T, M, L).

    chain None: E_q[log p(y_t | s_t)]: (N, T). chain m: E over the other chains with s_t^m = l fixed:
    (N, T, L). Gaussian: in closed form (Ghahramani & Jordan), O(M L D) per step, no L^M table.
    Bernoulli: the (N, T, S) log-likelihood table contracted chain by chain with q (no closed form)."""
    m, l = params.num_chains, params.num_states
    if params.bias is None:
        prec, pw, quad, log_det = _gaussian_terms(params)
        means = torch.einsum("ntml,mld->ntmd", probs, params.weights)  # E[W_m s^m]: (N, T, M, D)
        # tr(P Cov_m) for the categorical s^m: sum_l q_l W_l^T P W_l - (E W s)^T P (E W s)
        var = (probs * quad).sum(-1) - torch.einsum("ntmd,de,ntme->ntm", means, prec, means)
        if chain is None:
            r = y - means.sum(2)
            return -0.5 * (torch.einsum("ntd,de,nte->nt", r, prec, r) + var.sum(-1) + log_det)
        r = y - means.sum(2) + means[:, :, chain]  # y minus the other chains' means: (N, T, D)
        mahal = torch.einsum("ntd,de,nte->nt", r, prec, r)[..., None] - 2 * r @ pw[chain].T + quad[chain]
        return -0.5 * (mahal + (var.sum(-1) - var[:, :, chain])[..., None] + log_det)
    check_joint_size(m, l)
    table = emission_log_prob(y, params).reshape(y.shape[:2] + (l,) * m)  # (N, T, L, ..., L)
    for k in reversed(range(m)):  # contract the last axes first so the remaining axes keep their places
        if k == chain:
            continue
        table = torch.einsum("nt...l,ntl->nt...", table.movedim(k + 2, -1), probs[:, :, k])
    return table


def elbo(y: Tensor, params: FHMMParams, q: Variational, lengths: Tensor | None = None) -> Tensor:
    """ELBO(q) = E_q[log p(y, s)] + H[q] per sequence: (N,), in closed form (Gaussian) or by contracting the
    emission table with q (Bernoulli). Differentiable in params and q."""
    y, lengths = _lengths(y, lengths)
    mask = step_mask(lengths, y.shape[1])
    log_init = torch.log_softmax(params.init_logits, -1)
    log_trans = torch.log_softmax(params.trans_logits, -1)
    emit = (expected_log_emission(y, params, q.marginals) * mask).sum(1)
    prior = (q.marginals[:, 0] * log_init).sum((-1, -2))
    prior = prior + (torch.einsum("ntmij,mij->nt", q.pairwise, log_trans) * mask[:, 1:]).sum(1)
    return emit + prior + q.entropy


def kl(y: Tensor, params: FHMMParams, q: Variational, lengths: Tensor | None = None) -> Tensor:
    """KL(q || p(s | y)) per sequence: (N,) = log p(y) - ELBO(q) (forward-backward for log p(y))."""
    return forward_backward(y, params, lengths).log_evidence - elbo(y, params, q, lengths)


# --------------------------------------------------------------------------- fixed-point updates


class MeanFieldFit(NamedTuple):
    """q: the fitted Variational; elbo: ELBO summed over sequences after each sweep (list, monotone);
    num_sweeps; converged."""

    q: Variational
    elbo: list[float]
    num_sweeps: int
    converged: bool


def random_start(y: Tensor, params: FHMMParams, generator: torch.Generator) -> Tensor:
    """Random starting marginals (N, T, M, L) for :func:`fit_mean_field`: softmax(3 eps), eps ~ N(0, 1), so
    starts spread towards the simplex's corners as well as its middle."""
    shape = (y.shape[0], y.shape[1], params.num_chains, params.num_states)
    return torch.softmax(3 * torch.randn(shape, generator=generator, dtype=y.dtype, device=generator.device).to(y.device), -1)


def fit_mean_field(
    y: Tensor, params: FHMMParams, family: str = "factorised", lengths: Tensor | None = None,
    max_sweeps: int = 200, tol: float = 1e-10, init: Tensor | None = None,
) -> MeanFieldFit:
    """Ghahramani & Jordan's fixed-point updates: coordinate ascent on the ELBO within one family, at
    fixed model parameters.

    factorised: for each chain m, q(s_t^m) = softmax(E_{-m}[log p(y_t | s_t)] + E[log A_m[s_{t-1}, .]] +
        E[log A_m[., s_{t+1}]]), first at every even t, then every odd t (the steps of one parity do not
        interact, so each half-sweep is an exact coordinate update).
    structured: for each chain m, q(s^m) = the chain's own prior times exp(h_t^m), h_t^m = E_{-m}[log p(y_t
        | s_t)]: one L-state forward-backward per chain; O(M) per sweep where exact inference is O(L^M).
    Every update maximises the ELBO over its block, so the ELBO never decreases. Stops when a sweep gains
    less than ``tol`` (relative). init: starting marginals (N, T, M, L); default uniform.
    """
    if family not in ("factorised", "structured"):
        raise ValueError(f"family must be 'factorised' or 'structured', got {family!r}")
    y, lengths = _lengths(y, lengths)
    n, t_max, _ = y.shape
    m, l = params.num_chains, params.num_states
    mask = step_mask(lengths, t_max)
    log_init = torch.log_softmax(params.init_logits, -1)
    log_trans = torch.log_softmax(params.trans_logits, -1)
    probs = y.new_full((n, t_max, m, l), 1.0 / l) if init is None else init.clone()
    unary = y.new_zeros(n, t_max, m, l)

    def sweep(q: Variational) -> tuple[Variational, float]:  # updates probs (and unary) in place
        for c in range(m):
            h = expected_log_emission(y, params, probs, chain=c) * mask[..., None]  # (N, T, L)
            if family == "structured":
                unary[:, :, c] = h
                post = chain_forward_backward(log_init[c].expand(n, l), log_trans[c].expand(n, l, l), h, lengths)
                probs[:, :, c] = torch.where(mask[..., None], post.marginals, 1.0 / l)
                continue
            for parity in (0, 1):
                logits = h.clone()
                logits[:, 0] += log_init[c]
                logits[:, 1:] += (probs[:, :-1, c] @ log_trans[c]) * mask[:, 1:, None]
                logits[:, :-1] += (probs[:, 1:, c] @ log_trans[c].T) * mask[:, 1:, None]
                new = torch.softmax(logits, -1)
                probs[:, parity::2, c] = torch.where(mask[:, parity::2, None], new[:, parity::2], 1.0 / l)
        q = structured(params.init_logits, params.trans_logits, unary, lengths) if family == "structured" else factorised(probs, lengths)
        return q, float(elbo(y, params, q, lengths).sum())

    run = em.iterate(sweep, factorised(probs, lengths), max_iter=max_sweeps, tol=tol, rule="relative",
                     name="fhmm.fit_mean_field")
    return MeanFieldFit(run.state, run.trace, len(run.trace), run.converged)


# --------------------------------------------------------------------------- exact EM


class VariationalEMFit(NamedTuple):
    """params; elbo: sum_n ELBO_n / N after each E-step (list, monotone); num_iters; converged."""

    params: FHMMParams
    elbo: list[float]
    num_iters: int
    converged: bool


def fit_variational_em(y: Tensor, init: FHMMParams, family: str = "structured", max_iter: int = 100, tol: float = 1e-8,
                       lengths: Tensor | None = None, sweeps: int = 20) -> VariationalEMFit:
    """Ghahramani & Jordan's learning algorithm: E-step = the family's fixed point (:func:`fit_mean_field`,
    warm-started from the previous q), M-step = :func:`m_step` with q in place of the posterior. Both steps
    raise the ELBO (the Bernoulli M-step is a generalised one). Gaussian: no L^M table anywhere."""
    y, lengths = _lengths(y, lengths)

    def step(state: tuple[FHMMParams, Variational | None]) -> tuple[tuple[FHMMParams, Variational], float]:
        params, q = state  # q: the previous E-step's fixed point, whose M-step is still to come
        if q is not None:
            params = m_step(y, q, params, lengths)
        fit = fit_mean_field(y, params, family, lengths, max_sweeps=sweeps, init=None if q is None else q.marginals)
        return (params, fit.q), fit.elbo[-1] / y.shape[0]

    def final(state: tuple[FHMMParams, Variational | None], converged: bool) -> tuple[tuple[FHMMParams, None], None]:
        params, q = state  # out of iterations: the last E-step's M-step is taken (and not scored)
        return (params if converged or q is None else m_step(y, q, params, lengths), None), None

    run = em.iterate(step, (init, None), max_iter=max_iter, tol=tol, rule="relative", final=final,
                     name="fhmm.fit_variational_em")
    return VariationalEMFit(run.state[0], run.trace, len(run.trace), run.converged)


class EMFit(NamedTuple):
    """params; log_likelihood: sum_n log p(y_n) / N before each M-step and at the end (list, monotone);
    num_iters; converged."""

    params: FHMMParams
    log_likelihood: list[float]
    num_iters: int
    converged: bool


def m_step(y: Tensor, post: Posterior | Variational, params: FHMMParams, lengths: Tensor, bernoulli_iters: int = 25) -> FHMMParams:
    """Maximise E_q[log p(y, s)] over the parameters, for q the exact posterior (EM) or a mean-field q
    (variational EM: the M-step of Ghahramani & Jordan's learning algorithm; it raises the ELBO).

    pi_m and A_m: normalised expected counts. Gaussian (Ghahramani & Jordan): with s_t the concatenated
    one-hot states (M L,), W = (sum_t E[s_t s_t^T])^+ sum_t E[s_t] y_t^T and C = (sum_t y_t y_t^T - sum_t
    y_t E[s_t]^T W) / sum_n T_n, from the joint table (the cross-chain terms of E[s s^T] need it).
    Bernoulli: no closed form; the expected log-likelihood is concave in (W, b) (a logistic regression
    on the L^M joint states with soft counts), so L-BFGS with a Wolfe line search from the current values
    raises it: a generalised EM step.

    ``y`` may be NaN-padded past each sequence's end (``lengths``): the padding is zeroed here (a NaN inside a
    sequence is a ValueError)."""
    y, lengths = _padding_zeroed(y, lengths)
    mask = step_mask(lengths, y.shape[1])
    m, l = params.num_chains, params.num_states
    dtype = y.dtype
    init_counts = post.marginals[:, 0].sum(0)  # (M, L)
    trans_counts = post.pairwise.sum((0, 1))  # (M, L, L)
    tiny = torch.finfo(dtype).tiny  # a state never visited keeps a finite (very negative) logit
    init_logits = torch.log((init_counts / init_counts.sum(-1, keepdim=True)).clamp_min(tiny))
    rows = trans_counts.sum(-1, keepdim=True)
    trans_logits = torch.where(rows > 0, torch.log((trans_counts / rows.clamp_min(tiny)).clamp_min(tiny)), params.trans_logits)
    if params.bias is None:
        theta = post.marginals * mask[..., None, None]  # (N, T, M, L)
        esy = torch.einsum("ntml,ntd->mld", theta, y).reshape(m * l, -1)  # sum_t E[s_t] y_t^T: (M L, D)
        if isinstance(post, Posterior):  # cross-chain terms of E[s s^T] from the joint table
            onehot = torch.nn.functional.one_hot(joint_states(m, l, y.device), l).to(dtype).reshape(-1, m * l)  # (S, M L)
            ess = onehot.T @ (post.joint.sum((0, 1))[:, None] * onehot)
        else:  # chains independent under q: E[s^m s^k^T] = theta^m theta^k^T (k != m), diag(theta^m) (k = m)
            flat = theta.reshape(-1, m * l)
            ess = flat.T @ flat
            diag = torch.block_diag(*[torch.diag(theta[..., c, :].sum((0, 1))) for c in range(m)])
            own = torch.block_diag(*[flat[:, c * l : (c + 1) * l].T @ flat[:, c * l : (c + 1) * l] for c in range(m)])
            ess = ess - own + diag
        # E[s s^T] is singular (each chain's one-hot sums to 1: W is defined up to per-chain offsets that
        # cancel in sum_m W_m[s^m]); the pseudo-inverse cuts those exact null directions (rtol), which
        # round-off would otherwise blow up into huge offsets
        w = torch.linalg.pinv(ess, hermitian=True, rtol=1e-10) @ esy
        yy = torch.einsum("ntd,nte->de", y * mask[..., None], y)
        cross = esy.T @ w
        # the expected residual covariance at this W (equal to G & J's (yy - esy^T W) / T at the exact optimum)
        cov = (yy - cross - cross.T + w.T @ ess @ w) / lengths.sum()
        cov = 0.5 * (cov + cov.T)
        return FHMMParams(init_logits, trans_logits, w.reshape(m, l, -1), cov=cov)
    states = joint_states(m, l, y.device)
    joint = post.joint if isinstance(post, Posterior) else _product_joint(post.marginals) * mask[..., None]
    weight = joint.sum((0, 1))  # (S,)
    y_joint = torch.einsum("nts,ntd->sd", joint, y)  # (S, D): sum_t q(s_t = c) y_t
    weights = params.weights.detach().clone().requires_grad_(True)
    bias = params.bias.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([weights, bias], max_iter=bernoulli_iters, line_search_fn="strong_wolfe", tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        logits = weights[torch.arange(m, device=states.device), states].sum(1) + bias  # (S, D)
        q = (y_joint * torch.nn.functional.logsigmoid(logits) + (weight[:, None] - y_joint) * torch.nn.functional.logsigmoid(-logits)).sum()
        (-q).backward()
        return -q

    opt.step(closure)
    return FHMMParams(init_logits, trans_logits, weights.detach(), bias=bias.detach())


def _product_joint(marginals: Tensor) -> Tensor:
    """q(s_t = c) = prod_m q(s_t^m = c_m): (N, T, S) from marginals (N, T, M, L)."""
    m, l = marginals.shape[2:]
    check_joint_size(m, l)
    return marginals[:, :, torch.arange(m, device=marginals.device), joint_states(m, l, marginals.device)].prod(-1)


def fit_em(y: Tensor, init: FHMMParams, max_iter: int = 100, tol: float = 1e-8, lengths: Tensor | None = None) -> EMFit:
    """Baum-Welch on the joint state space: E-step by forward-backward, M-step by :func:`m_step`.
    The log-likelihood never decreases (tested). Stops when an iteration gains less than ``tol`` per
    sequence, relative to |log p|."""
    y, lengths = _lengths(y, lengths)
    n = y.shape[0]

    def step(state: tuple[FHMMParams, Posterior | None]) -> tuple[tuple[FHMMParams, Posterior], float]:
        params, post = state  # post: the previous E-step, whose M-step is still to come
        if post is not None:
            params = m_step(y, post, params, lengths)
        post = forward_backward(y, params, lengths)
        return (params, post), float(post.log_evidence.sum()) / n

    def final(state: tuple[FHMMParams, Posterior | None], converged: bool) -> tuple[tuple[FHMMParams, None], float | None]:
        params, post = state
        if converged:
            return (params, None), None
        if post is not None:  # out of iterations: take the last M-step and score it
            params = m_step(y, post, params, lengths)
        return (params, None), float(log_evidence(y, params, lengths)) / n

    run = em.iterate(step, (init, None), max_iter=max_iter, tol=tol, rule="relative", final=final, name="fhmm.fit_em")
    return EMFit(run.state[0], run.trace, len(run.trace) - 1, run.converged)


def brute_force(y: Tensor, params: FHMMParams, length: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """For ONE sequence y: (T, D), by enumerating all S^T joint paths (tiny cases only: a test reference,
    independent of the recursions above): log p(y); p(s_t^m = l | y): (T, M, L);
    p(s_t^m = i, s_{t+1}^m = j | y): (T-1, M, L, L); every path (P, T, M) and its log p(path | y) (P,)."""
    m, l = params.num_chains, params.num_states
    states = joint_states(m, l)
    log_e = emission_log_prob(y[None, :length], params)[0]  # (T, S)
    log_init = torch.log_softmax(params.init_logits, -1)
    log_trans = torch.log_softmax(params.trans_logits, -1)
    scores, paths = [], []
    for path in itertools.product(range(states.shape[0]), repeat=length):
        c = states[list(path)]  # (T, M)
        score = log_init[torch.arange(m), c[0]].sum() + log_e[0, path[0]]
        for t in range(1, length):
            score = score + log_trans[torch.arange(m), c[t - 1], c[t]].sum() + log_e[t, path[t]]
        scores.append(score)
        paths.append(c)
    scores_t = torch.stack(scores)
    log_z = torch.logsumexp(scores_t, 0)
    weights = torch.exp(scores_t - log_z)
    onehot = torch.nn.functional.one_hot(torch.stack(paths), l).to(y.dtype)  # (P, T, M, L)
    marginals = torch.einsum("p,ptml->tml", weights, onehot)
    pairwise = torch.einsum("p,ptmi,ptmj->tmij", weights, onehot[:, :-1], onehot[:, 1:])
    return log_z, marginals, pairwise, torch.stack(paths), scores_t - log_z


def brute_force_kl(q: Variational, n: int, y: Tensor, params: FHMMParams, length: int) -> Tensor:
    """KL(q(s) || p(s | y)) for sequence n, summed over all S^T joint paths (tiny cases only). q's
    probability of a path is read from its marginals and pairwise tables alone (any product of chains:
    q(path) = prod_m q(c_1^m) prod_t q(c_t^m, c_{t+1}^m) / q(c_t^m)), so this does not use q.entropy."""
    _, _, _, paths, log_post = brute_force(y, params, length)
    m = params.num_chains
    theta, xi = q.marginals[n, :length], q.pairwise[n, : length - 1]
    chains = torch.arange(m)
    t_idx = torch.arange(length - 1)
    log_q = torch.log(theta[0, chains, paths[:, 0]]).sum(-1)  # (P,)
    if length > 1:
        prev, nxt = paths[:, :-1], paths[:, 1:]  # (P, T-1, M)
        log_q = log_q + (torch.log(xi[t_idx[:, None], chains, prev, nxt]) - torch.log(theta[t_idx[:, None], chains, prev])).sum((1, 2))
    q_path = torch.exp(log_q)
    return torch.where(q_path > 0, q_path * (log_q - log_post), 0.0).sum()
