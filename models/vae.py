r"""Variational autoencoder with L layers of Gaussian latents (Kingma & Welling 2014; Rezende et al. 2014).

Generative process, for points n = 1..N and layers l = L..1 (h^{L} on top, h^{1} next to the data)::

    h^L_n ~ N(0, I)                                                   (K_L,)
    h^l_n | h^{l+1}_n ~ N(mu_l(h^{l+1}_n), diag sigma_l^2(h^{l+1}_n))    (K_l,), an MLP per layer
    x_n | h^1_n ~ Bern(sigmoid(f(h^1_n)))                              binary pixels (D,)
               or N(f(h^1_n), diag g(h^1_n)^2)                         real data
    linear = true (one layer): x_n | h_n ~ N(W h_n + b, sigma^2 I)      probabilistic PCA, exact

Graphical model (L = 2)::

    +-- h^2_n --> h^1_n --> (x_n) --+
    |                 points N      |
    +-------------------------------+

Tensor shapes under ``Trace.format_shapes()`` with x: (N, D), L = 2::

     Sample Sites:
    points dist       |
          value     N |
        h2 dist     N | K2
          value     N | K2
        h1 dist     N | K1
          value     N | K1
         x dist     N | D
          value     N | D

The decoder (every mu_l, sigma_l, f, g, or W, b, sigma^2) is a :class:`Decoder` PyroModule; the model is a
function of it. The linear one-layer case has the closed-form reference :mod:`models.exact.ppca`. The image data
sets (digits, MNIST, Fashion-MNIST) are loaded by :mod:`models.datasets.images`.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import Tensor, nn
from torch.distributions import constraints

from .distributions import BernoulliPixels
from .errors import DataError
from .exact import ppca

LIKELIHOODS = ("bernoulli", "gaussian")


@dataclass(frozen=True)
class VAEArgs:
    """Model options, as they appear under ``[model_args]`` in a config.

    latent_sizes: K_1, ..., K_L, from the layer next to the data up (one layer: [K]).
    hidden: hidden layer sizes of every decoder network.
    likelihood: "bernoulli" (pixels in [0, 1]) or "gaussian" (real data, a scale per dimension).
    linear: one layer, x = W h + b + N(0, sigma^2 I): probabilistic PCA, with its exact reference.
    """

    latent_sizes: tuple[int, ...] = (2,)
    hidden: tuple[int, ...] = (200,)
    likelihood: str = "bernoulli"
    linear: bool = False

    def __post_init__(self) -> None:
        if not self.latent_sizes or any(k < 1 for k in self.latent_sizes):
            raise ValueError(f"model_args.latent_sizes must be one or more sizes >= 1, got {list(self.latent_sizes)}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"model_args.hidden sizes must be >= 1, got {list(self.hidden)}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"model_args.likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.linear and (len(self.latent_sizes) != 1 or self.likelihood != "gaussian"):
            raise ValueError("model_args.linear = true is probabilistic PCA: one layer (latent_sizes = [K]) and likelihood = 'gaussian'")


def exact_size_error(args: VAEArgs) -> str:
    """The exact reference exists only for the linear one-layer case."""
    if args.linear:
        return ""
    return "the VAE's exact reference (probabilistic PCA) needs model_args.linear = true"


def _mlp(sizes: Sequence[int], device: torch.device | None = None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b, device=device), nn.Tanh()]
    return nn.Sequential(*layers[:-1])


def network(module: nn.Module, name: str) -> nn.Module:
    """``module.<name>``, a plain torch network held by a PyroModule, looked up past ``PyroModule.__getattr__``.

    With ``module_local_params`` (which vizoo sets), every access to a PyroModule's plain child network emits a
    ``param`` statement for each of that network's parameters. Nothing reads them: the parameters stay in
    their modules, the training loop optimises ``module.parameters()`` and backpropagates Pyro's
    ``differentiable_loss``. They cost about 0.35 ms of a 6 ms VAE step (L = 1, 12 parameters), so the
    forward passes take their networks from here. (``pyro.infer.SVI`` does not work with module-local plain
    networks anyway: it asks each of their sites for an ``unconstrained()`` value they do not have. One thing
    does read them: ``Trace_ELBO.loss_and_grads`` backpropagates only when some ``param`` site exists, so
    train these modules with ``differentiable_loss(...).backward()``, as ``experiments.train`` does.)"""
    return nn.Module.__getattr__(module, name)


_LAST_ROWS: list = []  # [weakref to x, x's version, weakref to idx, x[idx]]: the last rows taken, see rows()


def rows(x: Tensor, idx: Tensor) -> Tensor:
    """``x[idx]``, the plate's points, taken once per ELBO estimate. Trace_ELBO runs the guide and then the model
    replayed on the guide's trace, so both plates hand out the very same index tensor: the second call returns
    the first call's copy (one slot, keyed by the identity of ``x`` and ``idx``, held by weak references, and by
    ``x``'s version counter, so an in-place change to ``x`` is never missed). A plate over all the points in
    order gives ``x`` itself. Taking the rows twice cost about 0.5 ms of a 17 ms step (L = 1, batch 500)."""
    if x.requires_grad:
        return x[idx]
    if len(idx) == x.shape[0] and torch.equal(idx, torch.arange(len(idx), device=idx.device)):
        return x
    if _LAST_ROWS and _LAST_ROWS[0]() is x and _LAST_ROWS[2]() is idx and _LAST_ROWS[1] == x._version:
        return _LAST_ROWS[3]
    out = x[idx]
    _LAST_ROWS[:] = [weakref.ref(x), x._version, weakref.ref(idx), out]
    return out


class GaussianLayer(nn.Module):
    """in -> MLP -> (loc, scale) of a diagonal Gaussian over ``out`` dimensions; scale = softplus + 1e-4."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, device: torch.device | None = None):
        super().__init__()
        self.net = _mlp([in_dim, *hidden, 2 * out_dim], device)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw = self.net(h).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-4


class Decoder(PyroModule):
    """Every generative network. ``layers[l]`` maps h^{l+2} to the Gaussian over h^{l+1} (0-based l, L-1 of them);
    ``out`` maps h^1 to x's logits (Bernoulli), (loc, scale) (Gaussian), or W h + b with ``noise_var`` (linear)."""

    def __init__(self, dim: int, args: VAEArgs, noise_var: float = 1.0, device: torch.device | None = None):
        super().__init__()
        self.args = args
        sizes = args.latent_sizes
        self.layers = nn.ModuleList(GaussianLayer(sizes[l + 1], args.hidden, sizes[l], device) for l in range(len(sizes) - 1))
        if args.linear:
            self.out = nn.Linear(sizes[0], dim, device=device)
            self.noise_var = PyroParam(torch.tensor(float(noise_var), device=device), constraint=constraints.positive)
        elif args.likelihood == "gaussian":
            self.out = GaussianLayer(sizes[0], args.hidden, dim, device)
        else:
            self.out = _mlp([sizes[0], *args.hidden, dim], device)

    def likelihood(self, h1: Tensor):
        """p(x | h^1) as a distribution with event shape (D,)."""
        out = network(self, "out")
        if self.args.linear:
            return dist.Normal(out(h1), self.noise_var.sqrt()).to_event(1)
        if self.args.likelihood == "gaussian":
            loc, scale = out(h1)
            return dist.Normal(loc, scale).to_event(1)
        return BernoulliPixels(out(h1))  # = dist.Bernoulli(logits=...).to_event(1), one pass cheaper

    @property
    def params(self) -> "Decoder":
        return self

    def detach(self) -> "Decoder":
        return copy.deepcopy(self)

    def ppca(self) -> ppca.PPCAParams:
        """The linear decoder as PPCA parameters (linear = true only)."""
        return ppca.PPCAParams(self.out.weight, self.out.bias, self.noise_var)

    def mean(self, h1: Tensor) -> Tensor:
        """E[x | h^1]: pixel probabilities (Bernoulli) or the Gaussian's mean."""
        if self.args.linear:
            return self.out(h1)
        if self.args.likelihood == "gaussian":
            return self.out(h1)[0]
        return torch.sigmoid(self.out(h1))

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> None:
        model(x, self, subsample_size, subsample)


def model(x: Tensor, decoder: Decoder, subsample_size: int | None = None, subsample: Tensor | None = None) -> None:
    r"""Pyro model: h^L ~ N(0, I); h^l | h^{l+1} ~ N(mu_l, sigma_l^2); x | h^1 ~ p(x | h^1).  x: (N, D).
    ``subsample_size`` draws a minibatch of points; ``subsample`` gives their indices."""
    sizes = decoder.args.latent_sizes
    depth = len(sizes)
    layers = network(decoder, "layers")
    with pyro.plate("points", x.shape[0], subsample_size=subsample_size, subsample=subsample, device=x.device) as idx:
        top = x.new_zeros(len(idx), sizes[-1])
        h = pyro.sample(f"h{depth}", dist.Normal(top, 1.0).to_event(1))
        for l in reversed(range(depth - 1)):  # h^{l+2} -> h^{l+1}
            loc, scale = layers[l](h)
            h = pyro.sample(f"h{l + 1}", dist.Normal(loc, scale).to_event(1))
        pyro.sample("x", decoder.likelihood(h), obs=rows(x, idx))


def validate_data(x, args: VAEArgs) -> Tensor:
    """(N, D) finite numbers; 0 or 1 for the Bernoulli likelihood. Raises DataError naming the problem."""
    if not isinstance(x, Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise DataError(f"images must be a (num_points, num_pixels) matrix (flatten each image), got {shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"images are empty: shape {tuple(x.shape)}")
    if x.is_complex():  # to(float64) would drop the imaginary part with only a warning
        raise DataError(f"images must be real numbers, got dtype {x.dtype}")
    x = x.to(torch.float64)
    if not torch.isfinite(x).all():
        n, d = map(int, torch.nonzero(~torch.isfinite(x))[0])
        raise DataError(f"images: point {n}, pixel {d} is {float(x[n, d])} (non-finite)")
    if args.likelihood == "bernoulli" and ((x != 0) & (x != 1)).any():
        n, d = map(int, torch.nonzero((x != 0) & (x != 1))[0])
        hint = "rescale to [0, 1] (e.g. divide by 255), then binarise" if float(x.max()) > 1 or float(x.min()) < 0 else "binarise"
        raise DataError(
            f"images: the Bernoulli likelihood needs binary pixels (0 or 1), but point {n}, pixel {d} is {float(x[n, d])} "
            f"(range {float(x.min())} to {float(x.max())}): {hint} (the bundled loaders binarise, seeded)"
        )
    if args.linear and not 1 <= args.latent_sizes[0] < x.shape[1]:
        raise DataError(f"model_args.latent_sizes = [{args.latent_sizes[0]}] must be below the data's dimension {x.shape[1]} for PPCA")
    return x


def init_params(x: Tensor, args: VAEArgs, seed: int) -> Decoder:
    """A decoder with torch's default initialisation (seeded); the output bias starts at the data's mean
    (its logit for Bernoulli pixels); the linear case's sigma^2 at the data's mean variance."""
    torch.manual_seed(seed)
    decoder = Decoder(x.shape[1], args, noise_var=float(x.var(0).mean()), device=x.device).to(x.dtype)
    mean = x.mean(0)
    with torch.no_grad():
        last = decoder.out if isinstance(decoder.out, nn.Linear) else None
        if last is None:
            net = decoder.out.net if isinstance(decoder.out, GaussianLayer) else decoder.out
            last = net[-1]
        if args.likelihood == "bernoulli":
            last.bias.copy_(torch.logit(mean.clamp(1e-3, 1 - 1e-3)))
        elif args.linear:
            last.bias.copy_(mean)
        else:
            last.bias[: x.shape[1]].copy_(mean)
    return decoder


def learnable(init: Decoder, args: VAEArgs) -> Decoder:
    """A fresh copy of the shared initial decoder, for one guide's training."""
    return copy.deepcopy(init)


def simulate(decoder: Decoder, num_points: int, dim: int, seed: int) -> Tensor:
    """x: (N, D) drawn from the model (ancestral sampling through the Pyro model)."""
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        device = next(decoder.parameters()).device
        trace = pyro.poutine.trace(pyro.poutine.uncondition(model)).get_trace(torch.zeros(num_points, dim, device=device), decoder)
    return trace.nodes["x"]["value"]


class PPCAFit(NamedTuple):
    """The exact reference's result, in the runner's shape: params (a Decoder), log_likelihood per point
    ([value]), num_iters (0: closed form), converged."""

    params: Decoder
    log_likelihood: list[float]
    num_iters: int
    converged: bool


def fit_ppca(x: Tensor, init: Decoder, args: VAEArgs) -> PPCAFit:
    """Tipping & Bishop's closed-form MLE, written into a copy of the linear decoder."""
    mle = ppca.fit_mle(x, args.latent_sizes[0])
    decoder = copy.deepcopy(init)
    with torch.no_grad():
        decoder.out.weight.copy_(mle.weight)
        decoder.out.bias.copy_(mle.bias)
    decoder.noise_var = mle.noise_var.detach().clone()
    return PPCAFit(decoder, [float(ppca.log_evidence(x, mle).mean())], 0, True)
