r"""Bayesian log-linear part-of-speech tagger (Berg-Kirkpatrick et al. 2010, "Painless unsupervised learning
with features"): a hidden Markov model over K tags whose emissions are log-linear in word features.

Generative process, for sentences n = 1..N of lengths T_n, positions i = 1..T_n, a vocabulary of V words::

    A_j ~ Dir(concentration)                      rows of the transitions (MAP: point estimate, prior as a factor)
    W_fk ~ N(0, weight_scale^2)                   one weight per feature f and tag k (MAP; 0: no prior)
    t_{n,1} ~ Cat(pi)                             pi: (K,)
    t_{n,i+1} | t_{n,i} ~ Cat(A[t_{n,i}])          A: (K, K), row = previous tag
    w_{n,i} | t_{n,i} = k ~ Cat(theta[:, k]),     theta[v, k] = softmax_v(f(v) . W[:, k])

f(v) in {0,1}^F indicates word v's features: its identity, its suffixes of length 1, 2 and 3, whether it is
capitalised, holds a digit, holds a hyphen (``model_args.features`` picks the kinds; ["word"] alone is the
classical multinomial HMM). Graphical model (one sentence)::

    t_1 --> t_2 --> ... --> t_T        A, pi
     |       |               |
     v       v               v
    w_1     w_2     ...     w_T        theta = softmax(F W)

Data are tokens: x: (N, T_max, 7) float, per token the word id and its feature ids (:data:`COLUMNS`), NaN rows
past each sentence's end (:mod:`models.exact.pos_tagger` explains the layout; :func:`encode` builds it from
words). The gold tags, where known, are kept aside for evaluation only (:func:`evaluate`).

Tensor shapes under ``Trace.format_shapes()`` (x: (N, T, 7))::

     Sample Sites:
    prior dist           |                (pyro.factor: log p(A) + log p(W), the MAP prior)
    sentences dist       |
             value     N |
            t dist     N | T              one site holds each sentence's tag path (MarkovChain)
             value     N | T
            w dist     N | T              masked past each length
             value     N | T

Exact inference (forward-backward, EM with the L-BFGS M-step) is :mod:`models.exact.pos_tagger`; the guides are
in :mod:`guides.pos_tagger`; the tagged English corpora are loaded by :mod:`models.datasets.tagged`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from pyro.nn import PyroModule, PyroParam
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torch.distributions import constraints

from .datasets import DataOptions, Dataset
from .datasets.tagged import encode_words
from .distributions import MarkovChain, TopicWord
from .errors import DataError
from .exact import pos_tagger as exact
from .exact.fhmm import sequence_lengths, step_mask
from .exact.pos_tagger import COLUMNS, FEATURES, TaggerParams

__all__ = ["COLUMNS", "FEATURES", "TaggerArgs", "TaggerVBArgs", "TaggerParams", "model", "model_vb", "Tagger", "TaggerVB",
           "label_metrics", "LinearChain", "validate_data",
           "init_params", "true_params", "simulate", "synthetic", "evaluate"]


@dataclass(frozen=True)
class TaggerArgs:
    """Model options, as they appear under ``[model_args]`` in a config.

    num_tags: K, the tag states (45 for the Penn tag set).
    features: the feature kinds of the emissions, a subset of :data:`FEATURES` (["word"]: the plain HMM).
    concentration: the Dirichlet prior on each row of A (1: flat, maximum likelihood; > 1 smooths).
    weight_scale: the Gaussian prior's standard deviation on every weight (0: no prior).
    """

    num_tags: int = 8
    features: tuple[str, ...] = FEATURES
    concentration: float = 1.0
    weight_scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if self.num_tags < 2:
            raise ValueError(f"model_args.num_tags must be >= 2, got {self.num_tags}")
        bad = [f for f in self.features if f not in FEATURES]
        if bad or not self.features or len(set(self.features)) != len(self.features):
            raise ValueError(f"model_args.features must be distinct names from {list(FEATURES)}, got {list(self.features)}")
        self._check_concentration()

        if not self.weight_scale >= 0:
            raise ValueError(f"model_args.weight_scale must be >= 0 (0: no prior), got {self.weight_scale}")


    def _check_concentration(self) -> None:
        if not self.concentration >= 1:
            raise ValueError(f"model_args.concentration must be >= 1 (MAP needs a mode inside the simplex), got {self.concentration}")


@dataclass(frozen=True)
class TaggerVBArgs(TaggerArgs):
    """The tagger with Bayesian transitions (:func:`model_vb`): as :class:`TaggerArgs`, but A is a latent
    variable with q(A) Dirichlet, so the concentration may be any positive number; below 1 it favours sparse
    transition rows (Johnson 2007 found 0.1 and smaller best for HMM taggers)."""

    concentration: float = 0.1

    def _check_concentration(self) -> None:
        if not (self.concentration > 0 and np.isfinite(self.concentration)):
            raise ValueError(f"model_args.concentration must be a positive number, got {self.concentration}")


class LinearChain(TorchDistribution):
    """A tag path t_{1:T} as one event, q(t) proportional to exp(log_init[t_1] + sum_i log_trans[t_i, t_{i+1}] +
    sum_i log_unary[i, t_i]) (a linear-chain CRF over a sentence): the guides' q. The fully factorised q is the
    case log_trans = 0. log_init (K,), log_trans (K, K), log_unary (N, T, K), lengths (N,); batch (N,),
    event (T,). log_prob: the path's potential minus log Z (forward recursion); sample: forward filtering,
    backward sampling. Steps past a length are 0 and add nothing."""

    arg_constraints = {}
    has_enumerate_support = False

    def __init__(self, log_init: Tensor, log_trans: Tensor, log_unary: Tensor, lengths: Tensor, validate_args=None):
        self.log_init = torch.log_softmax(log_init, -1)
        self.log_trans = torch.log_softmax(log_trans, -1)
        self.log_unary = log_unary
        self.lengths = lengths
        super().__init__(log_unary.shape[:1], log_unary.shape[1:2], validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.log_unary.shape[-1] - 1), 1)

    def _log_alpha(self) -> Tensor:
        mask = step_mask(self.lengths, self.log_unary.shape[1])
        alphas = [self.log_init + self.log_unary[:, 0]]
        for t in range(1, self.log_unary.shape[1]):
            new = torch.logsumexp(alphas[-1][:, :, None] + self.log_trans, 1) + self.log_unary[:, t]
            alphas.append(torch.where(mask[:, t, None], new, alphas[-1]))
        return torch.stack(alphas, 1)  # (N, T, K): frozen past each end

    def log_prob(self, value: Tensor) -> Tensor:
        value = value.long()
        n, t_max, _ = self.log_unary.shape
        mask = step_mask(self.lengths, t_max)
        unary = self.log_unary.expand(value.shape[:-2] + self.log_unary.shape)
        score = self.log_init[value[..., 0]] + (unary.gather(-1, value[..., None])[..., 0] * mask).sum(-1)
        score = score + (self.log_trans[value[..., :-1], value[..., 1:]] * mask[:, 1:]).sum(-1)
        return score - torch.logsumexp(self._log_alpha()[:, -1], -1)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        s = int(np.prod(sample_shape)) if len(sample_shape) else 1
        with torch.no_grad():
            log_alpha = self._log_alpha()
            n, t_max, k = log_alpha.shape
            last = self.lengths - 1
            rows = torch.arange(n, device=log_alpha.device)
            path = torch.zeros(s, n, t_max, dtype=torch.long, device=log_alpha.device)
            path[:, rows, last] = torch.multinomial(torch.softmax(log_alpha[rows, last], -1), s, replacement=True).T
            for t in range(t_max - 2, -1, -1):
                w = torch.softmax(log_alpha[:, t][None] + self.log_trans[:, path[:, :, t + 1]].permute(1, 2, 0), -1)
                drawn = torch.multinomial(w.reshape(-1, k), 1).reshape(s, n)
                path[:, :, t] = torch.where(t < last, drawn, path[:, :, t])
            path = path * step_mask(self.lengths, t_max)
        return path.reshape(tuple(sample_shape) + (n, t_max))


def model(x: Tensor, params: TaggerParams) -> None:
    r"""Pyro model of the tagger given its parameters (MAP: the priors enter as one factor).

    t_{n,1:T} ~ MarkovChain(pi, A);  w_{n,i} | t_{n,i} ~ Cat(theta[:, t_{n,i}])
    x: (num_sentences, num_steps, 7) tokens, NaN-padded.
    """
    words, lengths, mask = exact.word_ids(x)
    n, t = words.shape
    k = params.num_tags
    pyro.factor("prior", exact.log_prior(params))
    log_theta = exact.log_emission(params)  # (V, K)
    with pyro.plate("sentences", n, dim=-1, device=x.device):
        trans = params.trans_logits.expand(t - 1, k, k)
        tags = pyro.sample("t", MarkovChain(params.init_logits, trans, lengths))  # (N, T)
        pyro.sample("w", TopicWord(log_theta.T, tags.long()).mask(mask).to_event(1), obs=words)


def model_vb(x: Tensor, params: TaggerParams) -> None:
    r"""Pyro model of the tagger with Bayesian transitions (variational Bayes; Johnson 2007):

    A_j ~ Dir(concentration 1) (site ``A``: (K, K), one row per previous tag); t_{n,1:T} ~ MarkovChain(pi, A);
    w_{n,i} | t_{n,i} ~ Cat(theta[:, t_{n,i}]); pi and W point estimates (W with its Gaussian prior as a factor).
    ``params.trans_logits`` is not used. x: (num_sentences, num_steps, 7) tokens, NaN-padded.
    """
    words, lengths, mask = exact.word_ids(x)
    n, t = words.shape
    k = params.num_tags
    a = pyro.sample("A", dist.Dirichlet(params.concentration.expand(k, k)).to_event(1))
    pyro.factor("prior", exact.log_weight_prior(params))
    log_theta = exact.log_emission(params)  # (V, K)
    with pyro.plate("sentences", n, dim=-1, device=x.device):
        tags = pyro.sample("t", MarkovChain(params.init_logits, torch.log(a).expand(t - 1, k, k), lengths))  # (N, T)
        pyro.sample("w", TopicWord(log_theta.T, tags.long()).mask(mask).to_event(1), obs=words)


class Tagger(PyroModule):
    """The tagger with learnable point-estimated pi, A, W (the word features and the priors are buffers)."""

    def __init__(self, init: TaggerParams):
        super().__init__()
        self.init_logits = PyroParam(init.init_logits.detach().clone())
        self.trans_logits = PyroParam(init.trans_logits.detach().clone())
        self.weights = PyroParam(init.weights.detach().clone())
        self.register_buffer("features", init.features.clone())
        self.register_buffer("concentration", init.concentration.clone())
        self.register_buffer("weight_scale", init.weight_scale.clone())

    @property
    def params(self) -> TaggerParams:
        return TaggerParams(self.init_logits, self.trans_logits, self.weights, self.features, self.concentration,
                            self.weight_scale)

    def forward(self, x: Tensor) -> None:
        model(x, self.params)


class TaggerVB(Tagger):
    """The tagger with Bayesian transitions (:func:`model_vb`): learnable pi and W; A is a latent variable, so
    ``trans_logits`` is a buffer holding the start (the guide's q(A) gives the fitted transitions,
    :meth:`guides.pos_tagger._PathGuide.fitted_params`)."""

    def __init__(self, init: TaggerParams):
        super().__init__(init)
        del self.trans_logits  # the PyroParam: A is a latent here
        self.register_buffer("trans_logits", init.trans_logits.detach().clone())

    def forward(self, x: Tensor) -> None:
        model_vb(x, self.params)


def validate_data(x, args: TaggerArgs) -> Tensor:
    """Check tokens before any work: a (N, T, 7) tensor of non-negative integer ids, NaN rows only past each
    sentence's end, and each word's features the same in all its tokens. Returns float64."""
    if not isinstance(x, Tensor):
        raise DataError(f"tokens must be a (num_sentences, num_steps, {len(COLUMNS)}) tensor (models.pos_tagger.encode "
                        f"builds one from words), got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != len(COLUMNS) or x.numel() == 0:
        raise DataError(f"tokens must be (num_sentences, num_steps, {len(COLUMNS)}): per token {', '.join(COLUMNS)}; "
                        f"got shape {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8)):  # complex too
        raise DataError(f"tokens must be real numbers (integer ids, NaN padding), got dtype {x.dtype}")
    x = x.to(torch.float64)
    try:
        lengths = sequence_lengths(x)
    except ValueError as err:
        raise DataError(f"tokens: {err}") from None
    rows = x[step_mask(lengths, x.shape[1])]
    if not torch.isfinite(rows).all() or (rows < 0).any() or (rows != rows.round()).any():
        raise DataError("tokens: every id must be a non-negative integer (NaN only in the padding rows)")
    if (rows[:, 4:] > 1).any():
        raise DataError("tokens: the flag columns (capitalised, digit, hyphen) must be 0 or 1")
    try:
        exact.vocabulary(x)
    except ValueError as err:
        raise DataError(f"tokens: {err}") from None
    return x


def init_params(x: Tensor, args: TaggerArgs, seed: int) -> TaggerParams:
    """Shared starting point for EM and every guide: uniform pi, rows of A from Dir(1) mixed half and half with
    uniform, and W = 0 but for each word's identity weight, log of its frequency plus N(0, 0.1^2) noise per tag
    (the emissions start at the unigram distribution, perturbed: symmetry must be broken). With "word" switched
    off, every weight is N(0, 0.1^2)."""
    gen = torch.Generator().manual_seed(seed)
    k = args.num_tags
    vocab = exact.vocabulary(x)
    features, num_features = exact.feature_table(vocab, args.features)
    words, _, mask = exact.word_ids(x)
    counts = torch.bincount(words[mask], minlength=vocab.shape[0]).to(x.dtype)
    cpu = {"generator": gen, "dtype": x.dtype, "device": "cpu"}  # drawn on the CPU, then moved: the same start on every device
    weights = 0.1 * torch.randn(num_features, k, **cpu).to(x.device)
    if "word" in args.features:
        weights[features[:, 0]] += torch.log(counts + 0.5)[:, None]
    g = -torch.log(torch.rand(k, k, **cpu).to(x.device))
    trans = 0.5 / k + 0.5 * g / g.sum(-1, keepdim=True)
    return TaggerParams(x.new_zeros(k), torch.log(trans), weights, features,
                        x.new_tensor(float(args.concentration)), x.new_tensor(float(args.weight_scale)))


# --------------------------------------------------------------------------- synthetic data


def synthetic_vocabulary(num_words: int, num_tags: int, seed: int) -> tuple[Tensor, Tensor]:
    """((V, 7) long token columns of V made-up words, (V,) each word's home tag): words of tag k share the
    suffix1 k (4 times in 5), a suffix2 among 2 per tag, their own suffix3; tag 0's words are capitalised,
    tag 1's hold a digit (one in two), one word in ten a hyphen."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.arange(num_words)
    home = v % num_tags
    noisy = torch.rand(num_words, generator=gen) < 0.2
    suffix1 = torch.where(noisy, torch.randint(num_tags, (num_words,), generator=gen), home)
    suffix2 = 2 * home + torch.randint(2, (num_words,), generator=gen)
    cap = (home == 0).long()
    digit = ((home == 1) & (v % 2 == 0)).long()
    hyphen = (torch.rand(num_words, generator=gen) < 0.1).long()
    return torch.stack([v, suffix1, suffix2, v, cap, digit, hyphen], 1), home


def true_params(args: TaggerArgs, vocab: Tensor, home: Tensor, seed: int) -> TaggerParams:
    """Sticky-ish random transitions (rows ~ Dir(1) mixed with 0.3 on a successor tag), and weights that favour
    each word's home tag through its identity (+3) and its shared suffix (+1)."""
    gen = torch.Generator().manual_seed(seed)
    k = args.num_tags
    features, num_features = exact.feature_table(vocab, args.features)
    weights = 0.5 * torch.randn(num_features, k, generator=gen, dtype=torch.float64)
    if "word" in args.features:
        weights[features[:, 0], home] += 3.0
    if "suffix1" in args.features:
        col = list(exact.FEATURES).index("suffix1")
        j = [f for f in exact.FEATURES if f in args.features].index("suffix1")
        weights[features[:, j], vocab[:, col] % k] += 1.0
    g = -torch.log(torch.rand(k, k, generator=gen, dtype=torch.float64))
    trans = 0.7 * g / g.sum(-1, keepdim=True) + 0.3 * torch.eye(k, dtype=torch.float64).roll(1, 1)
    return TaggerParams(torch.zeros(k, dtype=torch.float64), torch.log(trans), weights, features,
                        torch.tensor(float(args.concentration), dtype=torch.float64),
                        torch.tensor(float(args.weight_scale), dtype=torch.float64))


def simulate(params: TaggerParams, vocab: Tensor, num_sentences: int, max_length: int, seed: int) -> tuple[Tensor, Tensor]:
    """(tokens x: (N, T, 7) NaN-padded, tags: (N, T) long, -1 past each end) by ancestral sampling; lengths
    uniform in [ceil(T/2), T]."""
    gen = torch.Generator().manual_seed(seed)
    k = params.num_tags
    lengths = torch.randint((max_length + 1) // 2, max_length + 1, (num_sentences,), generator=gen)
    pi = torch.softmax(params.init_logits, -1)
    a = torch.softmax(params.trans_logits, -1)
    theta = torch.exp(exact.log_emission(params)).T  # (K, V)
    tags = [torch.multinomial(pi.expand(num_sentences, k), 1, generator=gen)[:, 0]]
    for _ in range(max_length - 1):
        tags.append(torch.multinomial(a[tags[-1]], 1, generator=gen)[:, 0])
    t = torch.stack(tags, 1)  # (N, T)
    words = torch.multinomial(theta[t.reshape(-1)], 1, generator=gen).reshape(t.shape)
    mask = step_mask(lengths, max_length)
    x = torch.where(mask[..., None], vocab[words].to(torch.float64), float("nan"))
    return x, torch.where(mask, t, -1)


def synthetic(opts: DataOptions, args: TaggerArgs, seed: int) -> Dataset:
    """``num_points`` sentences of up to ``num_steps`` words over ``vocab_size`` made-up words, from
    :func:`true_params` (seeded by the run's seed); the true tags are the labels."""
    vocab, home = synthetic_vocabulary(opts.vocab_size, args.num_tags, seed)
    truth = true_params(args, vocab, home, seed)
    x, tags = simulate(truth, vocab, opts.num_points, opts.num_steps, seed + 1)
    description = (f"synthetic tagged sentences (K={args.num_tags} tags, V={opts.vocab_size} words; "
                   f"{opts.num_points} sentences of {(opts.num_steps + 1) // 2}-{opts.num_steps} words)")
    return Dataset(x, description, COLUMNS, truth=truth, labels=tags)


def encode(sentences: list[list[str]]) -> tuple[Tensor, tuple[str, ...]]:
    """(tokens x: (N, T, 7) float64 NaN-padded, the vocabulary in id order) from sentences of words: ids in order
    of first appearance; suffix k: the last k characters (the whole word if shorter); capitalised: the first
    character is upper case; digit, hyphen: the word holds one."""
    return encode_words(sentences)


# --------------------------------------------------------------------------- evaluation against gold tags


def evaluate(predicted: Tensor, gold: Tensor) -> dict[str, float]:
    """Tagging accuracy of induced tags against gold tags, over the tokens where gold >= 0 (both (N, T) long):

    many_to_one: each induced tag maps to its most frequent gold tag (several may share one);
    one_to_one: the best one-to-one map (Hungarian algorithm on the co-occurrence counts);
    v_measure: the harmonic mean of homogeneity and completeness (Rosenberg & Hirschberg 2007)."""
    keep = gold >= 0
    p, g = predicted[keep].long(), gold[keep].long()
    counts = torch.zeros(int(p.max()) + 1, int(g.max()) + 1, dtype=torch.float64, device=p.device)
    counts.index_put_((p, g), torch.ones_like(p, dtype=torch.float64), accumulate=True)
    total = counts.sum()
    many = float(counts.max(1).values.sum() / total)
    rows, cols = linear_sum_assignment(-counts.cpu().numpy())
    one = float(counts[torch.as_tensor(rows, device=p.device), torch.as_tensor(cols, device=p.device)].sum() / total)
    joint = counts / total
    pp, pg = joint.sum(1), joint.sum(0)
    h_g, h_p = -torch.special.xlogy(pg, pg).sum(), -torch.special.xlogy(pp, pp).sum()
    mi = (torch.special.xlogy(joint, joint).sum() + h_g + h_p)
    homogeneity = float(mi / h_g) if h_g > 0 else 1.0
    completeness = float(mi / h_p) if h_p > 0 else 1.0
    v = 0.0 if homogeneity + completeness == 0 else 2 * homogeneity * completeness / (homogeneity + completeness)
    return {"many_to_one": many, "one_to_one": one, "v_measure": v}


def label_metrics(x: Tensor, params: TaggerParams, guide, gold: Tensor) -> dict[str, float]:
    """:func:`evaluate` of each token's most probable tag: under the guide's q(t) (``guide.variational``), or, for
    the exact fit (``guide`` None), under the exact posterior at ``params`` (for variational Bayes, whose
    trans_logits are E_q[log A], the posterior with those transitions normalised). gold: (N, T), -1 past the ends."""
    with torch.no_grad():
        q = exact.posterior(x, params) if guide is None else guide.variational(x)
    return evaluate(q.marginals.argmax(-1), gold)


def describe_fit(fits: dict[str, TaggerParams], features: tuple[str, ...]) -> str:
    """Each method's tags: how often a tag follows itself (mean diagonal of A) and the entropy of pi."""
    lines = ["Tags (mean probability that a tag follows itself; perplexity of the emissions per tag, mean):", ""]
    for method, p in fits.items():
        a = torch.softmax(p.trans_logits, -1)
        log_theta = exact.log_emission(p)
        perplexity = torch.exp(-(torch.exp(log_theta) * log_theta).sum(0)).mean()
        lines.append(f"- {method}: stay {float(a.diagonal().mean()):.3f}; emission perplexity {float(perplexity):.1f}")
    return "\n".join(lines)
