"""The model registry: one explicit dict of :class:`ModelSpec`, built below.

Adding a model is one module (``models/<name>.py`` with its guides in ``guides/<name>.py`` and, where
tractable, an exact reference in ``models/exact/<name>.py``) plus one entry in :data:`MODELS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import pyro
from torch import Tensor, nn

from guides import binary as binary_guides
from guides import fhmm as fhmm_guides
from guides import gmm as gmm_guides
from guides import lda as lda_guides
from guides import lfdm as lfdm_guides
from guides import noisy_or as noisy_or_guides
from guides import vae as vae_guides
from models import datasets, fhmm, gmm, lda, lfdm, noisy_or, vae
from models.datasets import Dataset, DataOptions
from models.errors import ConfigError, DataError
from models.exact import fhmm as fhmm_exact
from models.exact import gmm as gmm_exact
from models.exact import lfdm as lfdm_exact
from models.exact import noisy_or as noisy_or_exact
from models.exact import draws, ppca
from models.exact.draws import from_table

# Parameters of PyroModules live in their modules, not in Pyro's global param store: two runs in one
# process never share state, and a module's state_dict is all there is to save.
pyro.settings.set(module_local_params=True)

ELBOS = ("Trace_ELBO", "TraceGraph_ELBO", "TraceEnum_ELBO", "TraceMeanField_ELBO", "Analytic_ELBO")


@dataclass(frozen=True)
class GuideSpec:
    """A guide family for one model.

    build(x, init, **guide_args) -> nn.Module whose forward(x) is the Pyro guide and whose
    ``probs(x, params)`` gives the table of q(z) the exact reference scores.
    valid_elbos: the estimators this guide is correct with; why_not: why the others are not.
    learnable: the model module to train with this guide, when it is not the spec's own (e.g. a
    collapsed model with z summed out, for a guide with no local latents).
    optimum(x, params, start=None) -> the best member of this guide's family for every point at ``params``, in
    the form ``probs`` gives (coordinate ascent, fixed points or closed form): the reference of the approximation
    gap, ELBO(optimum) <= log p(x), and of the amortisation gap, ELBO(optimum) - ELBO(amortised q). Exact models
    only. Coordinate ascent finds a local optimum: ``start`` (a q in ``probs`` form, e.g. the trained guide's)
    starts it there instead of at the prior, so it ends at least as high as ``start``; closed forms ignore it.
    """

    name: str
    summary: str
    build: Callable[..., nn.Module]
    valid_elbos: tuple[str, ...]
    why_not: str = ""
    learnable: Callable[..., nn.Module] | None = None
    optimum: Callable[..., Any] | None = None


@dataclass(frozen=True)
class ExactReference:
    """The reference fit, and exact quantities for models whose posterior over the latents can be enumerated.

    fit(x, init, args, max_iter, tol) -> a result with ``params``, ``num_iters``, ``converged`` and the
        objective's trace per point: ``log_likelihood`` (objective "log p(x)", exact EM) or ``elbo``
        (objective "ELBO": a closed-form variational reference such as CAVI, for models whose
        posterior is intractable)
    log_evidence(x, params) -> log p(x) (scalar, summed over points); None when intractable
    elbo(x, params, q) / kl(x, params, q): ELBO(q) and KL(q || p(z|x)) for a guide's table q (enumerable only)
    draws(x, params, num_samples, generator) -> {site: (S, N, ...)}: exact posterior draws of the model's latent
        sites for a few points, in the sites' own layout (the comparison's pictures and ArviZ export)
    """

    fit: Callable[..., Any]
    log_evidence: Callable[..., Tensor] | None = None
    elbo: Callable[..., Tensor] | None = None
    kl: Callable[..., Tensor] | None = None
    draws: Callable[..., dict[str, Tensor]] | None = None
    method: str = "exact EM"
    objective: str = "log p(x)"

    @property
    def enumerable(self) -> bool:
        return self.log_evidence is not None


@dataclass(frozen=True)
class ModelSpec:
    """Everything the runner needs to know about a model; the runner knows nothing else.

    args_type: dataclass of the model's options (``[model_args]`` in a config).
    learnable(init, args) -> PyroModule: forward(x) runs the model; ``.params`` the current values.
    validate(x, args) -> Tensor: checks data before any work starts (raises DataError).
    init_params(x, args, seed): the initial parameters shared by EM and every guide.
    datasets: name -> loader(DataOptions, args, seed) -> Dataset.
    plot_fit(ax, x, fits, features=...): optional; draws the data and each method's fitted parameters.
    describe(args) -> str: the model's size in a few words, for titles (e.g. "K=3").
    describe_fit(fits, features) -> str: optional Markdown about each method's fit, for the report.
    latent_field: the ``model_args`` field that counts binary latents per point, for models whose exact
        reference enumerates 2^K configurations; the config checks it against the enumeration limits.
    real_valued: data are real numbers (a user's file is standardised when asked); False for binary
        or count data, which are never rescaled.
    minibatch: model and guides take ``subsample_size`` (plate subsampling, ``svi.batch_size``).
    fitted(model, guide) -> the fitted parameters to save, report and evaluate (default: the model's
        ``params``; LDA adds the guide's q(beta)).
    bound(x, fitted, guide) -> the guide's ELBO in closed form (scalar), for models that are not
        enumerable; otherwise the run reports a Monte Carlo average.
    heldout(x_train, x_test, fitted, seed, guide=, samples=, refit_steps=) -> {metric: value}: the model's
        held-out evaluation, run on every method when ``data.heldout`` > 0 or the data set comes with a fixed
        test set (guide: the method's trained guide, None for the exact fit; samples, refit_steps: ``[eval]``).
    importance(x, fitted, guide, seed, samples=, points=) -> {final_elbo_per_point, final_elbo_se,
        log_likelihood_per_point, log_likelihood_se, *_method}: Monte Carlo evaluation for models that are
        neither enumerable nor closed form (the VAE's importance-sampled log p(x), IWAE).
    pictures(x, fits, guides, labels, seed) -> {file name: matplotlib figure}: the model's own pictures, which
        the runner writes into the run folder (fits: method -> fitted parameters; guides: method -> trained guide).
    exact_size_error(args) -> str: why the exact reference is out of reach at these args ("" when it is
        not), for models whose exact cost is not set by ``latent_field`` (the factorial HMM's L^M).
    """

    name: str
    summary: str
    args_type: type
    model: Callable[..., None]
    learnable: Callable[..., nn.Module]
    simulate: Callable[..., Any]
    validate: Callable[..., Tensor]
    init_params: Callable[..., Any]
    guides: Mapping[str, GuideSpec]
    exact: ExactReference | None
    datasets: Mapping[str, Callable[..., Dataset]]
    plot_fit: Callable[..., None] | None = None
    describe: Callable[[Any], str] = lambda args: ""
    describe_fit: Callable[..., str] | None = None
    latent_field: str = ""
    real_valued: bool = True
    minibatch: bool = False
    fitted: Callable[..., Any] = lambda model, guide: model.params.detach()
    bound: Callable[..., Tensor] | None = None
    heldout: Callable[..., dict[str, float]] | None = None
    importance: Callable[..., dict[str, Any]] | None = None
    pictures: Callable[..., list[str]] | None = None
    exact_size_error: Callable[[Any], str] = lambda args: ""

    def load(self, opts: DataOptions, args: Any, seed: int) -> Dataset:
        """Load ``opts.name`` (or a user file) and validate it for this model."""
        if opts.name == "file":
            data = datasets.from_file(opts.path, opts.standardise and self.real_valued)
        else:
            data = self.datasets[opts.name](opts, args, seed)
        x = self.validate(data.x, args)
        x_test = None if data.x_test is None else self.validate(data.x_test, args)
        if x_test is not None and x_test.shape[-1] != x.shape[-1]:
            raise DataError(f"the test set has {x_test.shape[-1]} columns (features, pixels), the training data {x.shape[-1]}: "
                            "they must match")
        return data._replace(x=x, x_test=x_test)


_GMM_WHY_NOT = "TraceMeanField_ELBO needs a fully reparameterised guide, and z is discrete"
_NOISY_OR_OPTIMUM = lambda s, p, start=None: noisy_or_exact.best_mean_field(s, p, init=start).probs  # noqa: E731
_LFDM_OPTIMUM = lambda x, p, start=None: lfdm_exact.best_mean_field(x, p, init=start).probs  # noqa: E731
_GMM_OPTIMUM = lambda x, p, start=None: gmm_exact.posterior(x, p)  # noqa: E731  mean field is exact: one optimum
_PPCA_OPTIMUM = lambda x, dec, start=None: ppca.best_diagonal(x, dec.ppca())  # noqa: E731  closed form


def _fhmm_optimum(family: str):
    def optimum(y, p, start=None):
        return fhmm_exact.fit_mean_field(y, p, family, init=None if start is None else start.marginals.clone()).q
    return optimum

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="gmm",
            summary="Gaussian mixture, diagonal or spherical covariances, point-estimated parameters",
            args_type=gmm.GMMArgs,
            model=gmm.model,
            learnable=lambda init, args: gmm.GMM(init, args.covariance),
            simulate=gmm.simulate,
            validate=lambda x, args: gmm.validate_data(x, args.num_components),
            init_params=gmm.init_params,
            guides={
                "mean_field": GuideSpec(
                    "mean_field", "q(z_n) = Cat(phi_n), free phi_n per point", gmm_guides.mean_field,
                    gmm_guides.VALID_ELBOS, _GMM_WHY_NOT, optimum=_GMM_OPTIMUM,
                ),
                "amortised": GuideSpec(
                    "amortised", "q(z_n | x_n) = Cat(softmax(MLP(x_n)))", gmm_guides.amortised,
                    gmm_guides.VALID_ELBOS, _GMM_WHY_NOT, optimum=_GMM_OPTIMUM,
                ),
                "marginal": GuideSpec(
                    "marginal", "no local guide: z summed out in the model, ELBO = log p(x) (the fast path)",
                    gmm_guides.marginal, ELBOS,
                    learnable=lambda init, args: gmm.MarginalGMM(init, args.covariance),
                ),
            },
            exact=ExactReference(
                log_evidence=gmm_exact.log_evidence,
                elbo=gmm_exact.elbo,
                kl=gmm_exact.kl_to_posterior,
                draws=lambda x, p, s, gen: {"z": from_table(gmm_exact.log_joint(x, p), s, gen)},
                fit=lambda x, init, args, max_iter, tol: gmm_exact.fit_em(
                    x, init, args.covariance, args.reg_covar, max_iter, tol
                ),
            ),
            datasets={
                "faithful": lambda opts, args, seed: datasets.faithful(opts.standardise),
                "iris": lambda opts, args, seed: datasets.iris(opts.standardise),
                "synthetic": gmm.synthetic,
            },
            plot_fit=gmm.plot_fit,
            describe=lambda args: f"K={args.num_components}, {args.covariance} covariances",
        ),
        ModelSpec(
            name="noisy_or",
            summary="Noisy-OR network: K binary causes, J binary symptoms, explaining away; exact up to K=20",
            args_type=noisy_or.NoisyORArgs,
            model=noisy_or.model,
            learnable=lambda init, args: noisy_or.NoisyOR(init),
            simulate=noisy_or.simulate,
            validate=lambda x, args: noisy_or.validate_data(x, args.num_causes),
            init_params=noisy_or.init_params,
            guides={
                "mean_field": GuideSpec(
                    "mean_field", "q(d_n) = prod_i Bern(b_ni), free b per observation", noisy_or_guides.mean_field,
                    binary_guides.VALID_ELBOS, binary_guides.WHY_NOT, optimum=_NOISY_OR_OPTIMUM,
                ),
                "amortised": GuideSpec(
                    "amortised", "q(d_n | s_n) = prod_i Bern(sigmoid(MLP(s_n))_i)", noisy_or_guides.amortised,
                    binary_guides.VALID_ELBOS, binary_guides.WHY_NOT, optimum=_NOISY_OR_OPTIMUM,
                ),
            },
            exact=ExactReference(
                log_evidence=noisy_or_exact.log_evidence,
                elbo=noisy_or_exact.elbo,
                kl=noisy_or_exact.kl_to_posterior,
                draws=lambda x, p, s, gen: {"d": noisy_or_exact.draws(x, p, s, gen)},
                fit=lambda x, init, args, max_iter, tol: noisy_or_exact.fit_em(x, init, max_iter, tol),
                method="generalised EM",
            ),
            datasets={
                "synthetic": noisy_or.synthetic,
                "std": lambda opts, args, seed: datasets.std_symptoms(),
            },
            describe=lambda args: f"K={args.num_causes} causes",
            describe_fit=noisy_or.describe_fit,
            latent_field="num_causes",
            real_valued=False,
        ),
        ModelSpec(
            name="lfdm",
            summary="Latent factor document model: K binary factors, words from a neural decoder; exact up to K=20",
            args_type=lfdm.LFDMArgs,
            model=lfdm.model,
            learnable=lambda init, args: lfdm.LFDM(init),
            simulate=lfdm.simulate,
            validate=lambda x, args: lfdm.validate_data(x),
            init_params=lfdm.init_params,
            guides={
                "mean_field": GuideSpec(
                    "mean_field", "q(z_d) = prod_k Bern(b_dk), free b per document", lfdm_guides.mean_field,
                    binary_guides.VALID_ELBOS, binary_guides.WHY_NOT, optimum=_LFDM_OPTIMUM,
                ),
                "amortised": GuideSpec(
                    "amortised", "q(z_d | x_d) = prod_k Bern(sigmoid(MLP(log(1 + x_d)))_k)", lfdm_guides.amortised,
                    binary_guides.VALID_ELBOS, binary_guides.WHY_NOT, optimum=_LFDM_OPTIMUM,
                ),
            },
            exact=ExactReference(
                log_evidence=lfdm_exact.log_evidence,
                elbo=lfdm_exact.elbo,
                kl=lfdm_exact.kl_to_posterior,
                draws=lambda x, p, s, gen: {"z": lfdm_exact.draws(x, p, s, gen)},
                fit=lambda x, init, args, max_iter, tol: lfdm_exact.fit_em(x, init, max_iter, tol),
                method="generalised EM",
            ),
            datasets={
                "synthetic": lfdm.synthetic,
                "news": datasets.news,
                "reuters": datasets.reuters,
            },
            describe=lambda args: f"K={args.num_factors} factors, decoder hidden={list(args.hidden)}",
            describe_fit=lfdm.describe_fit,
            latent_field="num_factors",
            real_valued=False,
        ),
        ModelSpec(
            name="lda",
            summary="Latent Dirichlet allocation: K topics, bayesian or point topics; closed-form CAVI reference",
            args_type=lda.LDAArgs,
            model=lda.model,
            learnable=lambda init, args: lda.LDA(init),
            simulate=lda.simulate,
            validate=lambda x, args: lda.validate_data(x),
            init_params=lda.init_params,
            guides={
                "mean_field": GuideSpec(
                    "mean_field", "q(theta_d) = Dir(gamma_d), q(z_dv) = Cat(phi_dv) free per document and word; "
                    "q(beta_k) = Dir(lambda_k)", lda_guides.mean_field, lda_guides.VALID_ELBOS, lda_guides.WHY_NOT,
                ),
                "amortised": GuideSpec(
                    "amortised", "gamma_d = alpha + N_d softmax(MLP(log(1 + x_d))), phi_dv = softmax(digamma(gamma_d) + U_v); "
                    "q(beta_k) = Dir(lambda_k)", lda_guides.amortised, lda_guides.VALID_ELBOS, lda_guides.WHY_NOT,
                ),
            },
            exact=ExactReference(
                fit=lambda x, init, args, max_iter, tol: lda.fit_cavi(x, init, max_iter, tol),
                method="CAVI",
                objective="ELBO",
            ),
            datasets={
                "news": datasets.news,
                "reuters": datasets.reuters,
                "synthetic": lda.synthetic,
            },
            describe=lambda args: f"K={args.num_topics}, {args.topics} topics",
            describe_fit=lda.describe_fit,
            real_valued=False,
            minibatch=True,
            fitted=lambda model, guide: guide.topic_params(model.params).detach(),
            bound=lambda x, fitted, guide: lda.closed_form_elbo(x, fitted, *guide.variational(x)),
            heldout=lda.heldout_metrics,
        ),
        ModelSpec(
            name="fhmm",
            summary="Factorial HMM: M Markov chains of L states, Gaussian or Bernoulli emissions; exact up to L^M = 4,096",
            args_type=fhmm.FHMMArgs,
            model=fhmm.model,
            learnable=lambda init, args: fhmm.FHMM(init),
            simulate=fhmm.simulate,
            validate=fhmm.validate_data,
            init_params=fhmm.init_params,
            guides={
                "mean_field": GuideSpec(
                    "mean_field", "completely factorised: q(s) = prod_t prod_m Cat(s_t^m), free per sequence and step",
                    fhmm_guides.mean_field, fhmm_guides.VALID_ELBOS, fhmm_guides.WHY_NOT,
                    optimum=_fhmm_optimum("factorised"),
                ),
                "structured_mean_field": GuideSpec(
                    "structured_mean_field", "independent Markov chains q(s) = prod_m q(s^m_{1:T}), free pseudo-emissions "
                    "per sequence, step and chain (forward-backward per chain)",
                    fhmm_guides.structured_mean_field, fhmm_guides.VALID_ELBOS, fhmm_guides.WHY_NOT,
                    optimum=_fhmm_optimum("structured"),
                ),
                "amortised": GuideSpec(
                    "amortised", "the structured family, pseudo-emissions from a bidirectional GRU over y",
                    fhmm_guides.amortised, fhmm_guides.VALID_ELBOS, fhmm_guides.WHY_NOT,
                    optimum=_fhmm_optimum("structured"),
                ),
            },
            exact=ExactReference(
                log_evidence=lambda y, params: fhmm_exact.log_evidence(y, params),
                elbo=lambda y, params, q: fhmm_exact.elbo(y, params, q).sum(),
                kl=lambda y, params, q: fhmm_exact.kl(y, params, q).sum(),
                draws=lambda y, params, s, gen: {"s": fhmm_exact.draws(y, params, s, gen)},
                fit=lambda y, init, args, max_iter, tol: fhmm_exact.fit_em(y, init, max_iter, tol),
                method="exact EM (Baum-Welch)",
            ),
            datasets={
                "synthetic": fhmm.synthetic,
                "chorales": fhmm.chorales,
            },
            describe=lambda args: f"M={args.num_chains} chains x L={args.num_states} states, {args.emission} emissions",
            describe_fit=fhmm.describe_fit,
            real_valued=False,
            heldout=fhmm.heldout_metrics,
            exact_size_error=fhmm.exact_size_error,
        ),
        ModelSpec(
            name="vae",
            summary="VAE: L layers of Gaussian latents, Bernoulli or Gaussian pixels; linear = true is probabilistic PCA (exact)",
            args_type=vae.VAEArgs,
            model=vae.model,
            learnable=vae.learnable,
            simulate=vae.simulate,
            validate=vae.validate_data,
            init_params=vae.init_params,
            guides={
                "mean_field": GuideSpec(
                    "mean_field", "q(h_n) = prod_l N(m^l_n, diag s^l_n^2), free per point (no network)",
                    vae_guides.mean_field, vae_guides.VALID_ELBOS, vae_guides.WHY_NOT,
                    optimum=_PPCA_OPTIMUM,
                ),
                "amortised": GuideSpec(
                    "amortised", "q(h^1 | x) q(h^2 | h^1) ..., each N(MLP(.)): the hierarchical inference network",
                    vae_guides.amortised, vae_guides.VALID_ELBOS, vae_guides.WHY_NOT,
                    optimum=_PPCA_OPTIMUM,
                ),
            },
            exact=ExactReference(
                log_evidence=lambda x, dec: ppca.log_evidence(x, dec.ppca()).sum(),
                elbo=lambda x, dec, q: ppca.elbo(x, dec.ppca(), q).sum(),
                kl=lambda x, dec, q: ppca.kl_to_posterior(x, dec.ppca(), q).sum(),
                draws=lambda x, dec, s, gen: {"h1": draws.gaussian(*ppca.posterior(x, dec.ppca()), s, gen)},
                fit=lambda x, init, args, max_iter, tol: vae.fit_ppca(x, init, args),
                method="closed-form MLE (PPCA)",
            ),
            datasets={"digits": vae.digits, "mnist": vae.mnist, "fashion_mnist": vae.fashion_mnist},
            heldout=vae.heldout_metrics,
            importance=vae.importance_metrics,
            pictures=vae.pictures,
            describe=lambda args: (f"{'linear (PPCA), ' if args.linear else ''}latents {list(args.latent_sizes)}, "
                                   f"{args.likelihood} likelihood"),
            real_valued=False,
            minibatch=True,
            exact_size_error=vae.exact_size_error,
        ),
    )
}


# --------------------------------------------------------------------------- declared models
# A model declared in TOML (models/declaration.py) is registered from its file: the bundled declarations in
# experiments/models/ join MODELS by name; any other declaration is used by its path (resolve).

DECLARED_DIR = files("experiments") / "models"
DECLARATIONS: dict[str, Any] = {}
"""name -> :class:`models.declaration.Declaration` of each bundled declared model (also in :data:`MODELS`)."""


def _bundled_declarations() -> None:
    from models import declaration, declared

    for path in sorted((p for p in DECLARED_DIR.iterdir() if p.name.endswith(".toml")), key=lambda p: p.name):
        decl = declaration.load(path)
        if decl.name in MODELS:
            raise declaration.DeclarationError(f"{decl.where('name')}: the model name {decl.name!r} is already registered")
        DECLARATIONS[decl.name] = decl
        MODELS[decl.name] = declared.spec(decl)


_bundled_declarations()

_FROM_FILES: dict[tuple[str, float], ModelSpec] = {}


def resolve(name: str) -> ModelSpec:
    """The spec registered under ``name``, or the model declared in the TOML file at path ``name``."""
    from models import declaration, declared

    if name in MODELS:
        return MODELS[name]
    if name.endswith(".toml"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"model: declaration file not found: {name!r}")
        key = (str(path), path.stat().st_mtime)
        if key not in _FROM_FILES:
            _FROM_FILES[key] = declared.spec(declaration.load(path))
        return _FROM_FILES[key]
    raise ConfigError(f"model: unknown model {name!r}; known: {', '.join(MODELS)}, or the path of a model declaration (.toml)")
