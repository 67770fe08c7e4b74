"""Run one experiment: load and check data, fit the exact reference, train each guide, report.

    config -> data (validated) -> shared initialisation -> exact EM (if the model has one)
           -> for each guide: SVI -> exact ELBO, log p(x), KL by enumeration -> run folder

The run folder ``<output_dir>/<name>-<timestamp>/`` holds::

    config.toml        the resolved config (every default filled in)
    params/em.pt       parameters fitted by exact EM           (torch.load(..., weights_only=True))
    params/<guide>.pt  model parameters learned with that guide
    guides/<guide>.pt  the guide's own parameters (state_dict)
    elbo.png           ELBO per point against step, with the exact log-likelihood line
    fit.png            the data and every method's fit (models that provide ``plot_fit``)
    report.md          the comparison table
    metrics.json       written last; "status" is "complete" or "interrupted"
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pyro
import torch

from experiments import report
from experiments.config import RunConfig
from experiments.train import SVIResult, train_svi
from models.errors import ConfigError
from models.exact.binary import MAX_LATENTS

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]

    @property
    def interrupted(self) -> bool:
        return self.metrics["status"] == "interrupted"


def run_experiment(cfg: RunConfig, progress: bool | None = None, log=print) -> RunResult:
    """Run ``cfg`` and write its run folder. All input is checked before any training starts."""
    spec = cfg.spec
    args = cfg.model_args
    progress = cfg.progress if progress is None else progress
    dtype = DTYPES[cfg.dtype]

    data = spec.load(cfg.data, args, cfg.seed)  # raises DataError before anything is written
    x = data.x.to(dtype)
    num_points = x.shape[0]
    init = spec.init_params(x, args, cfg.seed)
    pyro.set_rng_seed(cfg.seed)  # network initialisations
    guides = {}
    for g in cfg.guides:  # builder options are checked here, before anything is written
        try:
            guides[g] = spec.guides[g].build(x, init, **dataclasses.asdict(cfg.guide_args))
        except ValueError as err:
            raise ConfigError(f"guide {g!r}: {err}") from None

    run_dir = report.make_run_dir(Path(cfg.output_dir), cfg.name)
    (run_dir / "params").mkdir()
    (run_dir / "guides").mkdir()
    report.write_atomic(run_dir / "config.toml", report.to_toml(cfg.to_dict()))
    title = f"{spec.name} on {data.description}; {spec.describe(args)}".rstrip("; ")
    metrics: dict[str, Any] = {
        "status": "running",
        "title": title,
        "model": spec.name,
        "data": data.description,
        "num_points": num_points,
        "seed": cfg.seed,
        "exact": None,
        "guides": {},
    }
    log(f"{title}\nrun folder: {run_dir}")

    enumerable = spec.exact is not None and (
        not spec.latent_field or getattr(args, spec.latent_field) <= MAX_LATENTS
    )  # beyond the limit (em disabled; the config refuses it otherwise) the ELBO is reported by Monte Carlo
    exact = spec.exact if cfg.em.enabled and enumerable else None
    fits: dict[str, Any] = {}  # method -> fitted parameters, for the model's picture
    if data.truth is not None and enumerable:  # validated data and truths are float64
        metrics["truth_log_likelihood_per_point"] = _per_point(spec.exact.log_evidence(data.x, data.truth), num_points)
    if exact is not None:
        start = time.perf_counter()
        em = exact.fit(x, init, args, cfg.em.max_iter, cfg.em.tol)
        wall = time.perf_counter() - start
        metrics["exact"] = {
            "method": exact.method,
            "log_likelihood_per_point": float(em.log_likelihood[-1]),
            "log_likelihood_trace": em.log_likelihood,
            "iterations": em.num_iters,
            "converged": em.converged,
            "wall_time_s": wall,
        }
        report.save_tensors(run_dir / "params" / "em.pt", em.params.state_dict())
        fits[exact.method] = em.params
        log(f"{exact.method}: log p(x)/point = {float(em.log_likelihood[-1]):.4f} after {em.num_iters} iterations ({wall:.2f} s)")

    interrupted = False
    for i, (g, guide) in enumerate(guides.items()):
        model = (spec.guides[g].learnable or spec.learnable)(init, args)
        result = train_svi(model, guide, x, cfg.svi, seed=cfg.seed + 1 + i, progress=progress, desc=g)
        metrics["guides"][g] = _evaluate(spec.exact if enumerable else None, model, guide, x, result, cfg)
        fits[f"SVI {g}"] = model.params.detach()
        report.save_tensors(run_dir / "params" / f"{g}.pt", fits[f"SVI {g}"].state_dict())
        report.save_tensors(run_dir / "guides" / f"{g}.pt", guide.state_dict())
        m = metrics["guides"][g]
        log(f"SVI {g}: ELBO/point = {m['final_elbo_per_point']:.4f} after {result.steps} steps ({result.wall_time:.2f} s)")
        if result.interrupted:
            interrupted = True
            log("interrupted: stopping after this guide; results so far are written")
            break

    metrics["status"] = "interrupted" if interrupted else "complete"
    table = report.comparison_table(metrics)
    report.plot_elbo(run_dir / "elbo.png", metrics)
    if spec.plot_fit is not None:
        report.plot_fit(run_dir / "fit.png", spec.plot_fit, x, fits, data.features, title)
    fit_notes = f"\n\n{spec.describe_fit(fits, data.features)}" if spec.describe_fit is not None else ""
    report.write_atomic(run_dir / "report.md", f"# {title}\n\n{table}\n\n{_notes(metrics)}{fit_notes}\n")
    report.write_json(run_dir / "metrics.json", metrics)
    log(table)
    return RunResult(run_dir, metrics)


def _per_point(value: torch.Tensor, n: int) -> float:
    return float(value) / n


@torch.no_grad()
def _evaluate(exact, model, guide, x, result: SVIResult, cfg: RunConfig) -> dict[str, Any]:
    """Final ELBO, log p(x) and KL at the learned parameters, exactly where the model allows."""
    n = x.shape[0]
    out: dict[str, Any] = {
        "elbo": cfg.svi.elbo,
        "steps": result.steps,
        "wall_time_s": result.wall_time,
        "interrupted": result.interrupted,
        "elbo_curve": result.elbo_trace,
    }
    if exact is not None:
        params = model.params.detach()
        q = guide.probs(x, params)
        out["final_elbo_per_point"] = _per_point(exact.elbo(x, params, q), n)
        out["log_likelihood_per_point"] = _per_point(exact.log_evidence(x, params), n)
        out["kl_per_point"] = _per_point(exact.kl(x, params, q), n)
        out["final_elbo_method"] = "exact (enumeration over z)"
    else:
        tail = result.elbo_trace[-max(1, len(result.elbo_trace) // 10) :]
        out["final_elbo_per_point"] = sum(tail) / len(tail) if tail else float("nan")
        out["final_elbo_method"] = "Monte Carlo (mean of the last 10% of steps)"
    return out


def _notes(metrics: dict[str, Any]) -> str:
    lines = [
        "ELBO, log p(x) and KL are exact (enumeration over z) at each method's final parameters;",
        "log p(x) = ELBO + KL(q || p(z|x)). The last column compares log p(x) with the exact EM optimum.",
    ]
    if metrics.get("truth_log_likelihood_per_point") is not None:
        lines.append(f"log p(x)/point at the true parameters: {metrics['truth_log_likelihood_per_point']:.4f}.")
    if metrics["status"] != "complete":
        lines.append(f"Status: {metrics['status']}.")
    return "\n".join(lines)
