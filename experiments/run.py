"""Run one experiment: load and check data, fit the exact reference, train each guide, report.

    config -> data (validated) -> shared initialisation -> exact EM (if the model has one)
           -> for each guide: SVI -> exact ELBO, log p(x), KL by enumeration -> run folder

The run folder ``<output_dir>/<name>-<timestamp>/`` holds::

    config.toml        the resolved config (every default filled in)
    params/em.pt       parameters fitted by exact EM           (torch.load(..., weights_only=True))
    params/<guide>.pt  model parameters learned with that guide
    guides/<guide>.pt  the guide's own parameters (state_dict)
    checkpoints/<guide>.pt  the guide's training state, saved periodically (``[checkpoint]``): what
                       ``vizoo run --resume RUN_DIR`` continues from (experiments/checkpoint.py)
    elbo.png           ELBO per point against step, with the exact log-likelihood line
    fit.png            the data and every method's fit (models that provide ``plot_fit``)
    *.png              the model's own pictures (``pictures``: the VAE's reconstructions, samples, latent map)
    report.md          the comparison table
    metrics.json       written last; "status" is "complete" or "interrupted" (Ctrl-C; resumable), or
                       "failed" (a non-finite step: the error, and the last good checkpoint kept)

Every path the run writes is inside the run folder: the folder's name is checked by the config (a plain
name, never a path), and a resumed folder must hold real sub-folders (no symbolic links out of it).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pyro
import torch

from ..models.errors import ConfigError
from ..models.exact.binary import MAX_LATENTS
from ..models.importance import ImportanceEstimate, log_weights
from . import report
from .checkpoint import Checkpointer, check_modules, fingerprint
from .config import RunConfig, load_config
from .train import NonFiniteLoss, SVIResult, interruptible, stop_requested, train_svi

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclasses.dataclass
class RunResult:
    """run_dir and metrics (what was written); and, in memory for callers such as the guide comparison, the
    training data x, the fitted parameters of every method (fits: "exact EM", "SVI <guide>", ...), and each
    SVI method's trained guide and trained model module."""

    run_dir: Path
    metrics: dict[str, Any]
    x: torch.Tensor | None = None
    fits: dict[str, Any] = dataclasses.field(default_factory=dict)
    trained: dict[str, Any] = dataclasses.field(default_factory=dict)
    models: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def interrupted(self) -> bool:
        return self.metrics["status"] == "interrupted"


def run_experiment(cfg: RunConfig, progress: bool | None = None, log=print, spec=None) -> RunResult:
    """Run ``cfg`` and write its run folder. All input is checked before any training starts. ``spec``: the
    model's spec with more guides than the registry's (the comparison's outside baselines); default cfg.spec.

    Ctrl-C anywhere in the run stops training at the next step boundary (see ``interruptible``); what
    finished is evaluated and written, and ``metrics.json`` says "interrupted"."""
    with interruptible():
        return _run(cfg, progress, log, spec or cfg.spec, None)


def resume_experiment(run_dir: str | Path, progress: bool | None = None, log=print) -> RunResult:
    """Continue the run in ``run_dir`` (killed, or stopped by Ctrl-C) from each guide's last checkpoint, with
    the config it was started with (its ``config.toml``). The run folder ends as an uninterrupted run's would,
    bit for bit on the same machine and thread count (wall times aside). Guides that finished are restored,
    not retrained; the exact reference is refitted (it is deterministic). Every checkpoint is loaded and
    checked before any work starts."""
    run_dir = check_run_dir(run_dir)
    cfg = load_config(run_dir / "config.toml")
    with interruptible():
        return _run(cfg, progress, log, cfg.spec, run_dir)


def check_run_dir(run_dir: str | Path) -> Path:
    """A run folder that can be resumed: it exists, holds its config, did not finish or fail, and its
    sub-folders are real folders inside it (a symbolic link could send writes elsewhere)."""
    given = str(run_dir)
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise ConfigError(f"--resume: no such run folder: {given!r}")
    run_dir = run_dir.resolve()
    if not (run_dir / "config.toml").is_file():
        raise ConfigError(f"--resume: {given!r} is not a run folder (it has no config.toml)")
    for sub in ("params", "guides", "checkpoints"):
        path = run_dir / sub
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise ConfigError(f"--resume: {str(path)!r} must be a folder inside the run folder, not a link or a file")
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        try:
            status = json.loads(metrics.read_text(encoding="utf-8")).get("status")
        except (ValueError, UnicodeDecodeError, AttributeError):
            status = None
        if status == "complete":
            raise ConfigError(f"--resume: the run in {given!r} is complete; there is nothing to resume")
        if status == "failed":
            raise ConfigError(f"--resume: the run in {given!r} failed (see its metrics.json): resuming would repeat "
                              "the same steps; change the config and start a new run")
    return run_dir


def _identity(cfg: RunConfig, x: torch.Tensor, x_test: torch.Tensor | None) -> dict[str, str]:
    """What a checkpoint must match to be resumed: the config (where the run writes and whether it shows
    progress aside) and the data."""
    config = {k: v for k, v in cfg.to_dict().items() if k not in ("output_dir", "progress")}
    data = fingerprint(x) + ("" if x_test is None else fingerprint(x_test))
    return {"config_sha256": fingerprint(config), "data_sha256": fingerprint(data)}


def _run(cfg: RunConfig, progress: bool | None, log, spec, resume: Path | None) -> RunResult:
    args = cfg.model_args
    progress = cfg.progress if progress is None else progress
    dtype = DTYPES[cfg.dtype]

    data = spec.load(cfg.data, args, cfg.seed)  # raises DataError before anything is written
    x, x_test = heldout_split(data.x.to(dtype), cfg.data.heldout, cfg.seed)
    if x_test is None and data.x_test is not None and spec.heldout is not None:  # the data set's fixed test set
        x_test = data.x_test.to(dtype)
    num_points = x.shape[0]
    if cfg.svi.batch_size > num_points:
        raise ConfigError(f"svi.batch_size={cfg.svi.batch_size} is larger than the {num_points} training points")
    init = spec.init_params(x, args, cfg.seed)
    pyro.set_rng_seed(cfg.seed)  # network initialisations
    guides = {}
    for g in cfg.guides:  # builder options are checked here, before anything is written
        try:
            build = spec.guides[g].build
            guides[g] = build(x, init, **cfg.guide_args.for_builder(build))
        except ValueError as err:
            raise ConfigError(f"guide {g!r}: {err}") from None

    identity = _identity(cfg, x, x_test)
    states: dict[str, dict] = {}  # guide -> the checkpoint it resumes from
    if resume is not None:  # every checkpoint is loaded and checked before any work
        for g in guides:
            ck = Checkpointer(resume / "checkpoints" / f"{g}.pt", {**identity, "guide": g})
            state = ck.load(cfg.svi.steps)
            if state is not None:
                check_modules(state, (spec.guides[g].learnable or spec.learnable)(init, args), guides[g], str(ck.path))
                states[g] = state
        run_dir = resume
    else:
        run_dir = report.make_run_dir(_output_dir(cfg.output_dir), cfg.name)
    for sub in ("params", "guides", "checkpoints"):
        (run_dir / sub).mkdir(exist_ok=True)
        for stale in (run_dir / sub).glob(".*.tmp"):  # a temporary file left by a killed write
            stale.unlink()
    checkpointers = {g: Checkpointer(run_dir / "checkpoints" / f"{g}.pt", {**identity, "guide": g},
                                     cfg.checkpoint.every_steps, cfg.checkpoint.every_seconds)
                     for g in guides if cfg.checkpoint.enabled}
    if resume is None:
        report.write_atomic(run_dir / "config.toml", report.to_toml(cfg.to_dict()))
    title = f"{spec.name} on {data.description}; {spec.describe(args)}".rstrip("; ")
    metrics: dict[str, Any] = {
        "status": "running",
        "title": title,
        "model": spec.name,
        "data": data.description,
        "num_points": num_points,
        "num_heldout": 0 if x_test is None else x_test.shape[0],
        "seed": cfg.seed,
        "enumerable": False,
        "exact": None,
        "guides": {},
    }
    log(f"{title}\nrun folder: {run_dir}")
    for g, state in states.items():
        log(f"resuming {g} from its checkpoint: " + ("finished" if state.get("finished") else f"step {state['step']} of {cfg.svi.steps}"))

    ref = spec.exact
    enumerable = ref is not None and ref.enumerable and not spec.exact_size_error(args) and (
        not spec.latent_field or getattr(args, spec.latent_field) <= MAX_LATENTS
    )  # beyond the limit (em disabled; the config refuses it otherwise) the ELBO is reported by Monte Carlo
    metrics["enumerable"] = enumerable
    if not (cfg.em.enabled and ref is not None and (enumerable or not ref.enumerable)):
        ref = None
    fits: dict[str, Any] = {}  # method -> fitted parameters, for the model's picture
    trained: dict[str, Any] = {}  # method -> its trained guide (SVI methods)
    models: dict[str, Any] = {}  # method -> its trained model module (SVI methods)
    if data.truth is not None and enumerable and not cfg.data.heldout:  # x is all of data.x; validated data and truths are float64
        metrics["truth_log_likelihood_per_point"] = _per_point(spec.exact.log_evidence(data.x, data.truth), num_points)
    if ref is not None:
        start = time.perf_counter()
        em = ref.fit(x, init, args, cfg.em.max_iter, cfg.em.tol)
        wall = time.perf_counter() - start
        trace = em.log_likelihood if ref.objective == "log p(x)" else em.elbo
        key = "log_likelihood" if ref.objective == "log p(x)" else "elbo"
        metrics["exact"] = {
            "method": ref.method,
            "objective": ref.objective,
            f"{key}_per_point": float(trace[-1]),
            f"{key}_trace": trace,
            "iterations": em.num_iters,
            "converged": em.converged,
            "wall_time_s": wall,
        }
        report.save_tensors(run_dir / "params" / "em.pt", em.params.state_dict())
        fits[ref.method] = em.params
        log(f"{ref.method}: {ref.objective}/point = {float(trace[-1]):.4f} after {em.num_iters} iterations ({wall:.2f} s)")

    interrupted = False
    for i, (g, guide) in enumerate(guides.items()):
        model = (spec.guides[g].learnable or spec.learnable)(init, args)
        try:
            result = train_svi(model, guide, x, cfg.svi, seed=cfg.seed + 1 + i, progress=progress, desc=g,
                               checkpoint=checkpointers.get(g), resume=states.get(g))
        except NonFiniteLoss as err:  # nothing more is saved: the guide's last checkpoint is its last good state
            metrics.update(status="failed", error=str(err), failed_guide=g)
            report.write_json(run_dir / "metrics.json", metrics)
            raise
        fitted = spec.fitted(model, guide)
        metrics["guides"][g] = _evaluate(spec, enumerable, fitted, guide, x, result, cfg)
        fits[f"SVI {g}"] = fitted
        trained[f"SVI {g}"] = guide
        models[f"SVI {g}"] = model
        report.save_tensors(run_dir / "params" / f"{g}.pt", fits[f"SVI {g}"].state_dict())
        report.save_tensors(run_dir / "guides" / f"{g}.pt", guide.state_dict())
        m = metrics["guides"][g]
        log(f"SVI {g}: ELBO/point = {m['final_elbo_per_point']:.4f} after {result.steps} steps ({result.wall_time:.2f} s)")
        if result.interrupted:
            interrupted = True
            log("interrupted: stopping after this guide; results so far are written")
            break

    if x_test is not None:
        metrics["heldout"] = {}
        for method, params in fits.items():
            metrics["heldout"][method] = spec.heldout(x, x_test, params, cfg.seed, guide=trained.get(method),
                                                      samples=cfg.eval.importance_samples, refit_steps=cfg.eval.refit_steps)
            log(f"held out, {method}: " + ", ".join(f"{k} = {v:.4g}" for k, v in metrics["heldout"][method].items()))
    metrics["status"] = "interrupted" if interrupted or stop_requested() else "complete"
    table = report.comparison_table(metrics)
    if metrics.get("heldout"):
        table += f"\n\nHeld out ({metrics['num_heldout']} documents, points or sequences, never trained on):\n\n" + report.heldout_table(metrics)
    report.plot_elbo(run_dir / "elbo.png", metrics)
    if spec.plot_fit is not None:
        report.plot_fit(run_dir / "fit.png", spec.plot_fit, x, fits, data.features, title)
    if spec.pictures is not None:
        labels = data.labels if data.labels is not None and not cfg.data.heldout else None  # rows of x are data.x's
        for name, fig in spec.pictures(x, fits, trained, labels, cfg.seed).items():
            report.save_png(fig, run_dir / name)
    fit_notes = f"\n\n{spec.describe_fit(fits, data.features)}" if spec.describe_fit is not None else ""
    report.write_atomic(run_dir / "report.md", f"# {title}\n\n{table}\n\n{_notes(metrics)}{fit_notes}\n")
    report.write_json(run_dir / "metrics.json", metrics)
    log(table + fit_notes)
    return RunResult(run_dir, metrics, x, fits, trained, models)


def _output_dir(path: str) -> Path:
    """``output_dir`` resolved; it must be a folder or not exist yet."""
    out = Path(path).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir={path!r} is a file, not a folder")
    return out


def _per_point(value: torch.Tensor, n: int) -> float:
    return float(value) / n


def heldout_split(x: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Training rows and held-out rows (a seeded random ``fraction`` of them), or (x, None)."""
    if not fraction:
        return x, None
    n = x.shape[0]
    num_test = round(fraction * n)
    if not 1 <= num_test < n:
        raise ConfigError(f"data.heldout={fraction} holds out {num_test} of {n} rows; it must leave at least one on each side")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return x[perm[num_test:].sort().values], x[perm[:num_test].sort().values]


@torch.no_grad()
def _evaluate(spec, enumerable: bool, params, guide, x, result: SVIResult, cfg: RunConfig) -> dict[str, Any]:
    """Final ELBO, log p(x) and KL at the learned parameters: exact where the model is enumerable,
    the ELBO in closed form where the model gives one, otherwise a Monte Carlo average."""
    n = x.shape[0]
    out: dict[str, Any] = {
        "elbo": cfg.svi.elbo,
        "steps": result.steps,
        "wall_time_s": result.wall_time,
        "interrupted": result.interrupted,
        "elbo_curve": result.elbo_trace,
        "elbo_times": result.times,
    }
    exact = spec.exact
    if enumerable and not hasattr(guide, "probs"):  # an outside guide (Pyro's autoguides): exact log p(x), Monte Carlo ELBO
        out.update(_monte_carlo_elbo(spec, params, guide, x, cfg))
        out["log_likelihood_per_point"] = _per_point(exact.log_evidence(x, params), n)
    elif enumerable:
        q = guide.probs(x, params)
        out["final_elbo_per_point"] = _per_point(exact.elbo(x, params, q), n)
        out["log_likelihood_per_point"] = _per_point(exact.log_evidence(x, params), n)
        out["kl_per_point"] = _per_point(exact.kl(x, params, q), n)
        out["final_elbo_method"] = "exact (enumeration over z)"
    elif spec.bound is not None:
        out["final_elbo_per_point"] = _per_point(spec.bound(x, params, guide), n)
        out["final_elbo_method"] = "closed form (analytic expectations under q)"
    elif spec.importance is not None and getattr(guide, "point_mass", False):  # a point mass is no proposal: no IWAE
        out.update(_monte_carlo_elbo(spec, params, guide, x, cfg))
    elif spec.importance is not None:
        out.update(spec.importance(x, params, guide, cfg.seed, samples=cfg.eval.importance_samples, points=cfg.eval.train_points))
    else:
        tail = result.elbo_trace[-max(1, len(result.elbo_trace) // 10) :]
        out["final_elbo_per_point"] = sum(tail) / len(tail) if tail else float("nan")
        out["final_elbo_method"] = "Monte Carlo (mean of the last 10% of steps)"
    return out


def _monte_carlo_elbo(spec, params, guide, x, cfg: RunConfig) -> dict[str, Any]:
    """The ELBO of a guide that has no closed-form table, by the mean of log p(x_n, z_s) - log q(z_s | x_n) over
    ``eval.importance_samples`` draws per point, with its standard error. For a point-mass guide (AutoDelta)
    log q is dropped (0), so this is the MAP objective log p(x, z*), not a bound on log p(x)."""
    pyro.set_rng_seed(cfg.seed)
    model = spec.learnable(params, cfg.model_args)
    est = ImportanceEstimate.from_log_weights(log_weights(model, (x,), guide, (x,), cfg.eval.importance_samples))
    s = est.summary()
    point_mass = getattr(guide, "point_mass", False)
    kind = "MAP objective log p(x, z*) (point mass: not a bound)" if point_mass else "Monte Carlo"
    return {"final_elbo_per_point": s["elbo"], "final_elbo_se": None if point_mass else s["elbo_se"],
            "final_elbo_method": f"{kind}, {est.num_samples} draws per point"}


def _notes(metrics: dict[str, Any]) -> str:
    ref = metrics.get("exact") or {}
    if metrics["enumerable"]:
        lines = [
            "ELBO, log p(x) and KL are exact (enumeration over z) at each method's final parameters;",
            "log p(x) = ELBO + KL(q || p(z|x)). The last column compares log p(x) with the exact EM optimum.",
        ]
    elif ref.get("objective") == "ELBO":
        methods = {g["final_elbo_method"] for g in metrics["guides"].values()} or {"closed form"}
        lines = [
            f"log p(x) is intractable for this model; each guide's ELBO is computed by {', '.join(sorted(methods))} "
            f"at its final parameters. The last column compares it with {ref['method']}'s ELBO (a local optimum of the same family).",
        ]
    else:
        lines = ["This model is not enumerated here: each guide's ELBO is a Monte Carlo estimate."]
        methods = sorted({g["log_likelihood_method"] for g in metrics["guides"].values() if "log_likelihood_method" in g})
        if methods:
            lines.append(f"log p(x) is estimated by importance sampling with each guide's q ({', '.join(methods)}); "
                         "± is the Monte Carlo standard error.")
    if metrics.get("truth_log_likelihood_per_point") is not None:
        lines.append(f"log p(x)/point at the true parameters: {metrics['truth_log_likelihood_per_point']:.4f}.")
    if metrics["status"] != "complete":
        lines.append(f"Status: {metrics['status']}.")
    return "\n".join(lines)
