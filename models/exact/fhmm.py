r"""Exact inference for the factorial HMM (Ghahramani & Jordan 1997) on the joint state space; plain torch.

M chains m = 1..M of L states each; sequences n = 1..N of lengths T_n <= T (padded to T)::

    s_1^m ~ Cat(pi_m),   s_t^m | s_{t-1}^m ~ Cat(A_m[s_{t-1}^m])          (independent chains)
    Gaussian:   y_t | s_t ~ N(sum_m W_m[s_t^m], C)                        W: (M, L, D), C: (D, D)
    Bernoulli:  y_t | s_t ~ Bern(sigmoid(sum_m W_m[s_t^m] + b))           b: (D,)

Joint states are the S = L^M configurations c = (c_1, ..., c_M), in row-major order (chain 1 slowest).
The forward-backward recursions run in log space over S states, vectorised over sequences, and apply
the factored transition one chain at a time (a logsumexp over that chain's axis of the (L,)*M view):
O(T N M L^(M+1)) time instead of the O(T N L^(2M)) of a dense S x S transition, and never an S x S
matrix in memory. Time is the only Python loop (the recursion is sequential in t).
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import Tensor

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


def check_joint_size(num_chains: int, num_states: int) -> int:
    """S = L^M, or a ValueError naming the limit when exact inference would need too many joint states."""
    s = num_states**num_chains
    if s > MAX_JOINT_STATES:
        raise ValueError(
            f"exact inference needs L^M = {num_states}^{num_chains} = {s:,} joint states; the limit is "
            f"{MAX_JOINT_STATES:,}: use fewer chains or states, or a mean-field guide without the exact reference"
        )
    return s


def joint_states(num_chains: int, num_states: int) -> Tensor:
    """(S, M) long: every joint configuration, row-major (chain 1 slowest)."""
    return torch.tensor(list(itertools.product(range(num_states), repeat=num_chains)), dtype=torch.long).reshape(-1, num_chains)


def emission_log_prob(y: Tensor, params: FHMMParams) -> Tensor:
    """log p(y_nt | joint state c): (N, T, S) for y: (N, T, D)."""
    m, l = params.num_chains, params.num_states
    check_joint_size(m, l)
    states = joint_states(m, l)
    mean = params.weights[torch.arange(m), states].sum(1)  # (S, D): sum_m W_m[c_m]
    if params.bias is not None:
        logits = mean + params.bias
        return y @ torch.nn.functional.logsigmoid(logits).T + (1 - y) @ torch.nn.functional.logsigmoid(-logits).T
    chol = torch.linalg.cholesky(params.cov)
    d = y.shape[-1]
    diff = y[:, :, None, :] - mean  # (N, T, S, D)
    z = torch.linalg.solve_triangular(chol, diff.unsqueeze(-1), upper=False).squeeze(-1)
    log_det = 2 * torch.log(torch.diagonal(chol)).sum()
    return -0.5 * ((z**2).sum(-1) + log_det + d * torch.log(torch.tensor(2 * torch.pi, dtype=y.dtype)))


def _transition(log_alpha: Tensor, log_trans: Tensor) -> Tensor:
    """sum over previous joint states of alpha(c') A(c' -> c), chain by chain: (N, S) -> (N, S)."""
    n = log_alpha.shape[0]
    m, l, _ = log_trans.shape
    a = log_alpha.reshape((n,) + (l,) * m)
    for i in range(m):
        a = a.movedim(i + 1, -1)  # chain i last: (..., L_prev)
        a = torch.logsumexp(a.unsqueeze(-1) + log_trans[i], dim=-2)  # (..., L_next)
        a = a.movedim(-1, i + 1)
    return a.reshape(n, -1)


def _transition_back(log_beta: Tensor, log_trans: Tensor) -> Tensor:
    """sum over next joint states of A(c -> c') beta(c'), chain by chain: (N, S) -> (N, S)."""
    n = log_beta.shape[0]
    m, l, _ = log_trans.shape
    b = log_beta.reshape((n,) + (l,) * m)
    for i in range(m):
        b = b.movedim(i + 1, -1)  # (..., L_next)
        b = torch.logsumexp(b.unsqueeze(-2) + log_trans[i], dim=-1)  # (..., L_prev)
        b = b.movedim(-1, i + 1)
    return b.reshape(n, -1)


class Posterior(NamedTuple):
    """log_evidence: (N,) log p(y_n); marginals: (N, T, M, L) p(s_t^m = l | y_n) (zero beyond T_n);
    joint: (N, T, S) p(s_t = c | y_n)."""

    log_evidence: Tensor
    marginals: Tensor
    joint: Tensor


def _lengths(y: Tensor, lengths: Tensor | None) -> Tensor:
    if lengths is None:
        return torch.full((y.shape[0],), y.shape[1], dtype=torch.long)
    return lengths


def forward_backward(y: Tensor, params: FHMMParams, lengths: Tensor | None = None) -> Posterior:
    """Exact posterior of the factorial HMM for y: (N, T, D) (padded; ``lengths``: (N,), default all T)."""
    n, t_max, _ = y.shape
    m, l = params.num_chains, params.num_states
    lengths = _lengths(y, lengths)
    log_e = emission_log_prob(y, params)  # (N, T, S)
    log_init = torch.log_softmax(params.init_logits, -1)
    log_trans = torch.log_softmax(params.trans_logits, -1)
    states = joint_states(m, l)
    log_prior = log_init[torch.arange(m), states].sum(-1)  # (S,)
    alphas = []
    a = log_prior + log_e[:, 0]
    alphas.append(a)
    for t in range(1, t_max):
        new = _transition(a, log_trans) + log_e[:, t]
        a = torch.where((t < lengths)[:, None], new, a)  # past its end a sequence keeps its last alpha
        alphas.append(a)
    log_alpha = torch.stack(alphas, 1)  # (N, T, S)
    log_evidence = torch.logsumexp(log_alpha[torch.arange(n), lengths - 1], -1)
    b = torch.zeros(n, l**m, dtype=y.dtype)
    betas = [b]
    for t in range(t_max - 2, -1, -1):
        new = _transition_back(b + log_e[:, t + 1], log_trans)
        b = torch.where((t + 1 < lengths)[:, None], new, b)  # zero (log 1) until the sequence's last step
        betas.append(b)
    log_beta = torch.stack(betas[::-1], 1)
    joint = torch.exp(log_alpha + log_beta - log_evidence[:, None, None])
    joint = joint * (torch.arange(t_max)[None, :] < lengths[:, None])[..., None]
    onehot = torch.nn.functional.one_hot(states, l).to(y.dtype)  # (S, M, L)
    marginals = torch.einsum("nts,sml->ntml", joint, onehot)
    return Posterior(log_evidence, marginals, joint)


def log_evidence(y: Tensor, params: FHMMParams, lengths: Tensor | None = None) -> Tensor:
    """sum_n log p(y_n): a scalar."""
    return forward_backward(y, params, lengths).log_evidence.sum()


def brute_force(y: Tensor, params: FHMMParams, length: int) -> tuple[Tensor, Tensor]:
    """log p(y) and p(s_t^m = l | y): (T, M, L) for ONE sequence y: (T, D), by enumerating all S^T
    joint paths (tiny cases only: a test reference, independent of the recursions above)."""
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
    return log_z, torch.einsum("p,ptml->tml", weights, onehot)
