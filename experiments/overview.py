"""``vizoo report``: the guide comparison for every registered model, and the seed experiments, as one report.

    runs/report-<timestamp>/
        report.md           tables and figures, Markdown (figures are the PNGs beside it)
        report.html         the same, one self-contained page (PNGs embedded as base64)
        <model>/...         each model's comparison folder (compare.md, CSVs, ArviZ netCDF, figures)
        seeds/...           the seed experiments' figures and their comparisons
        report.json         every number in the report

Each model runs at a modest size (``experiments/report.toml``: its bundled config's budgets, capped) on its
real data where it has one, so the whole report fits in ``make run``'s 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import base64
import html
import re
import time
import tomllib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from ..models.errors import ConfigError
from . import report, seeds
from .compare import CompareOptions, base_config, compare, tiny_overrides
from .config import MAX_SEEDS, DataOptions, EMConfig, EvalConfig, SVIConfig
from .registry import MODELS, resolve


@dataclass(frozen=True)
class ReportOptions:
    output_dir: str = "runs"
    seeds: int = 2
    models: tuple[str, ...] = ()  # default: every registered model
    tiny: bool = False  # smoke-test sizes (tests)
    progress: bool = True
    experiments: tuple[str, ...] | None = None  # seed experiments (default: every bundled one)


def write_report(opts: ReportOptions, log=print) -> Path:
    """Run every comparison and seed experiment and write the report folder; returns it."""
    start, cpu_start = time.perf_counter(), time.process_time()
    if opts.seeds < 1:
        raise ConfigError(f"--seeds must be a whole number >= 1, got {opts.seeds!r}")
    if opts.seeds > MAX_SEEDS:
        raise ConfigError(f"--seeds={opts.seeds} is larger than the limit of {MAX_SEEDS:,} (a report this long would take days)")
    names = list(opts.models or MODELS)
    for name in names:
        resolve(name)  # unknown model: one line, before any work
    bundled = seeds.bundled()
    wanted = list(bundled) if opts.experiments is None else list(opts.experiments)
    experiments = []
    for e in wanted:
        if e not in bundled:
            raise ConfigError(f"unknown seed experiment {e!r}; known: {', '.join(bundled)}")
        experiments.append(seeds.load(bundled[e]))
    sizes = ReportSizes.load()
    out = report.make_run_dir(Path(opts.output_dir), "report")
    log(f"report: {len(names)} models, {len(experiments)} seed experiments -> {out}")
    sections, numbers = [], {"models": {}, "seeds": {}}
    overview = ["| model | data and size | best guide (ELBO / point) | its total gap | approximation | amortisation | time (s) |",
                "|:---|:---|:---|---:|---:|---:|---:|"]  # prose left, numbers right
    for i, name in enumerate(names, 1):
        spec = resolve(name)
        t0 = time.perf_counter()
        log(f"[{i}/{len(names)}] {name} ({time.perf_counter() - start:.0f} s so far)")
        raw, _ = base_config(spec, None)
        overrides = tiny_overrides() if opts.tiny else sizes.overrides(name, raw)
        result = compare(CompareOptions(name, seeds=opts.seeds, overrides=overrides, output_dir=str(out / "models"),
                                        progress=opts.progress, draws=40 if opts.tiny else sizes.draws), log=_indent(log))
        folder = result.out_dir.relative_to(out)
        text = result.markdown.replace("# Guides compared: ", f"## {name}: ", 1)
        text = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", lambda m: f"![{m.group(1)}]({folder}/{m.group(2)})", text)
        text = text.replace("## ArviZ:", "### ArviZ:").replace("\n### SVI", "\n#### SVI").replace("\n### exact", "\n#### exact")
        sections.append(text + f"\nFolder: `{folder}` (CSV tables, ArviZ netCDF, each seed's runs).\n")
        numbers["models"][name] = {"summary": result.summary, "wall_time_s": result.wall_time_s, "folder": str(folder)}
        overview.append(_overview_row(name, result))
        log(f"  {name} done in {time.perf_counter() - t0:.0f} s")
    seed_parts = []
    (out / "seeds").mkdir()
    for exp in experiments:
        t0 = time.perf_counter()
        log(f"[seed experiment] {exp.name} ({time.perf_counter() - start:.0f} s so far)")
        res = seeds.run(exp, out / "seeds", tiny=opts.tiny, progress=opts.progress, log=_indent(log, quiet=True))
        seed_parts.append(f"### {exp.title}\n\n![{exp.name}](seeds/{res['figure']})\n\n{res['caption']}\n\n{res['table']}\n")
        numbers["seeds"][exp.name] = {**{k: v for k, v in res.items() if k in ("rows", "caption")},
                                      "wall_time_s": time.perf_counter() - t0}
        log(f"  {exp.name} done in {time.perf_counter() - t0:.0f} s")
    total = time.perf_counter() - start
    size = "tiny (smoke test)" if opts.tiny else "modest (each bundled config's budgets capped: see experiments/report.toml)"
    md = "\n".join([
        "# vizoo: guides compared on every model",
        "",
        f"{len(names)} models, {opts.seeds} seed{'s' if opts.seeds > 1 else ''} each, sizes {size}; "
        f"{len(experiments)} seed experiments; {total:.0f} s in all.",
        "",
        "## Overview",
        "",
        "The best registered guide per model (highest mean ELBO per point), and its gap split where the posterior is exact "
        "(\"≥\": the family's best member q* comes from a local search that was not certified, so the amortisation gap "
        "is a lower bound).",
        "",
        "\n".join(overview),
        "",
        "## Seed experiments",
        "",
        "\n".join(seed_parts),
        "## Every model",
        "",
        "\n".join(sections),
    ])
    report.write_atomic(out / "report.md", md)
    report.write_atomic(out / "report.html", to_html(md, out))
    numbers["wall_time_s"] = total
    numbers["cpu_time_s"] = time.process_time() - cpu_start  # this process, every thread: the report runs in one
    report.write_json(out / "report.json", numbers)
    log(f"report written in {total:.0f} s: {out / 'report.md'}, {out / 'report.html'}")
    return out


@dataclass(frozen=True)
class ReportSizes:
    """experiments/report.toml: the caps on every comparison's budgets, and per-model overrides."""

    steps: int
    points: int
    em_iters: int
    importance_samples: int
    refit_steps: int
    draws: int
    models: dict[str, tuple[str, ...]]

    @classmethod
    def load(cls) -> "ReportSizes":

        raw = tomllib.loads((files(__package__) / "report.toml").read_text(encoding="utf-8"))
        models = {name: tuple(entry.get("overrides", ())) for name, entry in raw.get("models", {}).items()}
        return cls(**raw["caps"], models=models)

    def overrides(self, name: str, raw: dict) -> tuple[str, ...]:
        """``--set`` items for model ``name`` from its raw base config: each budget capped (steps, data points,
        reference iterations, importance samples, held-out refit steps), batches larger than the capped data
        switched off, then the model's own overrides."""
        def get(table: str, key: str, default):
            return raw.get(table, {}).get(key, default)

        subset = get("data", "subset", DataOptions.subset) or self.points
        out = [f"svi.steps={min(get('svi', 'steps', SVIConfig.steps), self.steps)}",
               f"data.subset={min(subset, self.points)}",
               f"data.num_points={min(get('data', 'num_points', DataOptions.num_points), self.points)}",
               f"em.max_iter={min(get('em', 'max_iter', EMConfig.max_iter), self.em_iters)}",
               f"eval.importance_samples={min(get('eval', 'importance_samples', EvalConfig.importance_samples), self.importance_samples)}",
               f"eval.refit_steps={min(get('eval', 'refit_steps', EvalConfig.refit_steps), self.refit_steps)}"]
        if get("svi", "batch_size", 0) >= min(subset, self.points) // 2:
            out.append("svi.batch_size=0")
        return tuple(out) + self.models.get(name, ())


def _indent(log, quiet: bool = False):
    def inner(msg: str) -> None:
        if quiet and "\n" in msg:
            return
        log("\n".join("  " + line for line in str(msg).splitlines()))
    return inner


def _overview_row(name: str, result) -> str:
    guides = [e for e in result.summary if e["kind"] == "guide" and e.get("elbo") is not None]
    if not guides:
        return f"| {name} | {result.title} | – | – | – | – | {result.wall_time_s:.0f} |"
    best = max(guides, key=lambda e: e["elbo"])

    def f(key):
        v = best.get(key)
        return "–" if v is None else f"{round(v, 4) + 0.0:.4f}"  # no "-0.0000": round first, + 0.0 drops the sign of zero

    amortisation = f("amortisation_gap")
    if (best.get("amortisation_lower_bound") or 0) > 0 and amortisation != "–":
        amortisation = "≥ " + amortisation  # q* from an uncertified local search: a lower bound (see compare.md)
    return (f"| {name} | {result.title.removeprefix(name + ' on ')} | {best['method']} ({f('elbo')}) | {f('total_gap')} | "
            f"{f('approximation_gap')} | {amortisation} | {result.wall_time_s:.0f} |")


# --------------------------------------------------------------------------- Markdown -> one HTML page

_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.85em}td,th{border:1px solid #ccc;padding:.25em .5em}
td{text-align:right}td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}code{background:#f3f3f3}"""


def to_html(md: str, root: Path) -> str:
    """The report's Markdown (headings, paragraphs, lists, pipe tables, fenced code, images) as one HTML page,
    every image embedded as a base64 data URI so the page stands alone."""
    out, lines, i = [], md.splitlines(), 0

    def inline(text: str) -> str:
        text = html.escape(text, quote=False)
        text = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", lambda m: _img(root, m.group(2), m.group(1)), text)
        text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
        return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)

    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1 : j])) + "</pre>")
            i = j + 1
            continue
        if line.startswith("|"):
            rows, align = [], []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in re.split(r"(?<!\\)\|", lines[i].strip()[1:-1])]  # "\\|": a pipe in a cell
                if re.fullmatch(r"\|[-:| ]+\|", lines[i].strip()):  # the alignment row: ":---" left, "---:" right
                    align = ["left" if c.startswith(":") and not c.endswith(":") else "center" if c.startswith(":")
                             else "right" if c.endswith(":") else "" for c in cells]
                else:
                    rows.append([c.replace("\\|", "|") for c in cells])
                i += 1
            head, *body = rows

            def td(j: int, c: str) -> str:
                default = "left" if j == 0 else "right"  # the page's CSS: the first column left, numbers right
                style = f" style='text-align:{align[j]}'" if j < len(align) and align[j] not in ("", default) else ""
                return f"<td{style}>{inline(c)}</td>"

            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(td(j, c) for j, c in enumerate(r)) + "</tr>" for r in body) + "</table>")
            continue
        m = re.match(r"(#{1,6}) (.*)", line)
        if m:
            out.append(f"<h{len(m.group(1))}>{inline(m.group(2))}</h{len(m.group(1))}>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>vizoo report</title><style>{_STYLE}</style></head>"
            f"<body>{''.join(out)}</body></html>\n")


def _img(root: Path, src: str, alt: str) -> str:
    path = root / src
    if not path.is_file():
        return f"[missing figure {html.escape(src)}]"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'>"
