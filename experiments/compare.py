"""Compare guides: every guide of a model, plus the exact reference, on the same data, budget and seeds.

    vizoo compare MODEL [--data D] [--seeds N] [--guides a,b] [--time S] [--set key=value ...]

For each seed the comparison runs the model's experiment (``run.run_experiment``: the exact reference fit and
SVI with each guide from one shared initialisation), then, where the posterior is exact, splits each guide's
gap at its own learned parameters into approximation and amortisation gaps (:mod:`.gaps`). ``--time S`` is the
fair mode: every guide trains for the same S seconds of wall time (``svi.max_seconds``; ``svi.steps`` becomes an
upper bound, the limit unless set with ``--set``), not the same number of steps, and the table says when each
reached within 1% of its own final ELBO (:mod:`.convergence`).

This module is the orchestration; each idea has its own module:

* :mod:`.gaps`: the gap split (total = approximation + amortisation, by independent routes);
* :mod:`.tables`: summaries over seeds, the Markdown page and the CSV files;
* :mod:`.posterior_draws`: draws of each guide's q and of the exact posterior, for pictures and ArviZ;
* :mod:`.plots`: ELBO against wall time, posterior marginals, binary correlations;
* :mod:`.inference_data`: ArviZ InferenceData (posterior, observed data, pointwise log-likelihood) and its export.

Writes, under ``<output_dir>/compare-<model>-<timestamp>/``: ``compare.csv`` (one row per seed and method),
``summary.csv`` and ``compare.md`` (mean and spread over seeds), ``elbo_time.png`` (ELBO against wall time),
``marginals.png`` (posterior marginals of a few points, exact beside each guide), ``correlation.png``
(binary latents: the posterior correlation mean field cannot express), ``forest.png`` (ArviZ), ``arviz/*.nc``
(each guide's posterior, drawn with ``pyro.infer.Predictive``, and the exact posterior, as InferenceData),
``compare.json``, and each seed's run folders under ``runs/``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..guides import auto
from ..models.errors import ConfigError
from ..models.spec import GuideSpec, ModelSpec
from . import report
from .config import (
    MAX_SEEDS,
    SIZE_LIMITS,
    RunConfig,
    apply_override,
    bundled_configs,
    parse_config,
)
from .convergence import time_to_within
from .devices import to_cpu
from .gaps import SearchOptions, gap_split
from .inference_data import export_arviz
from .plots import plot_correlation, plot_elbo_time, plot_marginals
from .posterior_draws import posterior_draws, select_points
from .registry import resolve
from .run import DTYPES, RunResult, run_experiment
from .tables import compare_markdown, markdown_table, summarise, write_tables

BASELINES = ("AutoNormal", "AutoDelta")
MAX_DRAWS = 1_000_000  # posterior draws per method (--draws)
MAX_POINTS = 100  # data points the posterior pictures show
MAX_RESTARTS = 1_000  # random starts per point in the search for q* (each is one climb over every point)

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
    restarts: int = 8  # random starts per point in the search for the family's best member q* (gaps.SearchOptions)
    time: float | None = None  # the fair mode: seconds of training per guide (svi.max_seconds); steps as many as fit


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
    if opts.seeds > MAX_SEEDS:
        raise ConfigError(f"--seeds={opts.seeds} is larger than the limit of {MAX_SEEDS:,} (a comparison this long would "
                          "take days; if you meant it, raise MAX_SEEDS in experiments/config.py)")
    if opts.points < 1 or opts.draws < 2:
        raise ConfigError(f"points must be >= 1 and draws >= 2, got points={opts.points}, draws={opts.draws}")
    if not isinstance(opts.restarts, int) or isinstance(opts.restarts, bool) or opts.restarts < 0:
        raise ConfigError(f"--restarts must be a whole number >= 0, got {opts.restarts!r}")
    if opts.time is not None and (isinstance(opts.time, bool) or not isinstance(opts.time, (int, float))
                                  or not math.isfinite(opts.time) or opts.time <= 0):
        raise ConfigError(f"--time must be a positive number of seconds, got {opts.time!r}")
    for key, value, limit in (("--draws", opts.draws, MAX_DRAWS), ("points", opts.points, MAX_POINTS),
                              ("--restarts", opts.restarts, MAX_RESTARTS)):
        if value > limit:
            raise ConfigError(f"{key}={value} is larger than the limit of {limit:,} (the pictures and the ArviZ export "
                              "would not fit in memory)")
    spec = resolve(opts.model)
    raw, source = base_config(spec, opts.data, opts.config)
    raw = copy.deepcopy(raw)
    raw["name"] = "compare"
    raw["model"] = opts.model
    for item in opts.overrides:
        apply_override(raw, item)
    if opts.data:
        raw.setdefault("data", {})["name"] = opts.data
    if opts.time is not None:  # the fair mode: the same wall time for every guide; svi.steps only if set with --set
        svi = raw.setdefault("svi", {})
        svi["max_seconds"] = float(opts.time)
        if not any(item.partition("=")[0].strip() == "svi.steps" for item in opts.overrides):
            svi["steps"] = SIZE_LIMITS["svi.steps"]
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
    if opts.time is not None:
        source += f"; fair mode: every guide trained for {opts.time:g} s of wall time, as many steps as fit"
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
        mine = seed_rows(spec, results, seed, SearchOptions(restarts=opts.restarts, seed=seed))
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
    markdown = compare_markdown(title, source, opts.seeds, summary, rows, figures, out_dir)
    write_tables(out_dir, rows, summary, markdown)
    result = CompareResult(out_dir, title, rows, summary, markdown, figures, time.perf_counter() - start, runs,
                           interrupted=any(r.interrupted for rs in runs for r in rs))
    report.write_json(out_dir / "compare.json", {"title": title, "source": source, "seeds": opts.seeds,
                                                 "rows": rows, "summary": summary, "wall_time_s": result.wall_time_s})
    log(markdown_table(summary))
    return result


def _num(v: float | None) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.4f}"


def seed_rows(spec: ModelSpec, results: list[RunResult], seed: int,
              search: SearchOptions = SearchOptions()) -> list[dict[str, Any]]:
    """The table's rows for one seed: the reference fit, then every guide (``search``: how q* is looked for)."""
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
            converged = time_to_within(gm["elbo_curve"], gm["elbo_times"])  # experiments/convergence.py
            row["time_to_1pct_s"] = None if converged is None else converged.seconds
            gs = spec.guides[g]
            if m["enumerable"] and gs.optimum is not None:
                row.update(gap_split(spec, gs, x, res.fits[f"SVI {g}"], res.trained[f"SVI {g}"],
                                     elbo_q=gm["final_elbo_per_point"], options=search))
            elif row["log_p"] is not None:
                row["total_gap"] = row["log_p"] - row["elbo"]  # both estimated: IWAE - ELBO
            if getattr(res.trained[f"SVI {g}"], "point_mass", False):
                row["total_gap"] = row["approximation_gap"] = row["amortisation_gap"] = None  # not a bound: no gap
            rows.append(row)
    return rows


def _heldout(metrics: dict[str, Any], method: str) -> dict[str, float]:
    """The method's extra columns: its held-out metrics ("heldout ...") and its agreement with the data's true
    labels ("true labels ...", e.g. the tagger's accuracies against gold tags), where the run has them."""
    out = {}
    for key, prefix in (("heldout", "heldout"), ("labels", "true labels")):
        values = (metrics.get(key) or {}).get(method, {})
        out.update({f"{prefix} {k}": v for k, v in values.items() if isinstance(v, (int, float))})
    return out


def pictures(spec: ModelSpec, results: list[RunResult], out_dir: Path, opts: CompareOptions, log) -> list[str]:
    """ELBO against wall time; and, from seed 0's posterior draws, the marginals, the binary correlations and the
    ArviZ export with its forest plot. Returns the figure files written."""
    figures = []
    plot_elbo_time(out_dir / "elbo_time.png", results)
    figures.append("elbo_time.png")
    points = select_points(spec, results, opts.points)
    draws, sources = posterior_draws(spec, results, opts.draws, points)
    draws, points = to_cpu(draws), points.cpu()  # the pictures' tables, on the CPU (sources stay with the data)
    if draws:
        plot_marginals(out_dir / "marginals.png", draws, points.tolist())
        figures.append("marginals.png")
        if plot_correlation(out_dir / "correlation.png", draws, points.tolist()):
            figures.append("correlation.png")
        if export_arviz(spec, out_dir, draws, points.tolist(), sources):
            figures.append("forest.png")
    log(f"figures: {', '.join(figures)}")
    return figures
