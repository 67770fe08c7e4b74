"""The comparison's tables: per-method summaries over seeds (mean and sample sd), the Markdown table and page
(``compare.md``), and the CSV files (``compare.csv``: one row per seed and method; ``summary.csv``)."""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path
from typing import Any

from . import report

# the table's numeric columns: key -> header
COLUMNS = {
    "elbo": "ELBO / point",
    "log_p": "log p(x) / point",
    "total_gap": "total gap",
    "approximation_gap": "approximation gap",
    "amortisation_gap": "amortisation gap",
    "certified": "q\\* certified",
    "several_optima": "several optima",
    "wall_time_s": "time (s)",
    "steps": "steps",
    "time_to_1pct_s": "time to 1% (s)",
}



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



def _cell(entry: dict[str, Any], key: str) -> str:
    v = entry.get(key)
    if v is None:
        return "–"
    digits = 2 if key in ("wall_time_s", "time_to_1pct_s") else 0 if key == "steps" else 4
    text = f"{round(v, digits) + 0.0:.{digits}f}"
    if key in ("certified", "several_optima"):  # shares of points, averaged over seeds
        return f"{100 * v:.1f}%"
    if key == "amortisation_gap" and (entry.get("amortisation_lower_bound") or 0) > 0:
        text = "≥ " + text  # q* rests on an uncertified local search: the family's optimum may be higher
    sd, se = entry.get(f"{key}_sd"), entry.get(f"{key}_se")
    if sd is not None:
        text += f" ± {sd:.{digits}f}"
    elif se is not None and math.isfinite(se):
        text += f" (se {se:.4f})"
    return text


def markdown_table(summary: list[dict[str, Any]]) -> str:
    """Markdown: one row per method, every column as mean ± sd over seeds."""
    heldout = [k for prefix in ("heldout ", "true labels ")  # held-out columns, then agreement with true labels
               for k in dict.fromkeys(k for e in summary for k in e if k.startswith(prefix) and not k.endswith(("_sd", "_se")))]
    keys = list(COLUMNS) + heldout
    headers = dict(COLUMNS)
    if any(e.get("log_p_se") is not None for e in summary):  # importance sampled: an IWAE estimate, not log p(x)
        headers["log_p"] = "IWAE estimate of log p(x) / point (a lower bound)"
    head = "| method | " + " | ".join([headers[k] for k in COLUMNS] + heldout) + " |"
    rows = [head, "|---|" + "---:|" * len(keys)]
    for e in summary:
        name = e["method"] + (f" ({e['estimator']})" if e.get("estimator") else "")
        rows.append(f"| {name} | " + " | ".join(_cell(e, k) for k in keys) + " |")
    return report.drop_empty_columns("\n".join(rows))  # a column with nothing in it (no exact reference) goes


def write_tables(out_dir: Path, rows: list[dict[str, Any]], summary: list[dict[str, Any]], markdown: str) -> None:
    """``compare.csv`` (the rows), ``summary.csv`` and ``compare.md``."""
    for name, table in (("compare.csv", rows), ("summary.csv", summary)):
        keys = list(dict.fromkeys(k for r in table for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for r in table:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in keys})
        report.write_atomic(out_dir / name, buf.getvalue())
    report.write_atomic(out_dir / "compare.md", markdown)


def compare_markdown(title: str, source: str, seeds: int, summary, rows, figures: list[str], out_dir: Path) -> str:
    """The comparison's page: the table, what its columns mean, the figures and the ArviZ summaries."""
    seeds = f"{seeds} seed{'s' if seeds > 1 else ''}"
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
        "(closed form, or the best per point of coordinate ascent from the prior, the guide's q, the posterior mode "
        "and random starts), and the **amortisation gap** ELBO(q*) − ELBO(q). For a free per-point guide the latter "
        "is its optimisation shortfall.",
        "- **q\\* certified**: the share of points where branch and bound proved q* the family's global optimum "
        "(binary mean field, K ≤ 10); **several optima**: the share of points whose starts reached more than one "
        "local optimum. Where q* is not certified everywhere the amortisation gap is marked ≥: a lower bound, the "
        "family's optimum may lie higher (and the approximation gap is then an upper bound).",
        "- **steps**: SVI steps taken (the reference: its iterations); **time to 1%**: the training time at which the "
        "guide's ELBO, smoothed by a running mean over 5% of its steps, came within 1% of its own final value "
        "(|ELBO_t − ELBO_final| ≤ 0.01 |ELBO_final|) and stayed there (experiments/convergence.py). With `--time` "
        "every guide had the same wall time, so steps differ and this column says how much of it each needed.",
        "- SVI AutoNormal / AutoDelta are Pyro's autoguides (outside baselines, continuous latents only); "
        "AutoDelta's objective is log p(x, z*) (joint MAP), not a bound, so it has no gap.",
    ]
    for f in figures:
        lines += ["", f"![{f}]({f})"]
    summary_path = out_dir / "arviz_summary.md"
    if summary_path.exists():
        lines += ["", summary_path.read_text(encoding="utf-8")]
    return "\n".join(lines) + "\n"

