r"""Finite Gaussian mixture with point-estimated parameters (the frequentist case).

Generative process, for points n = 1..N and components k = 1..K::

    z_n       ~ Categorical(pi)                          pi: (K,)  on the simplex
    x_n | z_n ~ Normal(mu_{z_n}, diag(sigma_{z_n}^2))    mu, sigma: (K, D)

Graphical model::

        pi      mu, sigma
         |         |
         v         v
    +--[z_n] --> (x_n)--+
    |         points N  |
    +-------------------+

Covariances are diagonal (``covariance="diag"``, sigma: (K, D) free) or spherical
(``covariance="spherical"``, one scale per component broadcast over the D dimensions).

Tensor shapes under ``Trace.format_shapes()`` with ``x: (N, D)``::

     Sample Sites:
    points dist       |
          value     N |
        z dist    N   |
          value   N   |          (K, 1 under parallel enumeration of the guide)
        x dist    N   | D
          value   N   | D

The exact posterior p(z_n | x_n) is a K-way categorical, so everything here is
enumerable: :mod:`models.exact.gmm` holds closed-form EM, log p(x) and the posterior.
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
from .errors import DataError
from .exact import gmm as exact
from .exact.gmm import GMMParams

COVARIANCE_TYPES = ("diag", "spherical")
INIT_METHODS = ("kmeans++", "random")


@dataclass(frozen=True)
class GMMArgs:
    """Model options, as they appear under ``[model_args]`` in a config.

    num_components: K, the number of mixture components.
    covariance: "diag" (a scale per component and dimension) or "spherical" (a scale per component).
    reg_covar: variance floor added in the M-step and the initialisation, as scikit-learn does.
    init: how every method's starting parameters are chosen: "kmeans++" (k-means++ seeds, hard
        assignment, one M-step) or "random" (means at K distinct random data points, every scale the
        data's standard deviation, equal weights: a deliberately poor start).
    """

    num_components: int = 2
    covariance: str = "diag"
    reg_covar: float = 1e-6
    init: str = "kmeans++"

    def __post_init__(self) -> None:
        if self.num_components < 1:
            raise ValueError(f"model_args.num_components must be >= 1, got {self.num_components}")
        if self.covariance not in COVARIANCE_TYPES:
            raise ValueError(
                f"model_args.covariance must be one of {COVARIANCE_TYPES}, got {self.covariance!r}"
            )
        if not self.reg_covar >= 0:
            raise ValueError(f"model_args.reg_covar must be >= 0, got {self.reg_covar}")
        if self.init not in INIT_METHODS:
            raise ValueError(f"model_args.init must be one of {INIT_METHODS}, got {self.init!r}")


def model(x: Tensor, params: GMMParams) -> None:
    r"""Pyro model of the mixture given its parameters.

    z_n ~ Cat(pi);  x_n | z_n ~ N(mu_{z_n}, diag(sigma_{z_n}^2))
    x: (num_points, dim)
    """
    with pyro.plate("points", x.shape[0], device=x.device):
        z = pyro.sample("z", dist.Categorical(params.weights))  # (N,) or (K, 1) enumerated
        pyro.sample("x", dist.Normal(params.locs[z], params.scales[z]).to_event(1), obs=x)


class GMM(PyroModule):
    """The mixture with learnable point-estimated parameters, for SVI.

    Calling the module runs :func:`model` with the current constrained parameter values,
    which appear in the trace as param sites ``weights``, ``locs`` and ``scales_free``.
    """

    def __init__(self, init: GMMParams, covariance: str = "diag"):
        super().__init__()
        if covariance not in COVARIANCE_TYPES:
            raise ValueError(f"covariance must be one of {COVARIANCE_TYPES}, got {covariance!r}")
        self.covariance = covariance
        self.dim = init.dim
        self.weights = PyroParam(init.weights.detach().clone(), constraint=constraints.simplex)
        self.locs = PyroParam(init.locs.detach().clone())
        free = init.scales if covariance == "diag" else init.scales.mean(-1, keepdim=True)
        self.scales_free = PyroParam(free.detach().clone(), constraint=constraints.positive)

    @property
    def params(self) -> GMMParams:
        return GMMParams(self.weights, self.locs, self.scales_free.expand(-1, self.dim))

    def forward(self, x: Tensor) -> None:
        model(x, self.params)


def marginal_model(x: Tensor, params: GMMParams, features: Tensor | None = None) -> None:
    r"""The same mixture with z summed out exactly: x_n ~ sum_k pi_k N(mu_k, diag(sigma_k^2)).

    With no latent site left, every ELBO with an empty guide equals log p(x): SVI on this model is
    gradient ascent on EM's objective, and q(z) is implicitly the exact posterior p(z | x; theta).
    x: (num_points, dim); features: [x, x^2] (num_points, 2 dim), if already computed.
    """
    cache = None if features is None else (x, features)
    with pyro.plate("points", x.shape[0], device=x.device):
        pyro.sample("x", DiagNormalMixture(params, cache), obs=x)


class DiagNormalMixture(dist.TorchDistribution):
    """sum_k pi_k N(x | mu_k, diag(sigma_k^2)) as one distribution over x: (D,), batch over points.

    ``log_prob`` is :func:`models.exact.gmm.mixture_log_likelihood`: the log-joint expansion with a
    hand-written backward, no (N, K, D) intermediate (``MixtureSameFamily(Categorical,
    Normal.to_event(1))`` broadcasts x against every component). ``cache`` = (x, [x, x^2]) saves
    recomputing the features when exactly that tensor x is scored (checked by identity).
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)

    def __init__(self, params: GMMParams, cache: tuple[Tensor, Tensor] | None = None, batch_shape=torch.Size(),
                 validate_args=None):
        self.params, self.cache = params, cache
        super().__init__(torch.Size(batch_shape), torch.Size([params.dim]), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return DiagNormalMixture(self.params, self.cache, batch_shape, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        if self.cache is not None and value is self.cache[0]:
            feats = self.cache[1]
        else:
            feats = exact.features(value.reshape(-1, value.shape[-1]))
        return exact.mixture_log_likelihood(feats, self.params).reshape(value.shape[:-1])

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        p = self.params
        mix = dist.MixtureSameFamily(dist.Categorical(p.weights), dist.Normal(p.locs, p.scales).to_event(1))
        return mix.expand(self.batch_shape).sample(sample_shape)


class MarginalGMM(GMM):
    """:class:`GMM` whose forward runs :func:`marginal_model` (z summed out); [x, x^2] cached per x."""

    def __init__(self, init: GMMParams, covariance: str = "diag"):
        super().__init__(init, covariance)
        self._feats: tuple[Tensor, int, Tensor] | None = None

    def features(self, x: Tensor) -> Tensor:
        if self._feats is None or self._feats[0] is not x or self._feats[1] != x._version:
            self._feats = (x, x._version, exact.features(x))
        return self._feats[2]

    def forward(self, x: Tensor) -> None:
        marginal_model(x, self.params, self.features(x))


def simulate(params: GMMParams, num_points: int, seed: int) -> tuple[Tensor, Tensor]:
    """Draw ``num_points`` points from the mixture.

    Returns x: (num_points, D) and the true assignments z: (num_points,).
    """
    gen = torch.Generator().manual_seed(seed)
    z = torch.multinomial(params.weights, num_points, replacement=True, generator=gen)
    eps = torch.randn(num_points, params.dim, generator=gen, dtype=params.locs.dtype)
    return params.locs[z] + params.scales[z] * eps, z


def random_params(
    num_components: int,
    dim: int,
    seed: int,
    separation: float = 4.0,
    covariance: str = "diag",
    dtype: torch.dtype = torch.float64,
) -> GMMParams:
    """Well-separated random parameters for synthetic data with known truth.

    Means are drawn on a sphere-ish cloud of radius ~``separation`` (in units of the scales),
    scales in [0.5, 1.5], weights from a Dirichlet(5) so no component is tiny.
    """
    gen = torch.Generator().manual_seed(seed)
    locs = separation * torch.randn(num_components, dim, generator=gen, dtype=dtype)
    shape = (num_components, dim) if covariance == "diag" else (num_components, 1)
    scales = (0.5 + torch.rand(shape, generator=gen, dtype=dtype)).expand(num_components, dim)
    gamma = torch.distributions.Gamma(torch.full((num_components,), 5.0, dtype=dtype), 1.0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        weights = gamma.sample()
    return GMMParams(weights / weights.sum(), locs, scales.contiguous())


def validate_data(x, num_components: int) -> Tensor:
    """Check a data matrix before any work starts; return it as a float64 tensor.

    Raises :class:`DataError` naming the problem: not 2-D, empty, non-finite entries,
    or fewer points than components.
    """
    if not isinstance(x, Tensor):
        arr = np.asarray(x)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise DataError(f"data must be numeric; got dtype {arr.dtype}")
        x = torch.as_tensor(arr)
    if x.dim() != 2:
        raise DataError(f"data must be a matrix of shape (num_points, dim); got rank {x.dim()} shape {tuple(x.shape)}")
    if x.dtype == torch.bool or x.is_complex():
        raise DataError(f"data must be real numbers; got dtype {x.dtype}")
    x = x.to(torch.float64)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"data is empty: shape {tuple(x.shape)}")
    bad = ~torch.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise DataError(
            f"data has {int(bad.sum())} non-finite entries (NaN or inf); first at row {row}, column {col}: {x[row, col].item()}"
        )
    if x.shape[0] < num_components:
        raise DataError(f"data has {x.shape[0]} points, fewer than num_components={num_components}")
    return x


def init_params(x: Tensor, args: GMMArgs, seed: int) -> GMMParams:
    """Starting parameters shared by exact EM, SVI and (as weights/means/precisions_init) scikit-learn.

    "kmeans++": k-means++ seeds (scikit-learn's ``kmeans_plusplus``), hard assignment of every point
    to its nearest seed, then one M-step. "random": K distinct data points as means, the data's
    standard deviation as every scale (spherical: their mean), equal weights.
    """

    k = args.num_components
    if args.init == "random":
        gen = torch.Generator().manual_seed(seed)
        locs = x[torch.randperm(x.shape[0], generator=gen, device="cpu")[:k].to(x.device)].clone()
        var = x.var(0, unbiased=False) + args.reg_covar
        if args.covariance == "spherical":
            var = var.mean().expand_as(var)
        return GMMParams(x.new_full((k,), 1.0 / k), locs, var.sqrt().expand(k, -1).clone())

    from sklearn.cluster import kmeans_plusplus  # heavy import, only needed here

    centres, _ = kmeans_plusplus(x.detach().cpu().numpy(), k, random_state=seed)
    centres = torch.as_tensor(centres, dtype=x.dtype, device=x.device)
    nearest = torch.cdist(x, centres).argmin(-1)
    resp = torch.nn.functional.one_hot(nearest, k).to(x.dtype)
    return exact.m_step(x, resp, args.covariance, args.reg_covar)


def synthetic(opts: DataOptions, args: GMMArgs, seed: int) -> Dataset:
    """``opts.num_points`` points in ``opts.dim`` dimensions from :func:`random_params` (known truth)."""
    truth = random_params(args.num_components, opts.dim, seed, opts.separation, args.covariance)
    x, z = simulate(truth, opts.num_points, seed + 1)
    desc = f"synthetic mixture (K={args.num_components}, N={opts.num_points}, D={opts.dim}, separation={opts.separation})"
    return Dataset(x, desc, tuple(f"x{i}" for i in range(opts.dim)), truth=truth, labels=z)


def plot_fit(ax, x: Tensor, fits: dict[str, GMMParams], dims: tuple[int, int] = (0, 1), features=None) -> None:
    """Draw the data (first two columns by default) and each fit's components as 2-sigma ellipses."""
    from matplotlib.patches import Ellipse

    i, j = dims
    ax.scatter(x[:, i].numpy(), x[:, j].numpy(), s=6, c="0.6", lw=0)
    styles = ["-", "--", ":", "-."]
    for n, (name, params) in enumerate(fits.items()):
        colour = f"C{n}"
        for k in range(params.num_components):
            w = float(params.weights[k])
            centre = (float(params.locs[k, i]), float(params.locs[k, j]))
            width, height = 4 * float(params.scales[k, i]), 4 * float(params.scales[k, j])
            ax.add_patch(Ellipse(centre, width, height, fill=False, ec=colour, ls=styles[n % 4], lw=0.8 + 2 * w,
                                 label=name if k == 0 else None))
            ax.plot(*centre, marker="x", color=colour, ms=5)
    if features is not None:
        ax.set_xlabel(features[i])
        ax.set_ylabel(features[j])
