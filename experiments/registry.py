"""The model registry: one explicit dict of :class:`~vizoo.models.spec.ModelSpec`, built below.

It sits above the model layer: it imports models, guides and exact references, and none of them imports it.
Adding a model is one module (``models/<name>.py`` with its guides in ``guides/<name>.py`` and, where
tractable, an exact reference in ``models/exact/<name>.py``) plus one entry in :data:`MODELS`.
"""

from __future__ import annotations

from functools import partial
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from ..guides import binary as binary_guides
from ..guides import declared as declared_guides
from ..guides import fhmm as fhmm_guides
from ..guides import gmm as gmm_guides
from ..guides import lda as lda_guides
from ..guides import lfdm as lfdm_guides
from ..guides import noisy_or as noisy_or_guides
from ..guides import pos_tagger as pos_tagger_guides
from ..guides import vae as vae_guides
from ..models import (
    datasets,
    declaration,
    declared,
    fhmm,
    gmm,
    lda,
    lfdm,
    noisy_or,
    pos_tagger,
    vae,
)
from ..models.errors import ConfigError
from ..models.exact import declared as declared_exact
from ..models.exact import draws, linear_gaussian, ppca
from ..models.exact import fhmm as fhmm_exact
from ..models.exact import gmm as gmm_exact
from ..models.exact import lfdm as lfdm_exact
from ..models.exact import noisy_or as noisy_or_exact
from ..models.exact import pos_tagger as pos_tagger_exact
from ..models.exact.draws import from_table
from ..models.spec import ELBOS, ExactReference, GuideSpec, ModelSpec
from . import vae_eval, vae_pictures

_GMM_WHY_NOT = "TraceMeanField_ELBO needs a fully reparameterised guide, and z is discrete"


def _binary_family(exact) -> dict[str, Any]:
    """A binary model's mean-field family: CAVI from any start, random and mode starts, the branch-and-bound
    certificate (:func:`models.exact.binary.certify_mean_field`)."""
    return {"optimum": lambda x, p, start=None: exact.best_mean_field(x, p, init=start).probs,
            "random_start": exact.random_start, "mode_start": exact.mode_start, "certify": exact.certify}


_GMM_OPTIMUM = lambda x, p, start=None: gmm_exact.posterior(x, p)  # noqa: E731  mean field is exact: one optimum
_PPCA_OPTIMUM = lambda x, dec, start=None: ppca.best_diagonal(x, dec.ppca())  # noqa: E731  closed form


def _fhmm_family(family: str) -> dict[str, Any]:
    """Ghahramani & Jordan's fixed points of one family, from a q (its marginals) or from random marginals."""
    def optimum(y, p, start=None):
        init = start if start is None or isinstance(start, torch.Tensor) else start.marginals
        return fhmm_exact.fit_mean_field(y, p, family, init=None if init is None else init.clone()).q
    return {"optimum": optimum, "random_start": fhmm_exact.random_start}

def _pos_tagger_family(family: str) -> dict[str, Any]:
    """The tagger's families: the factorised one climbs (coordinate ascent from a q's marginals or random ones);
    the chain family contains the exact posterior, its one optimum (closed form)."""
    if family == "chain":
        return {"optimum": lambda x, p, start=None: pos_tagger_exact.posterior(x, p)}

    def optimum(x, p, start=None):
        init = start if start is None or isinstance(start, torch.Tensor) else start.marginals
        return pos_tagger_exact.fit_mean_field(x, p, init=None if init is None else init.detach()).q
    return {"optimum": optimum, "random_start": pos_tagger_exact.random_start}


_TAGGED_DATA = {"synthetic": pos_tagger.synthetic, "oanc": datasets.load_oanc, "wsj": datasets.load_wsj}  # both taggers'

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
                "faithful": datasets.load_faithful,
                "iris": datasets.load_iris,
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
                    binary_guides.VALID_ELBOS, binary_guides.WHY_NOT, **_binary_family(noisy_or_exact),
                ),
                "amortised": GuideSpec(
                    "amortised", "q(d_n | s_n) = prod_i Bern(sigmoid(MLP(s_n))_i)", noisy_or_guides.amortised,
                    binary_guides.VALID_ELBOS, binary_guides.WHY_NOT, **_binary_family(noisy_or_exact), data_parallel=True,
                ),
            },
            exact=ExactReference(
                log_evidence=noisy_or_exact.log_evidence,
                elbo=noisy_or_exact.elbo,
                kl=noisy_or_exact.kl_to_posterior,
                point_elbo=noisy_or_exact.point_elbo,
                draws=lambda x, p, s, gen: {"d": noisy_or_exact.draws(x, p, s, gen)},
                fit=lambda x, init, args, max_iter, tol: noisy_or_exact.fit_em(x, init, max_iter, tol),
                method="generalised EM",
            ),
            datasets={
                "synthetic": noisy_or.synthetic,
                "std": datasets.load_std,
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
                    binary_guides.VALID_ELBOS, binary_guides.WHY_NOT, **_binary_family(lfdm_exact),
                ),
                "amortised": GuideSpec(
                    "amortised", "q(z_d | x_d) = prod_k Bern(sigmoid(MLP(log(1 + x_d)))_k)", lfdm_guides.amortised,
                    binary_guides.VALID_ELBOS, binary_guides.WHY_NOT, **_binary_family(lfdm_exact), data_parallel=True,
                ),
            },
            exact=ExactReference(
                log_evidence=lfdm_exact.log_evidence,
                elbo=lfdm_exact.elbo,
                kl=lfdm_exact.kl_to_posterior,
                point_elbo=lfdm_exact.point_elbo,
                draws=lambda x, p, s, gen: {"z": lfdm_exact.draws(x, p, s, gen)},
                fit=lambda x, init, args, max_iter, tol: lfdm_exact.fit_em(x, init, max_iter, tol),
                method="generalised EM",
            ),
            datasets={
                "synthetic": lfdm.synthetic,
                "news": datasets.load_news,
                "reuters": datasets.load_reuters,
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
                    data_parallel=True,
                ),
                "amortised": GuideSpec(
                    "amortised", "gamma_d = alpha + N_d softmax(MLP(log(1 + x_d))), phi_dv = softmax(digamma(gamma_d) + U_v); "
                    "q(beta_k) = Dir(lambda_k)", lda_guides.amortised, lda_guides.VALID_ELBOS, lda_guides.WHY_NOT,
                    data_parallel=True,
                ),
            },
            exact=ExactReference(
                fit=lambda x, init, args, max_iter, tol: lda.fit_cavi(x, init, max_iter, tol),
                method="CAVI",
                objective="ELBO",
            ),
            datasets={
                "news": datasets.load_sparse_news,
                "reuters": datasets.load_reuters,
                "healthtweets": datasets.load_healthtweets,
                "synthetic": lda.synthetic,
            },
            describe=lambda args: f"K={args.num_topics}, {args.topics} topics",
            describe_fit=lda.describe_fit,
            real_valued=False,
            minibatch=True,
            sparse=True,
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
                    **_fhmm_family("factorised"),
                ),
                "structured_mean_field": GuideSpec(
                    "structured_mean_field", "independent Markov chains q(s) = prod_m q(s^m_{1:T}), free pseudo-emissions "
                    "per sequence, step and chain (forward-backward per chain)",
                    fhmm_guides.structured_mean_field, fhmm_guides.VALID_ELBOS, fhmm_guides.WHY_NOT,
                    **_fhmm_family("structured"),
                ),
                "amortised": GuideSpec(
                    "amortised", "the structured family, pseudo-emissions from a bidirectional GRU over y",
                    fhmm_guides.amortised, fhmm_guides.VALID_ELBOS, fhmm_guides.WHY_NOT,
                    **_fhmm_family("structured"),
                ),
            },
            exact=ExactReference(
                log_evidence=lambda y, params: fhmm_exact.log_evidence(y, params),
                elbo=lambda y, params, q: fhmm_exact.elbo(y, params, q).sum(),
                point_elbo=fhmm_exact.elbo,
                kl=lambda y, params, q: fhmm_exact.kl(y, params, q).sum(),
                draws=lambda y, params, s, gen: {"s": fhmm_exact.draws(y, params, s, gen)},
                fit=lambda y, init, args, max_iter, tol: fhmm_exact.fit_em(y, init, max_iter, tol),
                method="exact EM (Baum-Welch)",
            ),
            datasets={
                "synthetic": fhmm.synthetic,
                "chorales": datasets.load_chorales,
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
                    optimum=_PPCA_OPTIMUM, data_parallel=True,
                ),
                "amortised": GuideSpec(
                    "amortised", "q(h^1 | x) q(h^2 | h^1) ..., each N(MLP(.)): the hierarchical inference network",
                    vae_guides.amortised, vae_guides.VALID_ELBOS, vae_guides.WHY_NOT,
                    optimum=_PPCA_OPTIMUM, data_parallel=True,
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
            datasets={
                "digits": datasets.load_digits,
                "mnist": datasets.load_mnist,
                "fashion_mnist": datasets.load_fashion_mnist,
            },
            heldout=vae_eval.heldout_metrics,
            importance=vae_eval.importance_metrics,
            pictures=vae_pictures.pictures,
            describe=lambda args: (f"{'linear (PPCA), ' if args.linear else ''}latents {list(args.latent_sizes)}, "
                                   f"{args.likelihood} likelihood"),
            real_valued=False,
            minibatch=True,
            exact_size_error=vae.exact_size_error,
        ),
        ModelSpec(
            name="pos_tagger",
            summary="Log-linear part-of-speech tagger (Berg-Kirkpatrick et al. 2010): an HMM over K tags, emissions "
                    "log-linear in word features, MAP priors",
            args_type=pos_tagger.TaggerArgs,
            model=pos_tagger.model,
            learnable=lambda init, args: pos_tagger.Tagger(init),
            simulate=pos_tagger.simulate,
            validate=pos_tagger.validate_data,
            init_params=pos_tagger.init_params,
            guides={
                "mean_field": GuideSpec(
                    "mean_field", "fully factorised: q(t) = prod_i Cat(t_i), free per sentence and token",
                    pos_tagger_guides.mean_field, pos_tagger_guides.VALID_ELBOS, pos_tagger_guides.WHY_NOT,
                    **_pos_tagger_family("factorised"),
                ),
                "structured_mean_field": GuideSpec(
                    "structured_mean_field", "a Markov chain per sentence with free pseudo-emissions (contains the "
                    "posterior)", pos_tagger_guides.structured_mean_field, pos_tagger_guides.VALID_ELBOS,
                    pos_tagger_guides.WHY_NOT, **_pos_tagger_family("chain"),
                ),
                "amortised": GuideSpec(
                    "amortised", "the chain family, pseudo-emissions from a bidirectional GRU over the words' features",
                    pos_tagger_guides.amortised, pos_tagger_guides.VALID_ELBOS, pos_tagger_guides.WHY_NOT,
                    **_pos_tagger_family("chain"),
                ),
            },
            exact=ExactReference(
                log_evidence=pos_tagger_exact.log_evidence,
                elbo=lambda x, p, q: pos_tagger_exact.elbo(x, p, q).sum(),
                kl=lambda x, p, q: pos_tagger_exact.kl(x, p, q).sum(),
                point_elbo=pos_tagger_exact.elbo,
                draws=lambda x, p, s, gen: {"t": pos_tagger_exact.draws(x, p, s, gen)},
                fit=lambda x, init, args, max_iter, tol: pos_tagger_exact.fit_em(x, init, max_iter, tol),
                method="exact EM (Baum-Welch, L-BFGS M-step)",
            ),
            datasets=_TAGGED_DATA,
            describe=lambda args: f"K={args.num_tags} tags, features {'+'.join(args.features)}",
            describe_fit=pos_tagger.describe_fit,
            real_valued=False,
            label_metrics=pos_tagger.label_metrics,
        ),
        ModelSpec(
            name="pos_tagger_vb",
            summary="Log-linear part-of-speech tagger with Bayesian transitions: A ~ Dir(concentration) row by row, "
                    "q(A) Dirichlet beside q(t) (variational Bayes, Johnson 2007)",
            args_type=pos_tagger.TaggerVBArgs,
            model=pos_tagger.model_vb,
            learnable=lambda init, args: pos_tagger.TaggerVB(init),
            simulate=pos_tagger.simulate,
            validate=pos_tagger.validate_data,
            init_params=pos_tagger.init_params,
            guides={
                "mean_field": GuideSpec(
                    "mean_field", "q(A) prod_i Cat(t_i): Dirichlet rows, tags fully factorised, free per token",
                    pos_tagger_guides.mean_field_vb, pos_tagger_guides.VALID_ELBOS, pos_tagger_guides.WHY_NOT,
                ),
                "structured_mean_field": GuideSpec(
                    "structured_mean_field", "q(A) q(t): Dirichlet rows, a Markov chain per sentence with free "
                    "pseudo-emissions", pos_tagger_guides.structured_mean_field_vb, pos_tagger_guides.VALID_ELBOS,
                    pos_tagger_guides.WHY_NOT,
                ),
                "amortised": GuideSpec(
                    "amortised", "q(A) q(t | sentence): Dirichlet rows, the chain's pseudo-emissions from a "
                    "bidirectional GRU", pos_tagger_guides.amortised_vb, pos_tagger_guides.VALID_ELBOS,
                    pos_tagger_guides.WHY_NOT,
                ),
            },
            exact=ExactReference(
                fit=lambda x, init, args, max_iter, tol: pos_tagger_exact.fit_vb(x, init, max_iter, tol),
                method="VB (Johnson 2007; L-BFGS for W)",
                objective="ELBO",
            ),
            datasets=_TAGGED_DATA,
            describe=lambda args: f"K={args.num_tags} tags, Dir({args.concentration:g}) transitions, "
                                  f"features {'+'.join(args.features)}",
            describe_fit=pos_tagger.describe_fit,
            real_valued=False,
            fitted=lambda model, guide: guide.fitted_params(model.params).detach(),
            bound=lambda x, fitted, guide: guide.analytic_elbo(x, fitted).detach(),
            label_metrics=pos_tagger.label_metrics,
        ),
    )
}


# --------------------------------------------------------------------------- declared models

def declared_spec(decl: declaration.Declaration) -> ModelSpec:
    """The :class:`models.ModelSpec` of a declaration: generated model, guides, exact reference and data sets."""
    valid, why_not = declared_guides.valid_elbos(decl)
    exact_ref = None
    backend, method = (declared_exact, "generalised EM") if decl.discrete else (linear_gaussian, "exact EM (factor analysis)")
    if decl.discrete or linear_gaussian.applies(decl):  # the two backends share one interface
        exact_ref = ExactReference(
            log_evidence=lambda x, p: backend.log_evidence(decl, p, x),
            elbo=lambda x, p, q: backend.elbo(decl, p, x, q),
            kl=lambda x, p, q: backend.kl_to_posterior(decl, p, x, q),
            point_elbo=(lambda x, p, q: declared_exact.point_elbo(decl, p, x, q)) if decl.discrete else None,
            draws=lambda x, p, s, gen: backend.draws(decl, p, x, s, gen),
            fit=lambda x, init, args, max_iter, tol: backend.fit_em(decl, x, init, max_iter, tol),
            method=method,
        )
    family: dict[str, Any] = {}
    if decl.discrete:
        family = {"optimum": lambda x, p, start=None: declared_exact.best_mean_field(decl, p, x, init=start).probs,
                  "random_start": lambda x, p, gen: declared_exact.random_start(decl, x, gen),
                  "mode_start": lambda x, p: declared_exact.mode_start(decl, p, x),
                  "certify": lambda x, p, q, lower, **kw: declared_exact.certify(decl, p, x, q, lower, **kw)}
    elif linear_gaussian.applies(decl):
        family = {"optimum": lambda x, p, start=None: linear_gaussian.best_mean_field(decl, p, x)}  # closed form
    sets = {"synthetic": partial(declared.synthetic, decl)}
    if decl.data:
        sets[declared.data_name(decl)] = partial(declared.mapped, decl)

    def size_error(args) -> str:
        if decl.discrete and decl.num_configurations > declared_exact.MAX_CONFIGURATIONS:
            return (f"model {decl.name!r} has {decl.num_configurations:,} joint latent configurations per point, more than the "
                    f"exact-enumeration limit {declared_exact.MAX_CONFIGURATIONS:,}")
        return ""

    return ModelSpec(
        name=decl.name,
        summary=decl.summary or f"declared in {Path(decl.source).name}: {declared.structure(decl)}",
        args_type=declared.DeclaredArgs,
        model=partial(declared.model, decl),
        learnable=lambda init, args: declared.Declared(decl, init),
        simulate=partial(declared.simulate, decl),
        validate=partial(declared.validate, decl),
        init_params=partial(declared.init_params, decl),
        guides={
            "mean_field": GuideSpec("mean_field", "q(z_n) = prod_g q(z_ng), free parameters per point and group",
                                    partial(declared_guides.mean_field, decl), valid, why_not, **family),
            "amortised": GuideSpec("amortised", "q(z_n | x_n) = prod_g q(z_ng | MLP(x_n)_g), one network for every group",
                                   partial(declared_guides.amortised, decl), valid, why_not, **family),
        },
        exact=exact_ref,
        importance=None if exact_ref is not None else partial(declared.importance_metrics, decl),
        datasets=sets,
        describe=lambda args: declared.structure(decl),
        describe_fit=partial(declared.describe_fit, decl),
        real_valued=all(g.family == "gaussian" for g in decl.observed),
        exact_size_error=size_error,
    )


# A model declared in TOML (models/declaration.py) is registered from its file: the bundled declarations in
# experiments/models/ join MODELS by name; any other declaration is used by its path (resolve).

DECLARED_DIR = files(__package__) / "models"
DECLARATIONS: dict[str, Any] = {}
"""name -> :class:`models.declaration.Declaration` of each bundled declared model (also in :data:`MODELS`)."""


def _bundled_declarations() -> None:
    for path in sorted((p for p in DECLARED_DIR.iterdir() if p.name.endswith(".toml")), key=lambda p: p.name):
        decl = declaration.load(path)
        if decl.name in MODELS:
            raise declaration.DeclarationError(f"{decl.where('name')}: the model name {decl.name!r} is already registered")
        DECLARATIONS[decl.name] = decl
        MODELS[decl.name] = declared_spec(decl)


_bundled_declarations()

_FROM_FILES: dict[tuple[str, float], ModelSpec] = {}


def resolve(name: str) -> ModelSpec:
    """The spec registered under ``name``, or the model declared in the TOML file at path ``name``."""
    if name in MODELS:
        return MODELS[name]
    if name.endswith(".toml"):
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"model: declaration file not found: {name!r}")
        key = (str(path), path.stat().st_mtime)
        if key not in _FROM_FILES:
            _FROM_FILES[key] = declared_spec(declaration.load(path))
        return _FROM_FILES[key]
    raise ConfigError(f"model: unknown model {name!r}; known: {', '.join(MODELS)}, or the path of a model declaration (.toml)")
