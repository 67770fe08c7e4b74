"""Compare guides: every guide of a model, plus the exact reference, on the same data, budget and seeds.

    vizoo compare MODEL [--data D] [--seeds N] [--guides a,b] [--set key=value ...]

For each seed the comparison runs the model's experiment (``run.run_experiment``: the exact reference fit and
SVI with each guide from one shared initialisation), then, where the posterior is exact, splits each guide's
gap at its own learned parameters theta:

    total gap          log p(x) - ELBO(q)              = KL(q || p(z | x, theta))
    approximation gap  log p(x) - ELBO(q*)             = KL(q* || p(z | x, theta))
    amortisation gap   ELBO(q*) - ELBO(q)

where q* is the best member of the guide's family for each point (``GuideSpec.optimum``: coordinate ascent,
fixed points or closed form). Coordinate ascent finds local optima, so it runs twice, from the prior and from
the guide's own q, and the higher ELBO is q*: the amortisation gap is then never negative, and is a lower
bound on the distance to the family's global optimum where CAVI could miss it. The total and approximation gaps are computed as KL divergences by enumeration,
the amortisation gap as a difference of two ELBOs, so "approximation + amortisation = total" is a check
between independent routes. For a free (per-point) guide the "amortisation" gap is its optimisation
shortfall: how far SVI stopped from its family's optimum.

Writes, under ``<output_dir>/compare-<model>-<timestamp>/``: ``compare.csv`` (one row per seed and method),
``summary.csv`` and ``compare.md`` (mean and spread over seeds), ``elbo_time.png`` (ELBO against wall time),
``marginals.png`` (posterior marginals of a few points, exact beside each guide), ``correlation.png``
(binary latents: the posterior correlation mean field cannot express), ``forest.png`` (ArviZ), ``arviz/*.nc``
(each guide's posterior, drawn with ``pyro.infer.Predictive``, and the exact posterior, as InferenceData),
``compare.json``, and each seed's run folders under ``runs/``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import importlib.util
import inspect
import io
import math
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.infer import Predictive
from pyro.poutine.util import site_is_subsample

from ..guides import auto
from ..models.errors import ConfigError
from ..models.spec import GuideSpec, ModelSpec
from . import report
from .config import RunConfig, apply_override, bundled_configs, parse_config
from .registry import resolve
from .run import DTYPES, RunResult, run_experiment

BASELINES = ("AutoNormal", "AutoDelta")
SEQUENTIAL_DRAWS = 200  # posterior draws of a guide that cannot be vectorised over draws (one call per draw)
DRAW_CHUNK = 100  # draws per vectorised call

# the table's numeric columns: key -> header
COLUMNS = {
    "elbo": "ELBO / point",
    "log_p": "log p(x) / point",
    "total_gap": "total gap",
    "approximation_gap": "approximation gap",
    "amortisation_gap": "amortisation gap",
    "wall_time_s": "time (s)",
}


@dataclass(frozen=True)
class CompareOptions:
    """model: a registered name or a declaration's path. data: a data set of the model (default: its bundled
    config's, else its first real data set). seeds: how many seeds (config seed, +1, ...). guides: which to
    train (default: every registered guide and the baselines that apply). overrides: ``key=value`` for the
    base config (e.g. ``svi.steps=200``). draws / points: posterior draws per method, and how many data points
    the posterior pictures and the ArviZ export show."""

    model: str
    data: str | None = None
    seeds: int = 3
    guides: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    output_dir: str = "runs"
    progress: bool = True
    draws: int = 1000
    points: int = 3
    config: str | None = None  # a bundled config of the model to start from, instead of the default choice


@dataclass
class CompareResult:
    out_dir: Path
    title: str
    rows: list[dict[str, Any]]  # one per seed and method
    summary: list[dict[str, Any]]  # one per method: mean and sd of every column
    markdown: str
    figures: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    runs: list[list[RunResult]] = field(default_factory=list)  # per seed, the runs (in memory: data, fits, guides)
    interrupted: bool = False  # Ctrl-C: the tables hold what finished


# --------------------------------------------------------------------------- set-up (everything checked first)


def tiny_overrides() -> tuple[str, ...]:
    """Smoke-test sizes, valid for every model's config: a few dozen points, a few steps."""
    return ("svi.steps=15", "svi.batch_size=0", "em.max_iter=3", "data.subset=40", "data.num_points=40",
            "eval.importance_samples=8", "eval.refit_steps=3", "eval.train_points=0")


def base_config(spec: ModelSpec, data: str | None, config: str | None = None) -> tuple[dict[str, Any], str]:
    """The raw config the comparison starts from, and where it came from: ``config`` if given, else the bundled
    config named ``<model>_<data set>`` (the model's real data sets first, synthetic last), else the defaults."""
    import tomllib

    if config is not None:
        path = bundled_configs().get(config)
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8")) if path else {}
        if raw.get("model") != spec.name:
            raise ConfigError(f"config {config!r} is not a bundled config of model {spec.name!r}")
        return raw, f"bundled config {config}"
    if data is not None and data not in spec.datasets:
        raise ConfigError(f"--data: unknown data set {data!r} for model {spec.name!r}; known: {', '.join(spec.datasets)}")
    names = [data] if data else sorted(spec.datasets, key=lambda d: d == "synthetic")
    bundled = bundled_configs()
    for d in names:
        path = bundled.get(f"{spec.name}_{d}")
        if path is not None:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            if raw.get("model") == spec.name:
                return raw, f"bundled config {spec.name}_{d}"
    d = names[0]
    elbos = [e for e in next(iter(spec.guides.values())).valid_elbos if all(e in g.valid_elbos for g in spec.guides.values())]
    raw = {"model": spec.name, "data": {"name": d}}
    if elbos:
        raw["svi"] = {"elbo": "TraceEnum_ELBO" if "TraceEnum_ELBO" in elbos else elbos[0]}
    return raw, f"default settings on {d}"


def _elbo_for(g: GuideSpec, elbo: str) -> str:
    return elbo if elbo in g.valid_elbos else g.valid_elbos[0]


def _baselines(spec: ModelSpec, cfg: RunConfig) -> tuple[dict[str, GuideSpec], str]:
    """Pyro's autoguides as GuideSpecs, if they apply to this model ({} and why not, if they do not)."""
    data = spec.load(cfg.data, cfg.model_args, cfg.seed)
    x = data.x.to(DTYPES[cfg.dtype])
    init = spec.init_params(x, cfg.model_args, cfg.seed)
    why = auto.why_not(spec.learnable(init, cfg.model_args), x)
    if why:
        return {}, why
    args = cfg.model_args
    mean_field = spec.guides.get("mean_field")
    elbos = ("Trace_ELBO", "TraceMeanField_ELBO")
    out = {}
    for kind in BASELINES:
        build = (lambda kind: lambda x, init: auto.AutoBaseline(kind, spec.learnable(init, args), x))(kind)
        optimum = mean_field.optimum if (kind == "AutoNormal" and mean_field is not None) else None
        out[kind] = GuideSpec(kind, auto.SUMMARIES[kind], build, elbos, optimum=optimum)
    return out, ""


def plan(opts: CompareOptions) -> tuple[ModelSpec, dict[str, Any], str, dict[str, str]]:
    """Check everything before any work: the model, data, seeds, guides and overrides. Returns the extended
    spec (with any baselines), the raw base config, its source, and guide -> the ELBO it trains with."""
    if not isinstance(opts.seeds, int) or opts.seeds < 1:
        raise ConfigError(f"--seeds must be a whole number >= 1, got {opts.seeds!r}")
    if opts.points < 1 or opts.draws < 2:
        raise ConfigError(f"points must be >= 1 and draws >= 2, got points={opts.points}, draws={opts.draws}")
    spec = resolve(opts.model)
    raw, source = base_config(spec, opts.data, opts.config)
    raw = copy.deepcopy(raw)
    raw["name"] = "compare"
    raw["model"] = opts.model
    for item in opts.overrides:
        apply_override(raw, item)
    if opts.data:
        raw.setdefault("data", {})["name"] = opts.data
    cfg = parse_config(raw)  # every key checked
    elbo = cfg.svi.elbo
    registered = {name: _elbo_for(g, elbo) for name, g in spec.guides.items()}
    wanted = opts.guides or tuple(registered) + BASELINES
    extra, why = _baselines(spec, cfg) if any(g in BASELINES for g in wanted) else ({}, "")
    for g in opts.guides:
        if g in BASELINES and g not in extra:
            raise ConfigError(f"guide {g!r} does not apply to model {spec.name!r}: {why}")
        if g not in spec.guides and g not in BASELINES:
            raise ConfigError(f"guide {g!r} does not apply to model {spec.name!r}: its guides are "
                              f"{', '.join(spec.guides)}, and Pyro's {', '.join(BASELINES)} where the latents are continuous")
    spec = dataclasses.replace(spec, guides={**spec.guides, **extra})
    baseline_elbo = elbo if elbo in ("Trace_ELBO", "TraceMeanField_ELBO") else "Trace_ELBO"
    guides = {g: registered.get(g, baseline_elbo) for g in wanted if g in spec.guides}
    return spec, raw, source, guides


def _group_config(raw: dict[str, Any], spec: ModelSpec, guides: list[str], elbo: str, seed: int, name: str,
                  out: Path, with_reference: bool, progress: bool) -> RunConfig:
    """The run config of one seed and one group of guides that train with the same ELBO."""
    r = copy.deepcopy(raw)
    registered = [g for g in guides if g in resolve(r["model"]).guides]
    r.update(name=name, seed=seed, output_dir=str(out), progress=progress, guides=registered or ["mean_field"])
    r.setdefault("svi", {})["elbo"] = elbo
    em = r.setdefault("em", {})
    em["enabled"] = with_reference and em.get("enabled", True)  # once per seed, if at all
    r.setdefault("checkpoint", {})["enabled"] = False  # a comparison's runs are repeated, never resumed
    taken = {k for g in guides for k in inspect.signature(spec.guides[g].build).parameters}
    r["guide_args"] = {k: v for k, v in r.get("guide_args", {}).items() if k in taken}
    cfg = parse_config(r)
    return dataclasses.replace(cfg, guides=tuple(guides))


# --------------------------------------------------------------------------- the comparison


def compare(opts: CompareOptions, log=print) -> CompareResult:
    """Run the comparison described in the module docstring; returns its tables and writes its folder."""
    start = time.perf_counter()
    spec, raw, source, guides = plan(opts)
    seed0 = parse_config({**raw, "name": "compare"}).seed
    out_dir = report.make_run_dir(Path(opts.output_dir), f"compare-{spec.name}")
    groups: dict[str, list[str]] = {}
    for g, elbo in guides.items():
        groups.setdefault(elbo, []).append(g)
    log(f"compare {spec.name} ({source}): {len(guides)} guides x {opts.seeds} seeds -> {out_dir}")
    rows: list[dict[str, Any]] = []
    first: list[RunResult] = []
    runs: list[list[RunResult]] = []
    title = spec.name
    for k in range(opts.seeds):
        seed = seed0 + k
        results = []
        for i, (elbo, names) in enumerate(groups.items()):
            cfg = _group_config(raw, spec, names, elbo, seed, f"seed{seed}-{elbo}", out_dir / "runs", i == 0, opts.progress)
            log(f"[seed {k + 1}/{opts.seeds}] {', '.join(names)} with {elbo}")
            with warnings.catch_warnings():  # a guide with nothing to enumerate (the collapsed GMM) is fine under TraceEnum
                warnings.filterwarnings("ignore", message="TraceEnum_ELBO found no sample sites")
                results.append(run_experiment(cfg, progress=opts.progress, log=lambda *a: None, spec=spec))
        title = results[0].metrics["title"]
        mine = seed_rows(spec, results, seed)
        rows += mine
        runs.append(results)
        if k == 0:
            first = results
        for row in mine:
            log(f"  {row['method']}: ELBO/point {_num(row.get('elbo'))}, log p(x)/point {_num(row.get('log_p'))}, "
                f"gap {_num(row.get('total_gap'))} ({row['wall_time_s']:.1f} s)")
        if any(r.interrupted for r in results):  # Ctrl-C: tabulate what finished, run no further seed
            log("interrupted: the table holds the seeds that finished")
            break
    summary = summarise(rows)
    figures = pictures(spec, first, out_dir, opts, log)
    markdown = compare_markdown(title, source, opts, summary, rows, figures, out_dir)
    write_tables(out_dir, rows, summary, markdown)
    result = CompareResult(out_dir, title, rows, summary, markdown, figures, time.perf_counter() - start, runs,
                           interrupted=any(r.interrupted for rs in runs for r in rs))
    report.write_json(out_dir / "compare.json", {"title": title, "source": source, "seeds": opts.seeds,
                                                 "rows": rows, "summary": summary, "wall_time_s": result.wall_time_s})
    log(markdown_table(summary))
    return result


def _num(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.4f}"


@torch.no_grad()
def gap_split(spec: ModelSpec, optimum, x: torch.Tensor, params: Any, guide: Any, elbo_q: float | None = None) -> dict[str, float]:
    """Per point, at the guide's parameters: log p(x), ELBO(q), ELBO(q*), and the gaps (see the module docstring).
    Total and approximation gaps are KL divergences by enumeration; the amortisation gap is ELBO(q*) - ELBO(q).
    A guide with no table (an autoguide) brings its Monte Carlo ELBO as ``elbo_q``; its total gap is then
    log p(x) - elbo_q."""
    exact, n = spec.exact, x.shape[0]
    log_p = float(exact.log_evidence(x, params)) / n
    best = optimum(x, params)
    best_elbo = float(exact.elbo(x, params, best)) / n
    if hasattr(guide, "probs"):
        q = guide.probs(x, params)
        elbo_q = float(exact.elbo(x, params, q)) / n
        total = float(exact.kl(x, params, q)) / n
        warm = optimum(x, params, start=q)  # coordinate ascent is local: also climb from the guide's own q
        warm_elbo = float(exact.elbo(x, params, warm)) / n
        if warm_elbo > best_elbo:
            best, best_elbo = warm, warm_elbo
    else:
        total = log_p - elbo_q
    approximation = float(exact.kl(x, params, best)) / n
    return {"log_p": log_p, "elbo": elbo_q, "best_elbo": best_elbo, "total_gap": total,
            "approximation_gap": approximation, "amortisation_gap": best_elbo - elbo_q}


def seed_rows(spec: ModelSpec, results: list[RunResult], seed: int) -> list[dict[str, Any]]:
    """The table's rows for one seed: the reference fit, then every guide."""
    m0 = results[0].metrics
    x = results[0].x
    rows = []
    em = m0.get("exact")
    if em:
        by_elbo = em["objective"] == "ELBO"
        value = em["elbo_per_point" if by_elbo else "log_likelihood_per_point"]
        rows.append({"seed": seed, "method": em["method"], "kind": "reference", "elbo": value,
                     "log_p": None if by_elbo else value, "total_gap": None if by_elbo else 0.0,
                     "approximation_gap": None if by_elbo else 0.0, "amortisation_gap": None if by_elbo else 0.0,
                     "wall_time_s": em["wall_time_s"], "steps": em["iterations"],
                     **_heldout(m0, em["method"])})
    for res in results:
        m = res.metrics
        for g, gm in m["guides"].items():
            row = {"seed": seed, "method": f"SVI {g}", "kind": "baseline" if g in BASELINES else "guide",
                   "estimator": gm["elbo"], "elbo": gm["final_elbo_per_point"], "elbo_se": gm.get("final_elbo_se"),
                   "log_p": gm.get("log_likelihood_per_point"), "log_p_se": gm.get("log_likelihood_se"),
                   "total_gap": None, "approximation_gap": None, "amortisation_gap": None,
                   "wall_time_s": gm["wall_time_s"], "steps": gm["steps"], **_heldout(m, f"SVI {g}")}
            gs = spec.guides[g]
            if m["enumerable"] and gs.optimum is not None:
                row.update(gap_split(spec, gs.optimum, x, res.fits[f"SVI {g}"], res.trained[f"SVI {g}"],
                                     elbo_q=gm["final_elbo_per_point"]))
            elif row["log_p"] is not None:
                row["total_gap"] = row["log_p"] - row["elbo"]  # both estimated: IWAE - ELBO
            if getattr(res.trained[f"SVI {g}"], "point_mass", False):
                row["total_gap"] = row["approximation_gap"] = row["amortisation_gap"] = None  # not a bound: no gap
            rows.append(row)
    return rows


def _heldout(metrics: dict[str, Any], method: str) -> dict[str, float]:
    values = (metrics.get("heldout") or {}).get(method, {})
    return {f"heldout {k}": v for k, v in values.items() if isinstance(v, (int, float))}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: the mean and sample standard deviation over seeds of every numeric column."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("seed", "method", "kind", "estimator")))
    out = []
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        entry = {"method": method, "kind": mine[0]["kind"], "estimator": mine[0].get("estimator", ""), "seeds": len(mine)}
        for key in keys:
            values = [float(r[key]) for r in mine if r.get(key) is not None and math.isfinite(float(r[key]))]
            entry[key] = statistics.fmean(values) if values else None
            entry[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
        out.append(entry)
    return out


# --------------------------------------------------------------------------- tables


def _cell(entry: dict[str, Any], key: str) -> str:
    v = entry.get(key)
    if v is None:
        return "–"
    digits = 2 if key == "wall_time_s" else 4
    text = f"{round(v, digits) + 0.0:.{digits}f}"
    sd, se = entry.get(f"{key}_sd"), entry.get(f"{key}_se")
    if sd is not None:
        text += f" ± {sd:.{digits}f}"
    elif se is not None and math.isfinite(se):
        text += f" (se {se:.4f})"
    return text


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """Markdown: one row per method, every column as mean ± sd over seeds."""
    heldout = list(dict.fromkeys(k for e in summary for k in e if k.startswith("heldout ") and not k.endswith(("_sd", "_se"))))
    keys = list(COLUMNS) + heldout
    head = "| method | " + " | ".join(list(COLUMNS.values()) + heldout) + " |"
    rows = [head, "|---|" + "---:|" * len(keys)]
    for e in summary:
        name = e["method"] + (f" ({e['estimator']})" if e.get("estimator") else "")
        rows.append(f"| {name} | " + " | ".join(_cell(e, k) for k in keys) + " |")
    return "\n".join(rows)


def write_tables(out_dir: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]], markdown: str) -> None:
    for name, table in (("compare.csv", rows), ("summary.csv", summary)):
        keys = list(dict.fromkeys(k for r in table for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for r in table:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in keys})
        report.write_atomic(out_dir / name, buf.getvalue())
    report.write_atomic(out_dir / "compare.md", markdown)


def compare_markdown(title: str, source: str, opts: CompareOptions, summary, rows, figures: list[str], out_dir: Path) -> str:
    seeds = f"{opts.seeds} seed{'s' if opts.seeds > 1 else ''}"
    lines = [
        f"# Guides compared: {title}",
        "",
        f"From the {source}; {seeds}, every method from the same initialisation and with the same budget per seed. "
        "Cells are mean ± sample standard deviation over seeds (Monte Carlo estimates with one seed show their "
        "standard error instead).",
        "",
        markdown_table(summary),
        "",
        "- **ELBO / point** is exact (enumeration or closed form) where the model allows, otherwise a Monte Carlo "
        "average; **log p(x) / point** is each method's own fitted model's, exact where tractable, otherwise IWAE.",
        "- **total gap** = log p(x) − ELBO(q) = KL(q ‖ p(z|x)), at each guide's own parameters. It splits into the "
        "**approximation gap** KL(q* ‖ p(z|x)), where q* is the best member of the guide's family per point "
        "(coordinate ascent, fixed points or closed form), and the **amortisation gap** ELBO(q*) − ELBO(q). For a "
        "free per-point guide the latter is its optimisation shortfall.",
        "- SVI AutoNormal / AutoDelta are Pyro's autoguides (outside baselines, continuous latents only); "
        "AutoDelta's objective is log p(x, z*) (joint MAP), not a bound, so it has no gap.",
    ]
    for f in figures:
        lines += ["", f"![{f}]({f})"]
    summary_path = out_dir / "arviz_summary.md"
    if summary_path.exists():
        lines += ["", summary_path.read_text(encoding="utf-8")]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- pictures and ArviZ


@torch.no_grad()
def _guide_draws(guide, x: torch.Tensor, num_samples: int, sites: list[str]) -> dict[str, torch.Tensor]:
    """``num_samples`` draws of the guide's ``sites`` with ``pyro.infer.Predictive`` run on the guide itself (q is
    all we need; replaying the model on every draw would score the whole data set each time): vectorised over
    draws where the guide allows it, else one draw at a time."""

    pyro.set_rng_seed(0)
    try:  # vectorised, DRAW_CHUNK draws per call: a guide's intermediates (LDA's per-token tables) scale with them
        parts = []
        with pyro.validation_enabled(False):
            for start in range(0, num_samples, DRAW_CHUNK):
                size = min(DRAW_CHUNK, num_samples - start)
                parts.append(Predictive(guide, num_samples=size, return_sites=sites, parallel=True)(x))
        return {s: torch.cat([p[s] for p in parts]) for s in parts[0]}
    except (RuntimeError, ValueError, NotImplementedError, IndexError):
        pyro.set_rng_seed(0)  # one guide call per draw: at most SEQUENTIAL_DRAWS of them
        return Predictive(guide, num_samples=min(num_samples, SEQUENTIAL_DRAWS), return_sites=sites)(x)


def _point_sites(model, guide, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Latent sites of the guide that are local to the data plate: name -> (point axis, cardinality; 0 if not
    categorical with more than two values)."""

    n = x.shape[0]
    with poutine.block(), pyro.validation_enabled(False):
        trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=trace)).get_trace(x)
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site) or name not in model_trace.nodes:
            continue
        frames = [f for f in site["cond_indep_stack"] if f.size == n]
        if not frames:
            continue
        value = site["value"]
        event = site["fn"].event_dim
        axis = value.dim() - event + frames[0].dim
        fn = model_trace.nodes[name]["fn"]
        k = 0
        if fn.has_enumerate_support and event == 0 and not isinstance(fn, dist.Bernoulli):
            k = fn.enumerate_support(expand=False).shape[0]  # categorical: one-hot, so means are probabilities
        out[name] = (axis, k)
    return out


def _take(value: torch.Tensor, axis: int, points: torch.Tensor | None, cardinality: int) -> torch.Tensor:
    """(S, P, coords): the rows ``points`` (all if None) along the point axis (of the unbatched site), categorical one-hot."""
    v = value.movedim(axis + 1, 1)
    v = v if points is None else v[:, points]
    if cardinality:
        v = torch.nn.functional.one_hot(v.long(), cardinality)
    return v.reshape(v.shape[0], v.shape[1], -1).double().detach()


def select_points(spec: ModelSpec, results: list[RunResult], opts: CompareOptions, candidates: int = 400) -> torch.Tensor:
    """The points the pictures show: among the first ``candidates``, those whose exact posterior (at the first
    guide's parameters, from 256 draws) is most interesting: the largest covariance between binary latents,
    else the largest posterior variance summed over coordinates. The first points where nothing is exact."""
    res = results[0]
    n = res.x.shape[0]
    method = next(iter(res.trained), None)
    if method is None or not res.metrics["enumerable"] or spec.exact.draws is None:
        return torch.arange(min(opts.points, n))
    m = min(n, candidates)
    sites = _point_sites(res.models[method], res.trained[method], res.x)
    with torch.no_grad():
        exact = spec.exact.draws(res.x[:m], res.fits[method], 256, torch.Generator().manual_seed(1))
    taken = {s: _take(v, sites[s][0], None, sites[s][1]) for s, v in exact.items() if s in sites}
    binary = _binary_sites(taken)
    if binary:  # covariance, not correlation: a rare bit's correlation from 256 draws is noise
        v = taken[binary[0]] - taken[binary[0]].mean(0)
        cov = torch.einsum("spi,spj->pij", v, v) / (v.shape[0] - 1)
        score = (cov - torch.diag_embed(torch.diagonal(cov, dim1=-2, dim2=-1))).abs().amax((-2, -1))
    else:
        score = sum(v.var(0).sum(-1) for v in taken.values())
    return score.argsort(descending=True)[: opts.points]  # most interesting first


def posterior_draws(spec: ModelSpec, results: list[RunResult], opts: CompareOptions, points: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Seed 0's draws for the data points ``points``: "<method>" -> {site: (S, P, coords)} from the guide
    (pyro.infer.Predictive), and "exact | <method>" from the exact posterior at that method's parameters."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    gen = torch.Generator().manual_seed(0)
    for res in results:
        for method, guide in res.trained.items():
            model = res.models[method]
            sites = _point_sites(model, guide, res.x)
            if not sites:
                continue
            pred = _guide_draws(guide, res.x, opts.draws, list(sites))
            out[method] = {s: _take(pred[s], sites[s][0], points, sites[s][1]) for s in sites if s in pred}
            if res.metrics["enumerable"] and spec.exact.draws is not None and not getattr(guide, "point_mass", False):
                with torch.no_grad():
                    exact = spec.exact.draws(res.x[points], res.fits[method], opts.draws, gen)
                out[f"exact | {method}"] = {s: _take(v, sites[s][0], None, sites[s][1]) for s, v in exact.items()
                                            if s in sites}
    return out


def pictures(spec: ModelSpec, results: list[RunResult], out_dir: Path, opts: CompareOptions, log) -> list[str]:
    """ELBO against wall time; and, from seed 0's posterior draws, the marginals, the binary correlations and the
    ArviZ export with its forest plot. Returns the figure files written."""
    figures = []
    plot_elbo_time(out_dir / "elbo_time.png", results)
    figures.append("elbo_time.png")
    points = select_points(spec, results, opts)
    draws = posterior_draws(spec, results, opts, points)
    if draws:
        plot_marginals(out_dir / "marginals.png", draws, points.tolist())
        figures.append("marginals.png")
        if plot_correlation(out_dir / "correlation.png", draws, points.tolist()):
            figures.append("correlation.png")
        if export_arviz(out_dir, draws, points.tolist()):
            figures.append("forest.png")
    log(f"figures: {', '.join(figures)}")
    return figures


def plot_elbo_time(path: Path, results: list[RunResult]) -> None:
    """Every guide's ELBO per point against seconds of training, with the reference fit's objective line."""

    fig, ax = report.axes(figsize=(7, 4.2))
    values = []
    for res in results:
        for name, g in res.metrics["guides"].items():
            curve, times = np.asarray(g["elbo_curve"], float), np.asarray(g.get("elbo_times") or [], float)
            if curve.size == 0 or times.size != curve.size:
                continue
            smooth = report.smooth(curve)
            point_mass = getattr(res.trained.get(f"SVI {name}"), "point_mass", False)
            label = f"SVI {name} ({g['elbo']})" + (": log p(x, z*), not a bound" if point_mass else "")
            ax.plot(times[-len(smooth):], smooth, lw=1.5, ls=":" if point_mass else "-", label=label)
            if not point_mass:  # a MAP objective may climb far above every bound: leave it off the scale
                values += [float(np.percentile(curve, 20)), float(curve[-1])]
    em = results[0].metrics.get("exact")
    if em:
        level = em.get("log_likelihood_per_point", em.get("elbo_per_point"))
        ax.axhline(level, color="k", ls="--", lw=1.2, label=f"{em['method']} ({em['wall_time_s']:.2f} s): {em['objective']} / point = {level:.4f}")
        values.append(level)
    report.fit_ylim(ax, values)
    ax.set_xscale("log")
    ax.set_xlabel("wall time (s, log scale)")
    ax.set_ylabel("nats per data point")
    report.finish(fig, ax, path, f"ELBO against wall time: {results[0].metrics['title']}", legend_loc="lower right")


def _pairs(draws: dict[str, dict[str, torch.Tensor]]) -> list[str]:
    """Methods with exact draws beside them, in order."""
    return [m for m in draws if not m.startswith("exact | ") and f"exact | {m}" in draws] or \
        [m for m in draws if not m.startswith("exact | ")]


def plot_marginals(path: Path, draws: dict[str, dict[str, torch.Tensor]], points: list[int], max_coords: int = 12) -> None:
    """Rows: methods; columns: data points. Discrete coordinates: P(value) (bars); continuous: mean ± 2 sd.
    The exact posterior at the method's own parameters is drawn beside the guide's q."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = _pairs(draws)
    fig, axes = plt.subplots(len(methods), len(points), figsize=(3.6 * len(points), 2.3 * len(methods) + 0.6), dpi=110, squeeze=False)
    for r, method in enumerate(methods):
        for c, point in enumerate(points):
            ax = axes[r, c]
            offset, ticks = 0, []
            for label, mine, colour, shift in ((f"exact | {method}", draws.get(f"exact | {method}"), "k", -0.2),
                                               (method, draws[method], "C1", 0.2)):
                if mine is None:
                    continue
                pos = 0
                for site, v in mine.items():
                    if c >= v.shape[1]:
                        continue
                    vals = v[:, c, :max_coords]
                    xs = torch.arange(vals.shape[1]) + pos
                    discrete = bool(((vals == 0) | (vals == 1)).all())
                    if discrete:
                        ax.bar(xs + shift, vals.mean(0), width=0.4, color=colour, alpha=0.8, label=label if pos == 0 else None)
                    else:
                        ax.errorbar(xs + shift, vals.mean(0), yerr=2 * vals.std(0), fmt="o", ms=3, color=colour,
                                    label=label if pos == 0 else None)
                    if shift > 0:
                        ticks += [(float(x), f"{site}[{i}]") for i, x in enumerate(xs)]
                    pos += vals.shape[1] + 1
                offset = max(offset, pos)
            if ticks:
                ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks], rotation=90, fontsize=6)
            ax.set_title(f"{method}, point {point}", fontsize=8)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
            if r == 0 and c == 0:
                ax.legend(fontsize=6)
    fig.suptitle("Posterior marginals: exact p(z | x, θ) (black) beside each guide's q (orange), at the guide's own θ;\n"
                 "discrete: probability of 1 (one-hot for categories), continuous: mean ± 2 sd", fontsize=8)
    fig.tight_layout()
    report.save_png(fig, path)


def _binary_sites(v: dict[str, torch.Tensor]) -> list[str]:
    return [s for s, t in v.items() if t.shape[-1] >= 2 and bool(((t == 0) | (t == 1)).all()) and not _one_hot(t)]


def _one_hot(t: torch.Tensor) -> bool:
    return bool((t.sum(-1) == 1).all())


def correlations(v: torch.Tensor) -> torch.Tensor:
    """(P, K, K) correlation of the coordinates of v: (S, P, K) across draws (NaN-free: constant bits give 0)."""
    c = v - v.mean(0)
    cov = torch.einsum("spi,spj->pij", c, c) / (v.shape[0] - 1)
    sd = torch.diagonal(cov, dim1=-2, dim2=-1).clamp_min(1e-12).sqrt()
    return cov / (sd[..., :, None] * sd[..., None, :])


def plot_correlation(path: Path, draws: dict[str, dict[str, torch.Tensor]], points: list[int]) -> bool:
    """For binary latents: the exact posterior correlation between latent bits at the point (of those drawn) where
    it is strongest, beside each guide's (zero for mean field by construction). False if there are none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in _pairs(draws) if f"exact | {m}" in draws and _binary_sites(draws[f"exact | {m}"])]
    if not methods:
        return False
    fig, axes = plt.subplots(len(methods), 2, figsize=(6.4, 3.0 * len(methods)), dpi=110, squeeze=False)
    for r, method in enumerate(methods):
        site = _binary_sites(draws[f"exact | {method}"])[0]
        exact = correlations(draws[f"exact | {method}"][site])
        off = exact - torch.diag_embed(torch.diagonal(exact, dim1=-2, dim2=-1))
        p = int(off.abs().amax((-2, -1)).argmax())
        for c, (label, v) in enumerate(((f"exact | {method}", exact[p]), (method, correlations(draws[method][site])[p]))):
            ax = axes[r, c]
            v = v.clone()
            v.fill_diagonal_(float("nan"))  # the off-diagonal is the point
            im = ax.imshow(v.numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
            ax.set_title(f"{label}: corr({site}), data point {points[p]}", fontsize=7)
            ax.tick_params(labelsize=6)
        fig.colorbar(im, ax=axes[r].tolist(), shrink=0.8)
    fig.suptitle("Posterior correlation of binary latents (from draws): explaining away, which a factorised q cannot hold", fontsize=8)
    report.save_png(fig, path)
    return True


def export_arviz(out_dir: Path, draws: dict[str, dict[str, torch.Tensor]], points: list[int], max_coords: int = 12) -> bool:
    """Each method's draws as ArviZ InferenceData (netCDF, ``arviz/<method>.nc``; dims point (the data rows
    ``points``) and coordinate), ``arviz_summary.md`` (az.summary of the first of ``points`` per method) and
    ``forest.png`` (az.plot_forest of that point, methods side by side)."""
    import arviz as az
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out_dir / "arviz").mkdir(exist_ok=True)
    data, parts = {}, [f"## ArviZ: posterior summaries of data point {points[0]}", ""]
    for method, sites in draws.items():
        posterior = {s: v.numpy()[None] for s, v in sites.items()}  # (chain 1, draw, point, coord)
        dims = {s: ["point", f"{s}_coord"] for s in sites}
        idata = az.from_dict(posterior=posterior, dims=dims, coords={"point": points})
        fname = method.replace("exact | ", "exact_at_").replace("SVI ", "").replace(" ", "_")
        idata.to_netcdf(str(out_dir / "arviz" / f"{fname}.nc"))
        point0 = idata.posterior.isel(point=0).isel({f"{s}_coord": slice(0, max_coords) for s in sites})
        data[method] = point0
        table = az.summary(point0, kind="stats", round_to=3)
        parts += [f"### {method}", "", table.to_markdown() if _has_tabulate() else "```\n" + table.to_string() + "\n```", ""]
    report.write_atomic(out_dir / "arviz_summary.md", "\n".join(parts))
    names = list(data)
    first = next(iter(data.values()))
    coords = sum(int(v.size // (v.sizes["chain"] * v.sizes["draw"])) for v in first.data_vars.values())
    axes = az.plot_forest([data[m] for m in names], model_names=names, combined=True, hdi_prob=0.9,
                          figsize=(7, 1.5 + 0.22 * coords * len(names)))
    fig = axes.ravel()[0].figure
    fig.suptitle(f"az.plot_forest, data point {points[0]}: exact posterior (at each guide's θ) beside each guide (90% HDI)", fontsize=8)
    report.save_png(fig, out_dir / "forest.png")
    plt.close("all")
    return True


def _has_tabulate() -> bool:
    """pandas writes Markdown tables only with the optional ``tabulate`` package installed."""

    return importlib.util.find_spec("tabulate") is not None
