r"""Exact inference for the log-linear part-of-speech tagger (Berg-Kirkpatrick et al. 2010); plain torch.

A hidden Markov model over K tags whose emissions are log-linear in word features. For sentences n = 1..N
of lengths T_n <= T (padded to T), words w_{n,i} in a vocabulary of V types::

    t_{n,1} ~ Cat(pi)                          pi: (K,)       softmax(init_logits)
    t_{n,i+1} | t_{n,i} ~ Cat(A[t_{n,i}])      A: (K, K)      softmax(trans_logits), row = previous tag
    w_{n,i} | t_{n,i} ~ Cat(theta[:, t_{n,i}]),  theta[v, k] = exp(f(v) . W[:, k]) / sum_v' exp(f(v') . W[:, k])

f(v) in {0,1}^F is the indicator of word v's features (its identity, its suffixes of length 1-3, whether it
is capitalised, holds a digit, holds a hyphen), W: (F, K) one weight per feature and tag. The softmax runs
over the whole vocabulary, so features shared by words (a suffix "-ing") tie their emission probabilities.
Priors (MAP): rows of A ~ Dir(concentration), W ~ N(0, weight_scale^2) elementwise (0: no prior).

**Data layout.** Sentences travel as one (N, T, 7) float tensor of integer ids, NaN rows past each end
(:func:`models.exact.fhmm.sequence_lengths` reads the lengths): for each token, the columns :data:`COLUMNS`,
the word's id and the id of each of its features within that feature's kind (the flags are 0 or 1). The
vocabulary, and each word's features, are read back from the tokens (:func:`vocabulary`), so the data carry
everything the model needs. The parameters carry the (V, J) table of each word's global feature ids
(:func:`feature_table`; -1 where a kind is switched off or unknown).

**Exact inference** (:func:`forward_backward`): the scaled forward-backward recursions (Rabiner 1989),
vectorised over sentences: sentences are sorted by length and cut into chunks, each chunk trimmed to its own
longest sentence, and the only Python loop is over the time steps of a chunk. It returns log p(w_n), the tag
marginals and each sentence's expected transition counts, computed as one batched matrix product (never an
(N, T, K, K) table). The same routine, with a guide's pseudo-emissions, gives a chain-structured q
(:func:`chain`), differentiably.

**Variational families** (:class:`Variational`: marginals, expected transition counts, entropy): the fully
factorised q(t) = prod_i q(t_i) (:func:`factorised`), a Markov chain with free pseudo-emissions
(:func:`chain`; it contains the exact posterior, :func:`posterior`), and their ELBO in closed form
(:func:`elbo`)::

    ELBO_n(q) = sum_i sum_k q_i(k) log theta[w_i, k] + sum_k q_1(k) log pi_k + sum_jk E_q[n_jk] log A_jk + H[q]

**Fits**, all on :func:`models.exact.em.iterate`: the factorised family's coordinate ascent
(:func:`fit_mean_field`: each q_i = softmax(log theta[w_i] + q_{i-1} log A + log A q_{i+1}), even steps then
odd steps), EM (:func:`fit_em`: Baum-Welch; the M-step is closed form for pi and A and, for W, L-BFGS on
the expected complete-data log-likelihood, concave in W, as Berg-Kirkpatrick et al.'s Algorithm 1), and
variational Bayes for the Dirichlet transitions (:func:`fit_vb`, Johnson 2007: q(A) Dirichlet per row).
:func:`brute_force` enumerates every tag path of one short sentence, the tests' reference.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from . import em
from .fhmm import sequence_lengths, step_mask

COLUMNS = ("word", "suffix1", "suffix2", "suffix3", "capitalised", "digit", "hyphen")
"""The columns of a token (and the feature kinds): the word's id, then the id of each of its features."""
FEATURES = COLUMNS
CHUNK = 1024  # sentences per forward-backward chunk (sorted by length, each chunk trimmed to its longest)


class TaggerParams(NamedTuple):
    """init_logits: (K,); trans_logits: (K, K) (row = previous tag); weights: (F, K); features: (V, J) long, the
    global feature ids of each word (-1: none); concentration, weight_scale: () the priors' hyperparameters
    (Dirichlet on the rows of A; Gaussian scale of W, 0 for none), fixed. Logits are normalised on use."""

    init_logits: Tensor
    trans_logits: Tensor
    weights: Tensor
    features: Tensor
    concentration: Tensor
    weight_scale: Tensor

    @property
    def num_tags(self) -> int:
        return self.init_logits.shape[-1]

    @property
    def vocab_size(self) -> int:
        return self.features.shape[0]

    def detach(self) -> "TaggerParams":
        return TaggerParams(*(t.detach().clone() for t in self))

    def to(self, dtype: torch.dtype) -> "TaggerParams":
        return TaggerParams(*(t if t.dtype == torch.long else t.to(dtype) for t in self))

    def state_dict(self) -> dict[str, Tensor]:
        """Plain tensors, loadable with ``torch.load(..., weights_only=True)``."""
        return {k: v.detach().clone() for k, v in self._asdict().items()}


# --------------------------------------------------------------------------- tokens, vocabulary, features


def word_ids(x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(words (N, T) long, 0 past each end; lengths (N,); mask (N, T) bool) from tokens x: (N, T, 7)."""
    if lengths is None:
        lengths = sequence_lengths(x)
    mask = step_mask(lengths, x.shape[1])
    words = torch.where(mask, torch.nan_to_num(x[..., 0], nan=0.0), 0.0).long()
    return words, lengths, mask


def vocabulary(x: Tensor) -> Tensor:
    """(V, 7) long: the columns of each word id 0..V-1 (V = the largest id + 1), read from the tokens; -1 in
    every feature column of an id that no token holds. Raises ValueError when two tokens of one word disagree
    on a feature (the features are a function of the word)."""
    lengths = sequence_lengths(x)
    rows = x[step_mask(lengths, x.shape[1])].long()  # (tokens, 7)
    v = int(rows[:, 0].max()) + 1
    table = torch.full((v, x.shape[-1]), -1, dtype=torch.long, device=x.device)
    table[:, 0] = torch.arange(v, device=x.device)
    table[rows[:, 0]] = rows  # one of each word's tokens wins
    bad = (table[rows[:, 0]] != rows).any(-1)
    if bad.any():
        i = int(torch.nonzero(bad)[0])
        raise ValueError(f"word id {int(rows[i, 0])} has different features in different tokens "
                         f"({table[rows[i, 0]].tolist()} and {rows[i].tolist()}): features must be a function of the word")
    return table


def feature_table(vocab: Tensor, kinds: Sequence[str] = FEATURES) -> tuple[Tensor, int]:
    """((V, J) long global feature ids, F) for the feature kinds ``kinds`` (a subset of :data:`FEATURES`): the
    ids of each kind are offset past the previous kinds'; -1 where a word has no id for a kind (a word id absent
    from the data). J = len(kinds); F = the number of distinct features."""
    unknown = [k for k in kinds if k not in FEATURES]
    if unknown or not kinds:
        raise ValueError(f"feature kinds must be a non-empty subset of {FEATURES}, got {list(kinds)}")
    cols, offset = [], 0
    for kind in FEATURES:  # a fixed order, whatever order ``kinds`` lists them in
        if kind not in kinds:
            continue
        ids = vocab[:, FEATURES.index(kind)]
        cols.append(torch.where(ids >= 0, ids + offset, -1))
        offset += int(ids.max()) + 1
    return torch.stack(cols, 1), offset


def indicator(features: Tensor, num_features: int, dtype: torch.dtype) -> Tensor:
    """The (V, F) sparse 0/1 matrix of each word's features, from the (V, J) ids (-1: none)."""
    v, j = features.shape
    keep = features.reshape(-1) >= 0
    rows = torch.arange(v, device=features.device).repeat_interleave(j)[keep]
    ones = torch.ones(int(keep.sum()), dtype=dtype, device=features.device)
    return torch.sparse_coo_tensor(torch.stack([rows, features.reshape(-1)[keep]]), ones,
                                   (v, num_features), is_coalesced=True, check_invariants=False)


def log_emission(params: TaggerParams) -> Tensor:
    """log theta: (V, K), log p(w = v | t = k), each column normalised over the vocabulary. Differentiable in W."""
    logits = torch.sparse.mm(indicator(params.features, params.weights.shape[0], params.weights.dtype), params.weights)
    return torch.log_softmax(logits, 0)


def token_log_emission(x: Tensor, params: TaggerParams, lengths: Tensor | None = None) -> Tensor:
    """log p(w_{n,i} | t_{n,i} = k): (N, T, K), 0 past each sentence's end."""
    words, _, mask = word_ids(x, lengths)
    return log_emission(params)[words] * mask[..., None]


def log_prior(params: TaggerParams) -> Tensor:
    """log p(A) + log p(W), up to constants: (concentration - 1) sum log A + log N(W; 0, weight_scale^2)."""
    return (params.concentration - 1) * torch.log_softmax(params.trans_logits, -1).sum() + log_weight_prior(params)


def log_weight_prior(params: TaggerParams) -> Tensor:
    """log p(W) up to a constant: -|W|^2 / (2 weight_scale^2) (0 with no prior): a scalar."""
    if float(params.weight_scale) > 0:
        return -0.5 * (params.weights**2).sum() / params.weight_scale**2
    return params.weights.new_zeros(())


# --------------------------------------------------------------------------- forward-backward


class Variational(NamedTuple):
    """A q(t) over each sentence's tag path, by the tables the ELBO needs: marginals (N, T, K) q(t_i = k) (zero
    past each end); transitions (N, K, K) sum_i q(t_i = j, t_{i+1} = k); entropy (N,) H[q(t_n)].
    The exact posterior is one (:func:`posterior`, with log_evidence)."""

    marginals: Tensor
    transitions: Tensor
    entropy: Tensor


class Chain(NamedTuple):
    """log_normaliser: (N,) log sum over paths of the chain's potentials (log p(w_n) for the model's own);
    marginals: (N, T, K); transitions: (N, K, K) expected transition counts."""

    log_normaliser: Tensor
    marginals: Tensor
    transitions: Tensor


def _chain_chunk(log_init: Tensor, log_trans: Tensor, log_unary: Tensor, lengths: Tensor) -> Chain:
    """The scaled recursions for one chunk: log_init (K,), log_trans (K, K) normalised; log_unary (B, T, K)."""
    b, t_max, k = log_unary.shape
    mask = step_mask(lengths, t_max)
    shift = log_unary.max(-1, keepdim=True).values  # (B, T, 1): emissions relative to each step's largest
    e = torch.exp(log_unary - shift)
    a_mat = torch.exp(log_trans)
    a = torch.exp(log_init) * e[:, 0]
    c = a.sum(-1)
    alphas, norms = [a / c[:, None]], [c]
    for t in range(1, t_max):
        a = (alphas[-1] @ a_mat) * e[:, t]
        c = a.sum(-1)
        keep = mask[:, t]
        alphas.append(torch.where(keep[:, None], a / torch.where(keep, c, 1.0)[:, None], alphas[-1]))
        norms.append(torch.where(keep, c, 1.0))
    alpha, norm = torch.stack(alphas, 1), torch.stack(norms, 1)  # (B, T, K), (B, T)
    log_z = ((torch.log(norm) + shift[..., 0]) * mask).sum(1)
    beta = [torch.ones_like(alphas[0])]
    for t in range(t_max - 2, -1, -1):
        new = ((beta[-1] * e[:, t + 1]) @ a_mat.T) / norm[:, t + 1, None]
        beta.append(torch.where(mask[:, t + 1, None], new, beta[-1]))
    beta_t = torch.stack(beta[::-1], 1)
    marginals = alpha * beta_t * mask[..., None]
    g = beta_t * e / norm[..., None] * mask[..., None]  # (B, T, K): zero where step t is past the end
    transitions = a_mat * (alpha[:, :-1].transpose(1, 2) @ g[:, 1:])  # (B, K, K): sum_t alpha_t(j) A_jk g_{t+1}(k)
    return Chain(log_z, marginals, transitions)


def chain(log_init: Tensor, log_trans: Tensor, log_unary: Tensor, lengths: Tensor, chunk: int = CHUNK,
          normalise: bool = True) -> Chain:
    """The chain q(t) proportional to exp(log_init[t_1] + sum_i log_trans[t_i, t_{i+1}] + sum_i log_unary[i, t_i])
    for every sentence: log_init (K,), log_trans (K, K) (normalised here unless ``normalise`` is False: variational
    Bayes passes E_q[log A], whose rows sum to less than one), log_unary (N, T, K), lengths (N,).

    Sentences sorted by length, in chunks of ``chunk``, each trimmed to its longest; differentiable."""
    log_init = torch.log_softmax(log_init, -1)
    if normalise:
        log_trans = torch.log_softmax(log_trans, -1)
    n, t_max, k = log_unary.shape
    order = torch.argsort(lengths)
    parts = []
    for idx in order.split(chunk):
        t_c = int(lengths[idx].max())
        parts.append(_chain_chunk(log_init, log_trans, log_unary[idx, :t_c], lengths[idx]))
    inverse = torch.argsort(order)
    log_z = torch.cat([p.log_normaliser for p in parts])[inverse]
    marginals = torch.cat([F.pad(p.marginals, (0, 0, 0, t_max - p.marginals.shape[1])) for p in parts])[inverse]
    transitions = torch.cat([p.transitions for p in parts])[inverse]
    return Chain(log_z, marginals, transitions)


def chain_variational(log_init: Tensor, log_trans: Tensor, log_unary: Tensor, lengths: Tensor) -> Variational:
    """The chain family as a :class:`Variational`: entropy H = log Z - E_q[log potentials]."""
    c = chain(log_init, log_trans, log_unary, lengths)
    mask = step_mask(lengths, log_unary.shape[1])
    energy = (c.marginals[:, 0] * torch.log_softmax(log_init, -1)).sum(-1)
    energy = energy + (c.transitions * torch.log_softmax(log_trans, -1)).sum((-1, -2))
    energy = energy + ((c.marginals * log_unary).sum(-1) * mask).sum(1)
    return Variational(c.marginals, c.transitions, c.log_normaliser - energy)


class Posterior(NamedTuple):
    """log_evidence: (N,) log p(w_n); marginals: (N, T, K) p(t_i = k | w_n); transitions: (N, K, K)
    sum_i p(t_i = j, t_{i+1} = k | w_n)."""

    log_evidence: Tensor
    marginals: Tensor
    transitions: Tensor


def forward_backward(x: Tensor, params: TaggerParams, lengths: Tensor | None = None) -> Posterior:
    """The exact posterior over tags for tokens x: (N, T, 7), NaN-padded (see the module docstring)."""
    _, lengths, _ = word_ids(x, lengths)
    c = chain(params.init_logits, params.trans_logits, token_log_emission(x, params, lengths), lengths)
    return Posterior(c.log_normaliser, c.marginals, c.transitions)


def log_evidence(x: Tensor, params: TaggerParams) -> Tensor:
    """sum_n log p(w_n): a scalar."""
    return forward_backward(x, params).log_evidence.sum()


def posterior(x: Tensor, params: TaggerParams) -> Variational:
    """The exact posterior as a :class:`Variational` (its entropy = log p(w) - E[log p(w, t)]): the optimum of
    every family that contains it (the chain family, closed form)."""
    post = forward_backward(x, params)
    q = Variational(post.marginals, post.transitions, torch.zeros_like(post.log_evidence))
    return q._replace(entropy=post.log_evidence - _energy(x, params, q))


def factorised(probs: Tensor, lengths: Tensor) -> Variational:
    """The fully factorised q(t) = prod_i q(t_i) from probs: (N, T, K)."""
    mask = step_mask(lengths, probs.shape[1])
    probs = probs * mask[..., None]
    transitions = probs[:, :-1].transpose(1, 2) @ probs[:, 1:]
    entropy = -(probs * torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))).sum((-1, -2))  # finite gradients at 0
    return Variational(probs, transitions, entropy)


def _energy(x: Tensor, params: TaggerParams, q: Variational, log_trans: Tensor | None = None) -> Tensor:
    """E_q[log p(w_n, t_n)]: (N,). ``log_trans`` (K, K) replaces log A (default: the normalised trans_logits);
    variational Bayes gives E_q[log A] there, rows that sum to less than one in exp."""
    emit = (q.marginals * token_log_emission(x, params)).sum((-1, -2))
    prior = (q.marginals[:, 0] * torch.log_softmax(params.init_logits, -1)).sum(-1)
    log_trans = torch.log_softmax(params.trans_logits, -1) if log_trans is None else log_trans
    return emit + prior + (q.transitions * log_trans).sum((-1, -2))


def elbo(x: Tensor, params: TaggerParams, q: Variational) -> Tensor:
    """ELBO_n(q) = E_q[log p(w_n, t_n)] + H[q(t_n)]: (N,), in closed form; differentiable in params and q."""
    return _energy(x, params, q) + q.entropy


def kl(x: Tensor, params: TaggerParams, q: Variational) -> Tensor:
    """KL(q || p(t | w)) per sentence: (N,) = log p(w_n) - ELBO_n(q)."""
    return forward_backward(x, params).log_evidence - elbo(x, params, q)


def draws(x: Tensor, params: TaggerParams, num_samples: int, generator: torch.Generator) -> Tensor:
    """(S, N, T) exact posterior tag paths (forward filtering, backward sampling), in the layout of the model's
    site ``t``; steps past a sentence's end are 0."""
    words, lengths, mask = word_ids(x)
    n, t_max = words.shape
    log_a = torch.log_softmax(params.trans_logits, -1)
    log_e = token_log_emission(x, params, lengths)
    alphas = [torch.log_softmax(params.init_logits, -1) + log_e[:, 0]]  # log filtered (unnormalised) messages
    for t in range(1, t_max):
        alphas.append(torch.logsumexp(alphas[-1][:, :, None] + log_a, 1) + log_e[:, t])
    log_alpha = torch.stack(alphas, 1)
    rows = torch.arange(n, device=x.device)
    last = lengths - 1
    path = torch.zeros(num_samples, n, t_max, dtype=torch.long, device=x.device)
    path[:, rows, last] = torch.multinomial(torch.softmax(log_alpha[rows, last], -1), num_samples, replacement=True, generator=generator).T
    for t in range(t_max - 2, -1, -1):
        w = torch.softmax(log_alpha[:, t][None] + log_a[:, path[:, :, t + 1]].permute(1, 2, 0), -1)  # (S, N, K)
        drawn = torch.multinomial(w.reshape(-1, w.shape[-1]), 1, generator=generator).reshape(num_samples, n)
        path[:, :, t] = torch.where(t < last, drawn, path[:, :, t])
    return path * mask


# --------------------------------------------------------------------------- mean field by coordinate ascent


class MeanFieldFit(NamedTuple):
    """q: the factorised fixed point; elbo: sum_n ELBO_n after each sweep (monotone); num_sweeps; converged."""

    q: Variational
    elbo: list
    num_sweeps: int
    converged: bool


def random_start(x: Tensor, params: TaggerParams, generator: torch.Generator) -> Tensor:
    """Random starting marginals (N, T, K): softmax(3 eps), eps ~ N(0, 1)."""
    shape = (x.shape[0], x.shape[1], params.num_tags)
    return torch.softmax(3 * torch.randn(shape, generator=generator, dtype=x.dtype, device=generator.device).to(x.device), -1)


def fit_mean_field(x: Tensor, params: TaggerParams, init: Tensor | None = None, max_sweeps: int = 200,
                   tol: float = 1e-10) -> MeanFieldFit:
    """Coordinate ascent on the fully factorised family at fixed params: q_i = softmax(log theta[w_i] +
    [i = 1] log pi + q_{i-1} log A + log A q_{i+1}), at every even step, then every odd step (steps of one
    parity do not interact, so each half-sweep is an exact block update and the ELBO never falls). init:
    starting marginals (N, T, K), default uniform. Stops when a sweep gains less than ``tol`` (relative)."""
    _, lengths, mask = word_ids(x)
    k = params.num_tags
    log_e = token_log_emission(x, params, lengths)
    log_pi = torch.log_softmax(params.init_logits, -1)
    log_a = torch.log_softmax(params.trans_logits, -1)
    probs = log_e.new_full(log_e.shape, 1.0 / k) if init is None else init.clone().to(log_e.dtype)
    probs = probs * mask[..., None]

    def sweep(q: Variational) -> tuple[Variational, float]:
        for parity in (0, 1):
            logits = log_e.clone()
            logits[:, 0] += log_pi
            logits[:, 1:] += probs[:, :-1] @ log_a
            logits[:, :-1] += probs[:, 1:] @ log_a.T  # probs is zero past each end: no message from there
            new = torch.softmax(logits, -1) * mask[..., None]
            probs[:, parity::2] = new[:, parity::2]
        q = factorised(probs, lengths)
        return q, float(elbo(x, params, q).sum())

    q0 = factorised(probs, lengths)
    run = em.iterate(sweep, q0, max_iter=max_sweeps, tol=tol, rule="relative", initial=float(elbo(x, params, q0).sum()),
                     name="pos_tagger.fit_mean_field")
    return MeanFieldFit(run.state, run.trace, run.num_steps, run.converged)


# --------------------------------------------------------------------------- EM


class EMFit(NamedTuple):
    """params; log_likelihood: sum_n log p(w_n) / N at each iterate (the first at ``init``); objective: the MAP
    objective (log p(w) + log p(theta)) / N the driver checked for monotonicity (equal to log_likelihood with no
    priors); num_iters; converged."""

    params: TaggerParams
    log_likelihood: list
    objective: list
    num_iters: int
    converged: bool


def emission_counts(x: Tensor, marginals: Tensor, vocab_size: int) -> Tensor:
    """Expected emission counts c[v, k] = sum over tokens of word v of q(t = k): (V, K)."""
    words, _, mask = word_ids(x)
    counts = marginals.new_zeros(vocab_size, marginals.shape[-1])
    return counts.index_add_(0, words[mask], marginals[mask])


def m_step(x: Tensor, post: Posterior | Variational, params: TaggerParams, lbfgs_iters: int = 30) -> TaggerParams:
    """Maximise E_q[log p(w, t)] + log p(theta) over theta for q the posterior (EM) or any q.

    pi: normalised expected initial counts; A: (expected transition counts + concentration - 1), normalised per
    row; W: no closed form (the softmax couples the vocabulary), but sum_vk c[v, k] log theta[v, k] - |W|^2 /
    (2 sigma^2) is concave in W, so L-BFGS with a strong-Wolfe line search from the current W raises it (a
    generalised M-step, Berg-Kirkpatrick et al.'s Algorithm 1)."""
    tiny = torch.finfo(post.marginals.dtype).tiny
    init_counts = post.marginals[:, 0].sum(0)
    init_logits = torch.log((init_counts / init_counts.sum()).clamp_min(tiny))
    trans = post.transitions.sum(0) + (params.concentration - 1)
    rows = trans.sum(-1, keepdim=True)
    trans_logits = torch.where(rows > 0, torch.log((trans / rows.clamp_min(tiny)).clamp_min(tiny)), params.trans_logits)
    counts = emission_counts(x, post.marginals, params.vocab_size)
    weights = _fit_weights(counts, params, lbfgs_iters)
    return params._replace(init_logits=init_logits, trans_logits=trans_logits, weights=weights)


def _fit_weights(counts: Tensor, params: TaggerParams, iters: int) -> Tensor:
    w = params.weights.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w], max_iter=iters, line_search_fn="strong_wolfe", tolerance_change=1e-12, tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        p = params._replace(weights=w)
        loss = -(counts * log_emission(p)).sum()
        if float(params.weight_scale) > 0:
            loss = loss + 0.5 * (w**2).sum() / params.weight_scale**2
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach()


def fit_em(x: Tensor, init: TaggerParams, max_iter: int = 100, tol: float = 1e-6, lbfgs_iters: int = 30,
           on_decrease: str = "warn") -> EMFit:
    """Baum-Welch with the log-linear M-step (:func:`m_step`), on the driver :func:`models.exact.em.iterate`:
    each step is an M-step from the last E-step followed by the E-step that scores it, so the reported
    objective (log p(w) + log p(theta)) / N is of the new parameters. Stops when an iteration gains less than
    ``tol`` relative to |objective|. The objective never decreases (checked by the driver)."""
    n = x.shape[0]
    post0 = forward_backward(x, init)
    ll = [float(post0.log_evidence.sum()) / n]

    def step(state: tuple[TaggerParams, Posterior]) -> tuple[tuple[TaggerParams, Posterior], float]:
        params, post = state
        params = m_step(x, post, params, lbfgs_iters)
        post = forward_backward(x, params)
        ll.append(float(post.log_evidence.sum()) / n)
        return (params, post), ll[-1] + float(log_prior(params)) / n

    run = em.iterate(step, (init, post0), max_iter=max_iter, tol=tol, rule="relative",
                     initial=ll[0] + float(log_prior(init)) / n, on_decrease=on_decrease, name="pos_tagger.fit_em")
    return EMFit(run.state[0], ll, run.trace, run.num_steps, run.converged)


# --------------------------------------------------------------------------- variational Bayes (Johnson 2007)


def expected_log_dirichlet(beta: Tensor) -> Tensor:
    """E[log A_jk] under Dir(A_j | beta_j), row by row: digamma(beta_jk) - digamma(sum_k beta_jk): (K, K)."""
    return torch.special.digamma(beta) - torch.special.digamma(beta.sum(-1, keepdim=True))


def dirichlet_kl(beta: Tensor, alpha: Tensor) -> Tensor:
    """sum_j KL(Dir(beta_j) || Dir(alpha 1)), in closed form: a scalar."""
    k = beta.shape[-1]
    alpha = torch.as_tensor(alpha, dtype=beta.dtype, device=beta.device)
    total = beta.sum(-1)
    out = torch.lgamma(total) - torch.lgamma(beta).sum(-1) - torch.lgamma(k * alpha) + k * torch.lgamma(alpha)
    return (out + ((beta - alpha) * expected_log_dirichlet(beta)).sum(-1)).sum()


class VBFit(NamedTuple):
    """Variational Bayes for the transitions: q(A) = prod_j Dir(A_j | beta_j), q(t) the optimal chain, pi and W
    point estimates (MAP for W). params: pi, W and, as trans_logits, E_q[log A] (the transitions the posterior
    over tags uses); beta: (K, K); elbo: the bound per sentence at each iterate (the first at ``init``);
    num_iters; converged."""

    params: TaggerParams
    beta: Tensor
    elbo: list
    num_iters: int
    converged: bool


def vb_e_step(x: Tensor, params: TaggerParams, beta: Tensor, lengths: Tensor) -> tuple[Chain, Tensor]:
    """The optimal q(t) given q(A) = Dir(beta) (forward-backward with the sub-normalised weights exp E[log A]),
    and the bound it attains: sum_n log Z_n - KL(q(A) || p(A)) + log p(W): a scalar."""
    c = chain(params.init_logits, expected_log_dirichlet(beta), token_log_emission(x, params, lengths), lengths,
              normalise=False)
    return c, c.log_normaliser.sum() - dirichlet_kl(beta, params.concentration) + log_weight_prior(params)


def vb_elbo(x: Tensor, params: TaggerParams, q: Variational, beta: Tensor) -> Tensor:
    r"""The variational-Bayes bound of :func:`fit_vb` for any q(t) and q(A) = prod_j Dir(A_j | beta_j) (a scalar,
    summed over sentences; differentiable in params, q and beta):

        L = sum_n (E_q[log p(w_n, t_n | A, pi, W)] + H[q(t_n)]) - KL(q(A) || p(A)) + log p(W)
          <= log p(w | pi, W) + log p(W),

    with E_q[log p(w, t | A)] linear in log A, so A enters through E_q[log A] (:func:`expected_log_dirichlet`).
    At the optimal q(t) for beta it equals :func:`vb_e_step`'s bound."""
    energy = _energy(x, params, q, expected_log_dirichlet(beta))
    return (energy + q.entropy).sum() - dirichlet_kl(beta, params.concentration) + log_weight_prior(params)


def fit_vb(x: Tensor, init: TaggerParams, max_iter: int = 100, tol: float = 1e-6, lbfgs_iters: int = 30,
           on_decrease: str = "warn") -> VBFit:
    r"""Variational Bayes for the HMM's transitions (Johnson 2007, "Why doesn't EM find good HMM POS-taggers?"),
    with the log-linear emissions' W and pi as point estimates, on :func:`models.exact.em.iterate`. The bound

        L(q(t), q(A), pi, W) = E_q[log p(w, t | A, pi, W)] + E_q[log p(A)] + log p(W) + H[q(t)] + H[q(A)]
                             <= log p(w | pi, W) + log p(W),   p(w | pi, W) = int p(w | A, pi, W) p(A) dA,

    is raised by coordinate ascent: q(A) = Dir(concentration + expected transition counts) row by row; pi from
    the expected initial counts; W by L-BFGS on the expected emission counts (as in EM); then q(t), the chain
    with potentials pi, exp E[log A] (rows summing to less than one: VB's built-in sparsity) and theta, whose
    log-normaliser gives L in closed form with q(t) optimal (:func:`vb_e_step`). Never decreases (checked by
    the driver). A concentration below 1 favours sparse transition rows, where MAP-EM would need beta > 1."""
    _, lengths, _ = word_ids(x)
    n = x.shape[0]
    beta = torch.full_like(init.trans_logits, float(init.concentration)) + 0.0
    c, bound = vb_e_step(x, init, beta, lengths)

    def step(state: tuple[TaggerParams, Tensor, Chain]) -> tuple[tuple[TaggerParams, Tensor, Chain], float]:
        params, beta, c = state
        beta = params.concentration + c.transitions.sum(0)
        q = Variational(c.marginals, c.transitions, c.marginals.new_zeros(n))
        init_counts = c.marginals[:, 0].sum(0)
        tiny = torch.finfo(init_counts.dtype).tiny
        params = params._replace(init_logits=torch.log((init_counts / init_counts.sum()).clamp_min(tiny)),
                                 weights=_fit_weights(emission_counts(x, q.marginals, params.vocab_size), params,
                                                      lbfgs_iters))
        c, bound = vb_e_step(x, params, beta, lengths)
        return (params, beta, c), float(bound) / n

    run = em.iterate(step, (init, beta, c), max_iter=max_iter, tol=tol, rule="relative", initial=float(bound) / n,
                     on_decrease=on_decrease, name="pos_tagger.fit_vb")
    params, beta, _ = run.state
    return VBFit(params._replace(trans_logits=expected_log_dirichlet(beta)), beta, run.trace, run.num_steps,
                 run.converged)


# --------------------------------------------------------------------------- brute force (tests)


def brute_force(x: Tensor, params: TaggerParams, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For sentence n alone, by enumerating all K^T tag paths (tiny cases; independent of the recursions):
    log p(w_n); marginals (T_n, K); transition counts (K, K); every path (P, T_n) with its log p(path | w_n)."""
    words, lengths, _ = word_ids(x)
    length = int(lengths[n])
    log_e = log_emission(params)[words[n, :length]]  # (T_n, K)
    log_pi = torch.log_softmax(params.init_logits, -1)
    log_a = torch.log_softmax(params.trans_logits, -1)
    k = params.num_tags
    paths = torch.tensor(list(itertools.product(range(k), repeat=length)), dtype=torch.long)  # (P, T_n)
    steps = torch.arange(length)
    scores = log_pi[paths[:, 0]] + log_e[steps, paths].sum(1) + log_a[paths[:, :-1], paths[:, 1:]].sum(1)
    log_z = torch.logsumexp(scores, 0)
    w = torch.exp(scores - log_z)
    onehot = F.one_hot(paths, k).to(w.dtype)
    marginals = torch.einsum("p,ptk->tk", w, onehot)
    transitions = torch.einsum("p,ptj,ptk->jk", w, onehot[:, :-1], onehot[:, 1:])
    return log_z, marginals, transitions, (paths, scores - log_z)
