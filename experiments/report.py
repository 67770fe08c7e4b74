"""Everything a run writes, written atomically.

Each file is written to a temporary name in the same folder and renamed into place, so a reader
never sees half a file. ``metrics.json`` is written last and says ``"status": "complete"`` (or
``"interrupted"``); a run folder without it did not finish.

Files get the mode an ordinary ``open(path, "w")`` would give them (0o666 less the process umask), not
the temporary file's 0o600. A file or folder that cannot be written (a read-only or full disk, no
permission) is an :class:`OutputError`: one line naming the path and the errno, and no temporary file
left behind.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.errors import VizooError


class OutputError(VizooError):
    """A file or folder of the output that cannot be written: one line naming the path and the errno.
    ``exit_code`` is the CLI's status: 2 when nothing had started (the run folder could not be made), 1 when
    it happened during the work."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def output_error(path: Path, err: OSError, exit_code: int = 1, what: str = "cannot write") -> OutputError:
    """``OutputError("cannot write PATH: Read-only file system (EROFS)")`` from an OSError."""
    return OutputError(f"{what} {path}: {describe_os_error(err)}", exit_code)


def describe_os_error(err: OSError) -> str:
    """"No space left on device (ENOSPC)": the OS's words and the errno's name."""
    name = errno.errorcode.get(err.errno, str(err.errno)) if err.errno is not None else type(err).__name__
    return f"{err.strerror or err} ({name})"


def file_mode() -> int:
    """The mode a new ordinary file gets: 0o666 less the process umask. Read from /proc where there is one
    (no change to the process); else set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``, with the mode of an ordinary new
    file (:func:`file_mode`). An OSError (read-only or full disk, ...) is an :class:`OutputError` naming
    ``path``; the temporary file is removed on any failure."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise output_error(path, err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, file_mode())  # mkstemp's 0o600 would hide the run's files from other users
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise output_error(path, err) from None
        raise


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A dict of plain tensors, loadable with ``torch.load(path, weights_only=True)``."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in tensors.items()}, buf)
    write_atomic(path, buf.getvalue())


def make_run_dir(root: Path, name: str) -> Path:
    """``root/<name>-<YYYYmmdd-HHMMSS>``, with a numeric suffix if that exists already. A folder that cannot
    be made (read-only disk, no permission) is an :class:`OutputError` with exit code 2: nothing started."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        root.mkdir(parents=True, exist_ok=True)
        for i in range(1000):
            path = root / (f"{name}-{stamp}" + (f"-{i}" if i else ""))
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as err:
        where = os.fspath(err.filename) if isinstance(err.filename, (str, os.PathLike)) else root  # the folder that failed
        raise output_error(where, err, exit_code=2, what="cannot create the run folder") from None
    raise OutputError(f"cannot create a fresh run folder in {root}: 1000 folders named {name}-{stamp}* exist", 2)


def make_dir(path: Path) -> None:
    """``path.mkdir(exist_ok=True)``; an OSError is an :class:`OutputError` naming the folder."""
    try:
        path.mkdir(exist_ok=True)
    except OSError as err:
        raise output_error(path, err, what="cannot create the folder") from None


def to_toml(table: dict[str, Any]) -> str:
    """Serialise a config dict (scalars, lists of scalars, one level of sub-tables) as TOML."""
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    lines = [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    for name, sub in tables.items():
        lines += ["", f"[{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in sub.items()]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(i) for i in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def json_ready(obj: Any) -> Any:
    """Floats that JSON can hold (NaN/inf become null), tensors as lists."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_ready(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(json_ready(obj), indent=2) + "\n")


def comparison_table(metrics: dict[str, Any]) -> str:
    """Markdown table: one row for the reference fit (exact EM, or CAVI for an intractable model), one per guide."""
    em = metrics.get("exact")
    by_elbo = bool(em) and em.get("objective") == "ELBO"
    last = f"ELBO − {em['method']}" if by_elbo else "log p(x) − EM optimum"
    iwae = any(str(g.get("log_likelihood_method", "")).startswith("IWAE") for g in metrics["guides"].values())
    log_p = "IWAE estimate of log p(x) / point (a lower bound)" if iwae else "log p(x) / point"
    head = (
        f"| method | estimator | ELBO / point | {log_p} | KL(q ‖ p(z\\|x)) / point | "  # "\\|": a pipe inside a cell
        f"{last} | steps | time (s) |\n|---|---|---:|---:|---:|---:|---:|---:|"
    )
    rows = [head]
    ref = None
    if em and by_elbo:
        ref = em["elbo_per_point"]
        rows.append(f"| {em['method']} | closed-form updates | {_f(ref)} | – | – | 0 | {em['iterations']} | {em['wall_time_s']:.3f} |")
    elif em:
        ref = em["log_likelihood_per_point"]
        rows.append(
            f"| {em['method']} | exact E-step | {_f(ref)} | {_f(ref)} | 0 | 0 | {em['iterations']} | {em['wall_time_s']:.3f} |"
        )
    for name, g in metrics["guides"].items():
        ll = g.get("log_likelihood_per_point")
        mine = g["final_elbo_per_point"] if by_elbo else ll
        diff = mine - ref if (mine is not None and ref is not None) else None
        rows.append(
            f"| SVI {name} | {g['elbo']} | {_f(g['final_elbo_per_point'], se=g.get('final_elbo_se'))} | "
            f"{_f(ll, se=g.get('log_likelihood_se'))} | {_f(g.get('kl_per_point'))} | "
            f"{_f(diff, signed=True)} | {g['steps']}{' (interrupted)' if g['interrupted'] else ''} | {g['wall_time_s']:.3f} |"
        )
    return drop_empty_columns("\n".join(rows))


def drop_empty_columns(table: str, empty: str = "–") -> str:
    """A Markdown pipe table without the columns whose every body cell is ``empty`` (nothing to show there)."""
    lines = table.split("\n")
    if len(lines) < 3:
        return table
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in lines]  # "\\|" stays in its cell
    width = len(cells[0])
    if any(len(r) != width for r in cells):  # a "|" inside a cell: leave the table alone
        return table
    keep = [j for j in range(width) if j == 0 or any(r[j] != empty for r in cells[2:])]
    return "\n".join("| " + " | ".join(r[j] for j in keep) + " |" if i != 1 else "|" + "|".join(r[j] for j in keep) + "|"
                     for i, r in enumerate(cells))


def heldout_table(metrics: dict[str, Any], key: str = "heldout") -> str:
    """Markdown table of the model's held-out metrics (or, key="labels", its agreement with the true labels),
    one row per method (same evaluation for all)."""
    table = metrics[key]
    names = list(dict.fromkeys(k for values in table.values() for k in values))  # every metric, first-seen order
    rows = ["| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for method, values in table.items():
        rows.append(f"| {method} | " + " | ".join(f"{values[k]:.4g}" if k in values else "–" for k in names) + " |")
    return "\n".join(rows)


def labels_table(metrics: dict[str, Any]) -> str:
    """Markdown table of each method's agreement with the data's true labels (e.g. the tagger's many-to-one and
    one-to-one accuracies and V-measure against gold tags)."""
    return heldout_table(metrics, "labels")


def _f(v: float | None, signed: bool = False, se: float | None = None) -> str:
    """4 decimals; with a Monte Carlo standard error, "v ± se"."""
    if v is None:
        return "–"
    v = round(v, 4) + 0.0  # no "-0.0000" from round-off
    text = f"{v:+.4f}" if signed else f"{v:.4f}"
    return text if se is None or not math.isfinite(se) else f"{text} ± {se:.4f}"


def plot_elbo(path: Path, metrics: dict[str, Any]) -> None:
    """ELBO per point against step for each guide, with the exact log-likelihood lines."""

    fig, ax = axes(figsize=(7, 4.2))
    finals = []
    for name, g in metrics["guides"].items():
        curve = np.asarray(g["elbo_curve"], dtype=float)
        if curve.size == 0:
            continue
        steps = np.arange(1, curve.size + 1)
        (line,) = ax.plot(steps, curve, alpha=0.25, lw=0.8)
        ax.plot(steps[-len(smooth(curve)):], smooth(curve), color=line.get_color(), lw=1.6, label=f"SVI {name} ({g['elbo']})")
        finals.append(g["final_elbo_per_point"])
        finals.append(float(np.percentile(curve, 20)))
    refs = []
    if metrics.get("exact"):
        em = metrics["exact"]
        ll = em.get("log_likelihood_per_point", em.get("elbo_per_point"))
        ax.axhline(ll, color="k", ls="--", lw=1.2, label=f"{em['method']}: {em.get('objective', 'log p(x)')} / point = {ll:.4f}")
        refs.append(ll)
    if metrics.get("truth_log_likelihood_per_point") is not None:
        ll = metrics["truth_log_likelihood_per_point"]
        ax.axhline(ll, color="grey", ls=":", lw=1.2, label=f"true parameters: log p(x) / point = {ll:.4f}")
        refs.append(ll)
    fit_ylim(ax, finals + refs)
    ax.set_xlabel("SVI step")
    ax.set_ylabel("nats per data point")
    finish(fig, ax, path, metrics["title"], legend_loc="lower right")


def smooth(curve):
    """A running mean over 2% of a training curve (numpy array), the first points dropped: len - window + 1."""

    window = max(1, curve.size // 50)
    return np.convolve(curve, np.ones(window) / window, mode="valid")


def fit_ylim(ax, values: list[float | None]) -> None:
    """Scale the y axis to the finite ``values`` (the lines that matter), with a margin; early transients go off it."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if values:
        top, bottom = max(values), min(values)
        span = max(top - bottom, 0.02)
        ax.set_ylim(bottom - 0.1 * span, top + 0.15 * span)


def plot_fit(path: Path, draw, x: torch.Tensor, fits: dict[str, Any], features, title: str) -> None:
    """The data with each method's fitted parameters, drawn by the model's own ``plot_fit``."""
    fig, ax = axes(figsize=(6, 5))
    draw(ax, x.detach().cpu().double(), fits, features=features)
    finish(fig, ax, path, title, legend_loc="best")


def axes(figsize: tuple[float, float]):
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, dpi=120)


def finish(fig, ax, path: Path, title: str, legend_loc: str) -> None:
    """Title, legend and grid; then write the PNG atomically and free the figure."""
    ax.set_title(textwrap.fill(title, int(13 * fig.get_figwidth())), fontsize=9)  # wrap to the figure, never clip
    ax.legend(fontsize=8, loc=legend_loc)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def save_png(fig, path: Path) -> None:
    """Write a matplotlib figure as a PNG, atomically, and free it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())
