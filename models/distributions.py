r"""Small distributions the models need and Pyro does not have in this form.

* :class:`BernoulliVector`: K independent Bernoulli bits as one event of shape (K,), whose
  ``enumerate_support`` lists all 2^K configurations. One sample site then holds a point's whole
  latent vector, and ``TraceEnum_ELBO`` can sum a guide over it exactly (a plate over the K bits
  would not do: the observation depends on all bits jointly, so they are not independent given x).
  Observed bits (the declared models' bernoulli groups) use it too: against enumerated parents its
  log_prob is two matrix products, as :class:`WordCounts`'s is.
* :class:`BernoulliPixels`: independent Bernoulli pixels as one event, the VAE's image likelihood, scored with
  the negation after the pixel sum (``Bernoulli(...).to_event(1)``'s numbers, one pass over the pixels fewer).
* :class:`WordCounts`: the probability of a document's word sequence given per-word log-probabilities,
  scored from its bag of words, log p(x) = sum_v n_v log f_v (no multinomial coefficient: the
  sequence, not the count vector, is the observation; per-word perplexity is exp(-log p / sum_v n_v)).
* :class:`TopicWord`: a word drawn from the topic a latent index picks, w ~ Cat(beta_z), scored by
  looking up log beta[z, w]: LDA's word site without the (tokens, V) table ``Categorical(beta[z])``
  would build (and, through autograd, its gradient).
* :class:`MarkovChain`: a whole discrete chain s_{1:T} as one event, with time-varying transitions and
  lengths: the factorial HMM's chains (homogeneous) and its guides' chains (time-varying conditionals).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

from .exact.binary import configurations


class BernoulliVector(TorchDistribution):
    """prod_k Bern(z_k | sigmoid(logits_k)); batch shape logits.shape[:-1], event shape (K,)."""

    arg_constraints = {"logits": constraints.independent(constraints.real, 1)}
    support = constraints.independent(constraints.boolean, 1)
    has_enumerate_support = True

    def __init__(self, logits: Tensor, validate_args=None, _compact: Tensor | None = None):
        # _compact: the logits before any expand (set by expand, never by users), for the observed case below
        self.logits = logits
        self._compact = logits if _compact is None else _compact
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    @property
    def probs(self) -> Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> Tensor:
        return self.probs

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return BernoulliVector(self.logits.expand(batch_shape + self.event_shape), validate_args=False, _compact=self._compact)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(shape))

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        compact = self._compact
        if value.dim() == 2 and compact.dim() >= 3 and compact.shape[-2] == 1:
            # observed bits (N, D) against one logit vector per enumerated configuration, (..., C, 1, D), broadcast
            # over the N points: two matrix products on the compact logits, never a (..., C, N, D) tensor
            c = compact.squeeze(-2)
            out = F.logsigmoid(c) @ value.T + F.logsigmoid(-c) @ (1 - value).T  # (..., C, N)
            return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))
        return (value * F.logsigmoid(self.logits) + (1 - value) * F.logsigmoid(-self.logits)).sum(-1)

    def entropy(self) -> Tensor:
        p = self.probs
        return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)).sum(-1)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        k = self.event_shape[0]
        values = configurations(k, dtype=self.logits.dtype).reshape((2**k,) + (1,) * len(self.batch_shape) + (k,))
        return values.expand((2**k,) + self.batch_shape + (k,)) if expand else values


class BernoulliPixels(BernoulliVector):
    """prod_d Bern(x_d | sigmoid(logits_d)) as one event of shape (D,): the VAE's image likelihood. The same
    numbers as ``Bernoulli(logits=...).to_event(1)`` (the log-likelihood is -sum_d BCE(logits_d, x_d), and
    negating after the pixel sum is exact in floating point), one pass over the pixels cheaper: the negation
    runs on the (batch,) sums, not on every pixel, forward and backward. Observed only: no enumeration."""

    has_enumerate_support = False

    def __init__(self, logits: Tensor, validate_args=None):
        super().__init__(logits, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return BernoulliPixels(self.logits.expand(batch_shape + self.event_shape), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = torch.broadcast_tensors(self.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none").sum(-1)

    def enumerate_support(self, expand: bool = True) -> Tensor:
        raise NotImplementedError("BernoulliPixels is an observed likelihood: 2^D values are not enumerated")


class WordCounts(TorchDistribution):
    """Documents as bags of words: log_prob(n) = sum_v n_v log softmax(logits)_v, per document.

    logits: (..., V) unnormalised word log-probabilities; value: (..., V) non-negative counts.
    ``total_count`` (batch shape) is needed only to sample. The log-softmax is taken once, on the
    tensor as given; when a plate broadcasts enumerated latents (logits (2^K, 1, V) against N
    documents), log_prob is one matrix product on that compact tensor, never an (2^K, N, V) one,
    forward or backward.
    """

    arg_constraints = {"logits": constraints.independent(constraints.real, 1)}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(self, logits: Tensor, total_count: Tensor | None = None, validate_args=None, _compact=None):
        # _compact: the normalised log-probabilities before any expand (set by expand, never by users)
        self._compact = torch.log_softmax(logits, -1) if _compact is None else _compact
        self.logits = self._compact if _compact is None else logits
        self.total_count = total_count
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        total = None if self.total_count is None else self.total_count.expand(batch_shape)
        return WordCounts(self.logits.expand(batch_shape + self.event_shape), total, validate_args=False,
                          _compact=self._compact)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        compact = self._compact
        if value.dim() == 2 and compact.dim() >= 3 and compact.shape[-2] == 1:
            # one word distribution per enumerated configuration, broadcast over the N documents: one
            # matrix product on the compact tensor. (Through the expanded view, autograd would build
            # the (..., N, V) gradient of the expand.)
            out = compact.squeeze(-2) @ value.T  # (..., N)
            return out.expand(torch.broadcast_shapes(out.shape, self.batch_shape))
        return (value * self.logits).sum(-1)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        if self.total_count is None:
            raise ValueError("WordCounts needs total_count (words per document) to sample")
        shape = self._extended_shape(sample_shape)
        probs = self.logits.exp().expand(shape).reshape(-1, shape[-1])
        lengths = self.total_count.expand(shape[:-1]).reshape(-1).long()
        longest = max(int(lengths.max()) if lengths.numel() else 0, 1)
        with torch.no_grad():
            words = torch.multinomial(probs, longest, replacement=True)  # (B, longest)
            keep = torch.arange(longest, device=lengths.device) < lengths[:, None]
            counts = torch.zeros_like(probs).scatter_add_(1, words, keep.to(probs.dtype))
        return counts.reshape(shape)


class TopicWord(TorchDistribution):
    """w ~ Categorical(exp(log_table[index])): a categorical whose probabilities are a row of a table.

    log_table: (R, C) normalised log-probabilities (rows log-sum-exp to 0), e.g. LDA's topics (K, V) or
    its documents' proportions (B, K); index: long tensor of any shape (the batch shape), e.g. the topic
    z of each token, or each entry's document. log_prob(w) = log_table[index, w], broadcast (a value of
    shape (C, 1) under parallel enumeration gives (C, *batch)): only the looked-up entries are touched,
    and the gradient is a table, where ``Categorical(log_table[index])`` would broadcast its logits to
    (C, *batch, C).
    """

    arg_constraints = {}
    has_enumerate_support = False

    def __init__(self, log_table: Tensor, index: Tensor, validate_args=None):
        self.log_table = log_table
        self.index = index
        super().__init__(index.shape, torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self):
        return constraints.integer_interval(0, self.log_table.shape[-1] - 1)

    def expand(self, batch_shape, _instance=None):
        return TopicWord(self.log_table, self.index.expand(torch.Size(batch_shape)), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self.log_table[self.index, value.long()]

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        index = self.index.expand(shape).reshape(-1)
        with torch.no_grad():
            words = torch.multinomial(self.log_table.exp()[index], 1).squeeze(-1) if index.numel() else index
        return words.reshape(shape)


class MarkovChain(TorchDistribution):
    """A discrete Markov chain s_{1:T} as one event of shape (T,): the factorial HMM's chains and their guides.

    log p(s) = log softmax(init_logits)[s_1] + sum_{t < T_n} log softmax(trans_logits[t, s_t])[s_{t+1}]

    init_logits: (..., L); trans_logits: (..., T-1, L, L), row = previous state (time-varying: a guide's
    conditionals; expand a homogeneous (L, L) matrix for a model's chain); lengths: long, broadcastable to
    the batch shape: steps past a chain's length are sampled (the value must have T entries) but add
    nothing to log_prob. Not enumerable (L^T paths): score-function estimators only.
    """

    arg_constraints = {}
    has_enumerate_support = False

    def __init__(self, init_logits: Tensor, trans_logits: Tensor, lengths: Tensor, validate_args=None):
        self.init_logits = init_logits
        self.trans_logits = trans_logits
        self.lengths = lengths
        batch_shape = torch.broadcast_shapes(init_logits.shape[:-1], trans_logits.shape[:-3], lengths.shape)
        super().__init__(batch_shape, torch.Size([trans_logits.shape[-3] + 1]), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=1)
    def support(self):
        return constraints.independent(constraints.integer_interval(0, self.init_logits.shape[-1] - 1), 1)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        l = self.init_logits.shape[-1]
        t1 = self.trans_logits.shape[-3]
        return MarkovChain(self.init_logits.expand(batch_shape + (l,)), self.trans_logits.expand(batch_shape + (t1, l, l)),
                           self.lengths.expand(batch_shape), validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        value = value.long()
        l = self.init_logits.shape[-1]
        shape = torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        value = value.expand(shape + value.shape[-1:])
        log_init = torch.log_softmax(self.init_logits, -1).expand(shape + (l,))
        out = log_init.gather(-1, value[..., :1]).squeeze(-1)
        t1 = value.shape[-1] - 1
        if t1 == 0:
            return out
        log_trans = torch.log_softmax(self.trans_logits, -1).expand(shape + (t1, l, l))
        rows = log_trans.gather(-2, value[..., :-1, None, None].expand(shape + (t1, 1, l))).squeeze(-2)  # (..., T-1, L)
        steps = rows.gather(-1, value[..., 1:, None]).squeeze(-1)  # (..., T-1)
        inside = torch.arange(1, t1 + 1, device=value.device) < self.lengths.expand(shape)[..., None]
        return out + torch.where(inside, steps, 0.0).sum(-1)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        l = self.init_logits.shape[-1]
        t1 = self.trans_logits.shape[-3]
        with torch.no_grad():
            probs0 = torch.softmax(self.init_logits, -1).expand(shape + (l,)).reshape(-1, l)
            s = [torch.multinomial(probs0, 1).squeeze(-1)]
            trans = torch.softmax(self.trans_logits, -1).expand(shape + (t1, l, l)).reshape(-1, t1, l, l)
            rows = torch.arange(trans.shape[0], device=trans.device)
            for t in range(t1):
                s.append(torch.multinomial(trans[rows, t, s[-1]], 1).squeeze(-1))
        return torch.stack(s, -1).reshape(shape + (t1 + 1,))
