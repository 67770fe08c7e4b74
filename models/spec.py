"""The registry's types: what a model (:class:`ModelSpec`), a guide family (:class:`GuideSpec`) and an exact
reference (:class:`ExactReference`) must provide. The registry itself (:mod:`vizoo.experiments.registry`) sits
above models and guides and builds one :class:`ModelSpec` per model; models and guides never import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from . import datasets
from .datasets import DataOptions, Dataset
from .errors import DataError

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
    random_start(x, params, generator) -> a random start for ``optimum`` (families that climb; None for closed
    forms, whose optimum is unique); mode_start(x, params) -> a start at each point's posterior mode (optional).
    certify(x, params, q, lower, tol=..., max_boxes=...) -> a :class:`models.exact.binary.Certificate` bounding
    the family's global optimum per point (optional; binary mean field by branch and bound).
    The search over these starts, per point, is :mod:`models.exact.restarts`, run by the gap split.
    data_parallel: the guide (and its model) take ``subsample`` (given point indices) and keep no state that a
    step changes outside their parameters' gradients, apart from statistics they expose (``step_statistics``),
    and read their per-point parameters (``local_parameters``) during training only through
    ``guides.sharding.rows``, so data-parallel SVI over processes (experiments/distributed.py) is the same
    algorithm with those rows sharded; other guides are refused there before any work.
    """

    name: str
    summary: str
    build: Callable[..., nn.Module]
    valid_elbos: tuple[str, ...]
    why_not: str = ""
    learnable: Callable[..., nn.Module] | None = None
    optimum: Callable[..., Any] | None = None
    random_start: Callable[..., Any] | None = None
    mode_start: Callable[..., Any] | None = None
    certify: Callable[..., Any] | None = None
    data_parallel: bool = False


@dataclass(frozen=True)
class ExactReference:
    """The reference fit, and exact quantities for models whose posterior over the latents can be enumerated.

    fit(x, init, args, max_iter, tol) -> a result with ``params``, ``num_iters``, ``converged`` and the
        objective's trace per point: ``log_likelihood`` (objective "log p(x)", exact EM) or ``elbo``
        (objective "ELBO": a closed-form variational reference such as CAVI, for models whose
        posterior is intractable)
    log_evidence(x, params) -> log p(x) (scalar, summed over points); None when intractable
    elbo(x, params, q) / kl(x, params, q): ELBO(q) and KL(q || p(z|x)) for a guide's table q (enumerable only)
    point_elbo(x, params, q) -> (N,): ELBO_n(q) per point (the per-point search for the family's best member)
    draws(x, params, num_samples, generator) -> {site: (S, N, ...)}: exact posterior draws of the model's latent
        sites for a few points, in the sites' own layout (the comparison's pictures and ArviZ export)
    """

    fit: Callable[..., Any]
    log_evidence: Callable[..., Tensor] | None = None
    elbo: Callable[..., Tensor] | None = None
    kl: Callable[..., Tensor] | None = None
    point_elbo: Callable[..., Tensor] | None = None
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
    sparse: the model, its guides, exact reference and evaluation take sparse counts (a torch sparse CSR
        tensor; a ``.npz`` file, a scipy sparse matrix in memory), kept sparse throughout (LDA); any other
        model refuses sparse data in one line.
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
    label_metrics(x, fitted, guide, labels) -> {metric: value}: agreement of each method's inferred latents
        with the data set's true labels (the tagger's accuracies against gold tags), run on every method when
        the data come with labels (guide: the method's trained guide, None for the exact fit).
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
    sparse: bool = False
    fitted: Callable[..., Any] = lambda model, guide: model.params.detach()
    bound: Callable[..., Tensor] | None = None
    heldout: Callable[..., dict[str, float]] | None = None
    importance: Callable[..., dict[str, Any]] | None = None
    pictures: Callable[..., list[str]] | None = None
    exact_size_error: Callable[[Any], str] = lambda args: ""
    label_metrics: Callable[..., dict[str, float]] | None = None

    def load(self, opts: DataOptions, args: Any, seed: int) -> Dataset:
        """Load ``opts.name`` (or a user file) and validate it for this model."""
        if opts.name == "file":  # standardised only for a real-valued model
            data = datasets.load_file(replace(opts, standardise=opts.standardise and self.real_valued), args, seed)
        else:
            data = self.datasets[opts.name](opts, args, seed)
        for what, value in (("data", data.x), ("test data", data.x_test)):
            if value is not None and not self.sparse and getattr(value, "layout", torch.strided) != torch.strided:
                raise DataError(f"the {what} of {opts.name!r} are a sparse matrix; model {self.name} takes dense data only")
        x = self.validate(data.x, args)
        x_test = None if data.x_test is None else self.validate(data.x_test, args)
        if x_test is not None and x_test.shape[-1] != x.shape[-1]:
            raise DataError(f"the test set has {x_test.shape[-1]} columns (features, pixels), the training data {x.shape[-1]}: "
                            "they must match")
        return data._replace(x=x, x_test=x_test)
