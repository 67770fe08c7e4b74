r"""Latent factor document model: K binary factors per document, words drawn from a neural decoder.

Generative process, for documents d = 1..D, factors k = 1..K, vocabulary v = 1..V::

    z_dk ~ Bernoulli(sigmoid(a_k))                            a: (K,) prior logits
    f(z_d) = softmax(g(z_d; theta))                           g: K -> hidden -> V, an MLP (tanh), or
                                                              linear when hidden = () (then each factor
                                                              adds its own row of word logits)
    w_dn | z_d ~ Categorical(f(z_d)),   n = 1..N_d            the words, i.i.d. given the factors

Only the bag of words x_d = counts of each word (V,) matters: log p(w_d | z_d) = sum_v x_dv log f(z_d)_v
(the probability of the word sequence; no multinomial coefficient). Factors are independent a priori
and, through the shared decoder, dependent a posteriori.

Graphical model::

      a        theta
      |          |
      v          v
    +--[z_d] --> (x_d)--+
    |  (K,)      (V,)   |
    |          docs D   |
    +-------------------+

Tensor shapes under ``Trace.format_shapes()`` with ``x: (D, V)``::

     Sample Sites:
      docs dist       |
          value     D |
        z dist    D   | K
          value   D   | K        (2^K, 1 | K under parallel enumeration of the guide)
        x dist    D   | V
          value   D   | V

:mod:`models.exact.lfdm` enumerates the 2^K configurations (decoding each once) for log p(x), the
posterior and KL, and fits by generalised EM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor, nn

from .datasets import DataOptions, Dataset, corpora
from .distributions import BernoulliVector, WordCounts
from .exact.lfdm import LFDMParams, decode


@dataclass(frozen=True)
class LFDMArgs:
    """Model options, as they appear under ``[model_args]`` in a config.

    num_factors: K, binary factors per document (exact enumeration up to 20, TraceEnum_ELBO up to 12).
    hidden: the decoder's hidden layer sizes; () makes it linear (word logits = b + z W).
    init_scale: standard deviation of the initial decoder weights (biases start at the corpus's
        log word frequencies, so the initial model is the unigram model plus small factor effects).
    """

    num_factors: int = 4
    hidden: tuple[int, ...] = ()
    init_scale: float = 0.5

    def __post_init__(self) -> None:
        if self.num_factors < 1:
            raise ValueError(f"model_args.num_factors must be >= 1, got {self.num_factors}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"model_args.hidden sizes must be >= 1, got {list(self.hidden)}")
        if not self.init_scale > 0:
            raise ValueError(f"model_args.init_scale must be > 0, got {self.init_scale}")


def model(x: Tensor, params: LFDMParams, subsample: Tensor | None = None) -> None:
    r"""Pyro model of the documents given the parameters.

    z_d ~ prod_k Bern(sigmoid(a_k));  x_d | z_d ~ WordCounts(softmax(g(z_d)))
    x: (num_docs, vocab_size) word counts; ``subsample`` (B,): only these documents, the plate scaled by D / B
    (a data-parallel process's shard, experiments/distributed.py)
    """
    num_docs, k = x.shape[0], params.num_latents
    with pyro.plate("docs", num_docs, subsample=subsample, device=x.device) as idx:
        rows = x if subsample is None else x[idx]
        z = pyro.sample("z", BernoulliVector(params.prior_logits.expand(len(idx), k)))  # (D, K)
        pyro.sample("x", WordCounts(decode(z, params), total_count=rows.sum(-1)), obs=rows)


class LFDM(PyroModule):
    """The model with learnable parameters: ``prior_logits`` and the decoder (a torch MLP)."""

    def __init__(self, init: LFDMParams):
        super().__init__()
        self.prior_logits = PyroParam(init.prior_logits.detach().clone())
        linears = []
        for w, b in init.layers:
            layer = nn.Linear(w.shape[1], w.shape[0], dtype=w.dtype, device=w.device)
            with torch.no_grad():
                layer.weight.copy_(w)
                layer.bias.copy_(b)
            linears.append(layer)
        self.decoder = nn.ModuleList(linears)

    @property
    def params(self) -> LFDMParams:
        return LFDMParams(self.prior_logits, tuple((layer.weight, layer.bias) for layer in self.decoder))

    def forward(self, x: Tensor, subsample: Tensor | None = None) -> None:
        model(x, self.params, subsample)


def random_params(num_factors: int, vocab_size: int, hidden: tuple[int, ...], seed: int, scale: float,
                  bias: Tensor | None = None, dtype=torch.float64, device: torch.device | str = "cpu") -> LFDMParams:
    """Decoder weights ~ N(0, scale^2) (a generator seeded with ``seed``, drawn on the CPU and moved to
    ``device``), biases 0 or ``bias`` at the output; P(z_k = 1) = 0.2."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [num_factors, *hidden, vocab_size]
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        weight = scale * torch.randn(b, a, generator=gen, dtype=dtype, device="cpu").to(device)
        layers.append((weight, torch.zeros(b, dtype=dtype, device=device)))
    if bias is not None:
        layers[-1] = (layers[-1][0], bias.to(device, dtype))
    return LFDMParams(torch.full((num_factors,), math.log(0.2 / 0.8), dtype=dtype, device=device), tuple(layers))


def true_params(num_factors: int, vocab_size: int, hidden: tuple[int, ...], seed: int, dtype=torch.float64) -> LFDMParams:
    """Known parameters for synthetic documents.

    Linear decoder (hidden = ()): Zipf-like base frequencies (bias_v = -log(v + 1)), and each factor
    raises the logits of its own ~10% of the vocabulary by 2.5 (disjoint topics of words), so factors
    are identifiable up to relabelling. With hidden layers: random weights, N(0, 1.5^2 / fan_in).
    P(z_k = 1) = 0.3.
    """
    prior = torch.full((num_factors,), math.log(0.3 / 0.7), dtype=dtype)
    base = -torch.log(torch.arange(1, vocab_size + 1, dtype=dtype))
    if not hidden:
        gen = torch.Generator().manual_seed(seed)
        owner = torch.randperm(vocab_size, generator=gen) % max(10, num_factors)  # word -> owning factor (or none)
        weight = 2.5 * (owner[None, :] == torch.arange(num_factors)[:, None]).to(dtype)  # (K, V)
        return LFDMParams(prior, ((weight.T.contiguous(), base),))
    gen = torch.Generator().manual_seed(seed)
    sizes = [num_factors, *hidden, vocab_size]
    layers = tuple(
        (1.5 / math.sqrt(a) * torch.randn(b, a, generator=gen, dtype=dtype), torch.zeros(b, dtype=dtype))
        for a, b in zip(sizes[:-1], sizes[1:])
    )
    return LFDMParams(prior, layers[:-1] + ((layers[-1][0], base),))


def simulate(params: LFDMParams, num_docs: int, doc_length: float, seed: int) -> tuple[Tensor, Tensor]:
    """Draw documents: lengths ~ Poisson(doc_length) (at least 1 word), factors, then words.

    Returns counts x: (D, V) and the true factors z: (D, K).
    """
    gen = torch.Generator().manual_seed(seed)
    dtype = params.prior_logits.dtype
    z = torch.bernoulli(torch.sigmoid(params.prior_logits).expand(num_docs, -1).contiguous(), generator=gen)
    lengths = torch.poisson(torch.full((num_docs,), float(doc_length), dtype=dtype), generator=gen).clamp_min(1)
    probs = torch.softmax(decode(z.to(dtype), params), -1)
    longest = int(lengths.max())
    words = torch.multinomial(probs, longest, replacement=True, generator=gen)
    keep = (torch.arange(longest) < lengths[:, None]).to(dtype)
    return torch.zeros_like(probs).scatter_add_(1, words, keep), z


def validate_data(x, vocab_size: int | None = None) -> Tensor:
    """Word counts (D, V): non-negative integers, no empty document; see :func:`models.datasets.corpora.validate_counts`."""
    return corpora.validate_counts(x, vocab_size)


def init_params(x: Tensor, args: LFDMArgs, seed: int) -> LFDMParams:
    """Starting parameters shared by generalised EM and every guide: random decoder weights
    (N(0, init_scale^2)), output biases at the corpus's smoothed log word frequencies, P(z_k = 1) = 0.2."""
    freq = (x.sum(0) + 0.5) / (x.sum() + 0.5 * x.shape[1])
    return random_params(args.num_factors, x.shape[1], args.hidden, seed, args.init_scale, bias=freq.log(), dtype=x.dtype,
                         device=x.device)


def synthetic(opts: DataOptions, args: LFDMArgs, seed: int) -> Dataset:
    """``opts.num_points`` documents of mean length ``opts.doc_length`` over ``opts.dim`` words (known truth)."""
    truth = true_params(args.num_factors, opts.dim, args.hidden, seed)
    x, z = simulate(truth, opts.num_points, opts.doc_length, seed + 1)
    desc = f"synthetic documents (K={args.num_factors}, V={opts.dim}, D={opts.num_points}, mean length {opts.doc_length})"
    return Dataset(x, desc, tuple(f"w{v}" for v in range(opts.dim)), truth=truth, labels=z)


def describe_fit(fits: dict[str, LFDMParams], features: tuple[str, ...], num_words: int = 10) -> str:
    """Markdown: for each method, each factor's prior and the words it makes most more likely."""
    out = []
    for name, p in fits.items():
        effects = p.factor_effects()
        top = effects.topk(min(num_words, effects.shape[-1]), dim=-1).indices
        rows = [
            f"| {k} | {float(torch.sigmoid(p.prior_logits[k])):.3f} | " + ", ".join(features[int(v)] for v in top[k]) + " |"
            for k in range(p.num_latents)
        ]
        out.append(f"### {name}: words each factor raises most\n\n| factor | P(z=1) | top words |\n|---|---:|---|\n"
                   + "\n".join(rows))
    return "\n\n".join(out)
