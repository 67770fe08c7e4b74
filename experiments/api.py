"""The Python API: fit a model to data in memory, get the result back as an object, score new data.

    import vizoo
    result = vizoo.fit("gmm", x, guides=["mean_field", "amortised"], steps=500)   # x: numpy array or tensor
    result.table                       # per method: ELBO, log p(x), KL per point (exact where enumerable)
    result.log_evidence(x_new)         # log p(x_new) per point under the exact reference (or a guide's fit)
    result.sample("amortised", 100)    # draws from that guide's q(z | x)
    result = vizoo.fit("gmm", x, out="runs")   # also write a run folder (what `vizoo run` writes)
    vizoo.load(result.run_dir)         # the same FitResult, from the folder

:func:`fit` builds a config with the same code as a TOML file (:func:`experiments.config.parse_config`), so
every option is checked, with the same one-line :class:`ConfigError`; data given in memory are checked by the
model's ``validate``, as a file's are (:class:`DataError`). Training, evaluation and (with ``out=``) writing go
through the runner that ``vizoo run`` uses (:func:`experiments.run.prepare` and :func:`experiments.run.execute`).
Nothing is written to disk unless ``out=`` is given.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from ..models.datasets import Dataset, standardise, to_scipy_csr
from ..models.errors import ConfigError, DataError
from ..models.spec import ModelSpec
from . import compare as compare_module
from . import report
from .config import RunConfig, load_config, parse_config
from .inference_data import to_inference_data as build_inference_data
from .posterior_draws import guide_draws
from .registry import resolve
from .run import (
    DATA_FILE,
    DTYPES,
    SPARSE_DATA_FILE,
    RunResult,
    RunWriter,
    execute,
    load_data,
    load_states,
    prepare,
)
from .train import interruptible

SECTIONS = {"model_args": "model_args", "guide_args": "guide_args", "svi": "svi", "em": "em", "eval": "eval",
            "checkpoint": "checkpoint", "data_options": "data"}
"""Keyword options of :func:`fit` that are config tables (``data_options`` is the ``[data]`` table)."""
EXACT = "exact"  # the method name of the exact reference (exact EM, CAVI, closed-form MLE) in a FitResult


# --------------------------------------------------------------------------- the result


class FitResult:
    """What :func:`fit` (or :func:`load`) gives back. Methods are named ``"exact"`` (the exact reference: exact
    EM, generalised EM, CAVI or a closed-form MLE; see ``labels``) and each guide's name.

    params: method -> fitted model parameters (the model's parameter object, e.g. ``GMMParams``).
    guides: guide -> the trained guide (an ``nn.Module``); modules: guide -> the trained model module.
    table: one dict per method: ``method``, ``label``, ``objective`` (what ``elbo`` is), ``elbo``, ``log_p`` and
        ``kl`` per point (exact where the model is enumerable; None where not available), ``elbo_method``,
        ``steps``, ``wall_time_s``. The same numbers as metrics.json.
    traces: method -> the objective per point at each step (SVI: the ELBO estimate; exact EM: log p(x) per
        iteration). metrics: everything metrics.json holds. config: the resolved :class:`RunConfig`.
    x: the training data (validated, as trained on); run_dir: the run folder, or None (nothing written).
    """

    def __init__(self, run: RunResult, run_dir: Path | None = None, scale: tuple[torch.Tensor, torch.Tensor] | None = None):
        self._run = run
        self.config: RunConfig = run.cfg
        self.spec: ModelSpec = run.spec
        self.metrics: dict[str, Any] = run.metrics
        self.x: torch.Tensor = run.x
        self.x_test: torch.Tensor | None = run.x_test
        self.run_dir = run_dir if run_dir is not None else run.run_dir
        self._scale = scale  # (mean, sd) when fit standardised in-memory data: new data are scaled the same way
        exact = run.metrics.get("exact")
        self.labels: dict[str, str] = {}
        self.params: dict[str, Any] = {}
        if exact:
            self.labels[EXACT] = exact["method"]
            self.params[EXACT] = run.fits[exact["method"]]
        self.guides: dict[str, torch.nn.Module] = {}
        self.modules: dict[str, torch.nn.Module] = {}
        for g in run.metrics["guides"]:
            self.labels[g] = f"SVI {g}"
            self.params[g] = run.fits[f"SVI {g}"]
            self.guides[g] = run.trained[f"SVI {g}"]
            self.modules[g] = run.models[f"SVI {g}"]

    # ----------------------------------------------------------------- tables

    @property
    def model(self) -> str:
        return self.spec.name

    @property
    def methods(self) -> list[str]:
        return list(self.labels)

    @property
    def status(self) -> str:
        return self.metrics["status"]

    @property
    def table(self) -> list[dict[str, Any]]:
        """One row per method (see the class docstring), from the metrics."""
        return method_table(self.metrics)

    @property
    def traces(self) -> dict[str, list[float]]:
        out = {}
        exact = self.metrics.get("exact")
        if exact:
            out[EXACT] = list(exact.get("log_likelihood_trace", exact.get("elbo_trace", [])))
        for g, m in self.metrics["guides"].items():
            out[g] = list(m["elbo_curve"])
        return out

    def summary(self) -> str:
        """The run's Markdown table, as ``vizoo run`` prints it (report.md)."""
        table = report.comparison_table(self.metrics)
        if self.metrics.get("heldout"):
            table += "\n\nHeld out:\n\n" + report.heldout_table(self.metrics)
        return f"{self.metrics['title']}\n\n{table}"

    def __repr__(self) -> str:
        rows = [("method", "ELBO/point", "log p(x)/point", "KL/point", "steps")]
        for r in self.table:
            rows.append((r["label"], _fmt(r["elbo"]), _fmt(r["log_p"]), _fmt(r["kl"]), str(r["steps"])))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                 for row in rows]
        where = f"run folder {self.run_dir}" if self.run_dir is not None else "nothing written"
        return f"FitResult: {self.metrics['title']} ({self.status}; {where})\n" + "\n".join(lines)

    # ----------------------------------------------------------------- new data

    def _method(self, method: str) -> str:
        if method in self.labels:
            return method
        for name, label in self.labels.items():
            if method == label:
                return name
        raise ConfigError(f"method: unknown method {method!r}; this fit has {', '.join(self.labels)}")

    def _data(self, x_new: Any, name: str = "x_new") -> torch.Tensor:
        values = _as_array(x_new, name)
        x = torch.as_tensor(values)
        if self._scale is not None and x.dim() == 2 and x.shape[-1] == self._scale[0].shape[-1]:
            x = (x.to(torch.float64) - self._scale[0]) / self._scale[1]
        x = self.spec.validate(x, self.config.model_args)
        if x.dim() >= 2 and x.shape[1:] != self.x.shape[1:]:
            raise DataError(f"{name} has shape {tuple(x.shape)}; the data the model was fitted to have "
                            f"{tuple(self.x.shape[1:])} per point")
        return x.to(self.x.device, DTYPES[self.config.dtype])

    @torch.no_grad()
    def log_evidence(self, x_new: Any, method: str = EXACT) -> float | dict[str, float]:
        """log p(x_new) per point under ``method``'s fitted parameters: exact (enumeration or closed form) where
        the model allows; otherwise the model's held-out evaluation (``ModelSpec.heldout``, which may refit q on
        the new points) or its importance-sampled estimate with the method's guide (``ModelSpec.importance``).
        A float, or the held-out metrics (a dict) for models whose held-out score is not a log p(x) per point
        (LDA's perplexity). ``x_new`` is in the units of the data given to :func:`fit` (scaled as they were)."""
        name = self._method(method)
        x = self._data(x_new)
        params, guide = self.params[name], self.guides.get(name)
        cfg, spec = self.config, self.spec
        if self.metrics["enumerable"]:
            return float(spec.exact.log_evidence(x, params)) / x.shape[0]
        if spec.heldout is not None:
            out = spec.heldout(self.x, x, params, cfg.seed, guide=guide, samples=cfg.eval.importance_samples,
                               refit_steps=cfg.eval.refit_steps)
            return out["log_likelihood_per_point"] if "log_likelihood_per_point" in out else out
        if spec.importance is not None and guide is not None:
            out = spec.importance(x, params, guide, cfg.seed, samples=cfg.eval.importance_samples, points=0)
            return out["log_likelihood_per_point"]
        raise ConfigError(f"method={method!r}: model {spec.name!r} has no exact, held-out or importance-sampled "
                          "log p(x) for this method")

    @torch.no_grad()
    def sample(self, method: str, num_samples: int, x: Any = None, seed: int = 0) -> dict[str, torch.Tensor]:
        """``num_samples`` posterior draws of the latents for the points ``x`` (default: the training data):
        site -> (num_samples, ...) in the site's own layout. A guide's method draws from its q
        (``pyro.infer.Predictive``; a free, per-point guide only has q for the training points); ``"exact"``
        draws from the exact posterior p(z | x) at the exact reference's parameters (``ExactReference.draws``)."""
        name = self._method(method)
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise ConfigError(f"num_samples must be a whole number >= 1, got {num_samples!r}")
        points = self.x if x is None else self._data(x, "x")
        if name == EXACT:
            if not self.metrics["enumerable"] or self.spec.exact.draws is None:
                raise ConfigError(f"method='exact': model {self.spec.name!r} has no exact posterior draws here")
            return self.spec.exact.draws(points, self.params[EXACT], num_samples, torch.Generator(points.device).manual_seed(seed))
        return guide_draws(self.guides[name], points, num_samples, seed=seed)

    def to_inference_data(self, method: str, num_samples: int = 1000, x: Any = None, seed: int = 0):
        """``method``'s posterior draws (:meth:`sample`) as ArviZ ``InferenceData``
        (:func:`experiments.inference_data.to_inference_data`): ``posterior`` (one chain; each latent site with
        dims draw, then the site's own), ``observed_data`` (the points) and, where the model allows it,
        ``log_likelihood`` (log p(x_n | z_n, theta) per draw and point, at ``method``'s parameters)."""
        draws = self.sample(method, num_samples, x=x, seed=seed)
        points = self.x if x is None else self._data(x, "x")
        params = self.params[self._method(method)]
        return build_inference_data(self.spec, points, params, draws)


def method_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """metrics.json as one row per method (see :class:`FitResult`)."""
    rows = []
    exact = metrics.get("exact")
    if exact:
        by_elbo = exact["objective"] == "ELBO"
        value = exact["elbo_per_point" if by_elbo else "log_likelihood_per_point"]
        rows.append({"method": EXACT, "label": exact["method"], "objective": exact["objective"], "elbo": value,
                     "log_p": None if by_elbo else value, "kl": None if by_elbo else 0.0,
                     "elbo_method": exact["method"], "steps": exact["iterations"], "wall_time_s": exact["wall_time_s"]})
    for g, m in metrics["guides"].items():
        rows.append({"method": g, "label": f"SVI {g}", "objective": "ELBO", "elbo": m["final_elbo_per_point"],
                     "log_p": m.get("log_likelihood_per_point"), "kl": m.get("kl_per_point"),
                     "elbo_method": m.get("final_elbo_method", ""), "steps": m["steps"], "wall_time_s": m["wall_time_s"]})
    return rows


def _fmt(v: float | None) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{round(v, 4) + 0.0:.4f}"  # + 0.0: no "-0.0000" from round-off


# --------------------------------------------------------------------------- fit


def fit(model: str, data: Any = None, *, guides: Sequence[str] | None = None, steps: int | None = None,
        exact: bool = True, seed: int = 0, out: str | os.PathLike | None = None, standardise: bool | None = None,
        device: str | None = None, verbose: bool = False, **options: Any) -> FitResult:
    """Fit ``model`` to ``data`` with the exact reference and SVI with each guide; return a :class:`FitResult`.

    model: a registered model's name (``vizoo list``) or the path of a model declaration (.toml).
    data: a numpy array or torch tensor (validated by the model, as a file would be); a data set of the model
        (its name); the path of a .npy or .csv file; or None, the model's default data set.
    guides: guide names (default: those of the model's bundled config, else mean_field and amortised).
    steps: SVI steps (``svi.steps``). exact: False skips the exact reference (``em.enabled = false``).
    seed: the run's seed. out: a folder to write the run folder in (``<out>/<name>-<timestamp>``, what
        ``vizoo run --out`` writes); default None writes nothing at all.
    standardise: centre and scale each column of real-valued data (default: no for data given in memory, the
        config's default for files and data sets). verbose: print the run's progress lines.
    device: where data, parameters and guides live, "cpu" (default), "cuda", "cuda:N" or "auto" (the config's
        ``device``; experiments/devices.py). The result's tensors stay there.
    options: config tables as dicts, ``model_args``, ``guide_args``, ``svi``, ``em``, ``eval``,
        ``checkpoint`` and ``data_options`` (the ``[data]`` table), and top-level keys (``dtype``, ``name``,
        ``progress``). Defaults come from the model's bundled config (e.g. gmm_faithful for "gmm"), else
        from experiments/config.py.
    """
    spec = resolve(model) if isinstance(model, str) else _bad_model(model)
    array = None
    data_name = None
    if _is_sparse(data):  # counts kept sparse (models with ModelSpec.sparse, LDA): saved as data.npz
        array = _as_sparse(data, spec)
    elif _is_array(data):
        array = _as_array(data, "data")
    elif isinstance(data, Mapping):
        data_name = data.get("name")
    elif isinstance(data, (str, os.PathLike)):
        text = os.fspath(data)  # a path (a .npy/.csv name, a folder in it, or an existing file), else a data set's name
        path_like = Path(text).suffix in (".npy", ".csv") or os.sep in text or (Path(text).is_file() and text not in spec.datasets)
        data_name = "file" if path_like else text
    elif data is not None:
        raise DataError(f"data must be a numpy array, a torch tensor, a data set's name or a file path, got {type(data).__name__}")
    # the model's defaults: its bundled config for this data set (else its first real one), else the defaults;
    # an unknown data-set name is left for the config check to name
    raw, _ = compare_module.base_config(spec, data_name if data_name in spec.datasets else None)
    raw.update(model=model, seed=seed, name=raw.get("name", spec.name))
    raw.pop("output_dir", None)
    raw["progress"] = False
    if array is not None and sp.issparse(array):
        raw["data"] = {"name": "file", "path": SPARSE_DATA_FILE, "standardise": False}
    elif array is not None:
        raw["data"] = {"name": "file", "path": DATA_FILE, "standardise": bool(standardise)}
    elif isinstance(data, Mapping):
        raw["data"] = dict(data)
    elif data_name == "file":
        raw["data"] = {"name": "file", "path": str(Path(os.fspath(data)).expanduser().resolve())}
    elif data_name is not None and raw.get("data", {}).get("name") != data_name:
        raw["data"] = {"name": data_name}
    if standardise is not None and array is None:
        raw.setdefault("data", {})["standardise"] = bool(standardise)
    if guides is not None:
        raw["guides"] = [guides] if isinstance(guides, str) else list(guides)
    if steps is not None:
        raw.setdefault("svi", {})["steps"] = steps
    if not exact:
        raw.setdefault("em", {})["enabled"] = False
    if device is not None:
        raw["device"] = device
    _apply_options(raw, options)
    if out is not None:
        raw["output_dir"] = os.fspath(out)
    cfg = parse_config(raw)  # every key checked, with the config file's messages
    scale = None
    if array is not None:
        dataset, scale = _from_array(spec, cfg, array)
    else:
        dataset = load_data(cfg, spec)
    with interruptible():
        prep = prepare(cfg, spec, dataset)  # every input error before anything is written
        writer = RunWriter.new(cfg, data=array) if out is not None else None
        run = execute(prep, writer, progress=cfg.progress, log=print if verbose else _quiet)
    return FitResult(run, scale=scale)


def load(run_dir: str | os.PathLike, verbose: bool = False, device: str | None = None) -> FitResult:
    """The :class:`FitResult` of a run folder (written by ``vizoo run`` or ``vizoo.fit(..., out=...)``): its
    config.toml and metrics.json, the data (reloaded from the config, or the folder's data.npy), the exact
    reference refitted (it is deterministic), and every guide and model module rebuilt from its final
    checkpoint (checkpoints/<guide>.pt, loaded with weights_only=True and checked against the run).
    ``device``: rebuild it on another device than the run's config says (a run trained on a GPU, read on a
    laptop: ``device="cpu"``)."""
    given = os.fspath(run_dir)
    path = Path(given).expanduser()
    if not (path / "config.toml").is_file() or not (path / "metrics.json").is_file():
        raise ConfigError(f"load: {given!r} is not a finished run folder (it needs config.toml and metrics.json)")
    path = path.resolve()
    cfg = load_config(path / "config.toml", [] if device is None else [f"device={json.dumps(device)}"])
    try:
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"load: {str(path / 'metrics.json')!r} is not valid JSON: {err}") from None
    if metrics.get("status") == "failed":
        raise ConfigError(f"load: the run in {given!r} failed (see its metrics.json)")
    spec = cfg.spec
    scale = None
    if cfg.data.name == "file" and cfg.data.path == DATA_FILE and (path / DATA_FILE).is_file():
        array = np.load(path / DATA_FILE, allow_pickle=False)
        dataset, scale = _from_array(spec, cfg, array)
    elif cfg.data.name == "file" and cfg.data.path == SPARSE_DATA_FILE and (path / SPARSE_DATA_FILE).is_file():
        dataset, scale = _from_array(spec, cfg, _as_sparse(sp.load_npz(path / SPARSE_DATA_FILE), spec))
    else:
        dataset = load_data(cfg, spec, path)
    prep = prepare(cfg, spec, dataset)
    trained_guides = [g for g in cfg.guides if g in metrics.get("guides", {})]
    prep = dataclasses.replace(prep, guides={g: prep.guides[g] for g in trained_guides})
    states = {g: {**state, "finished": True} for g, state in load_states(prep, path, final=True).items()}
    log = print if verbose else _quiet
    run = execute(prep, None, states=states, progress=False, log=log)  # restores each guide, trains nothing
    run.metrics = metrics  # what the run measured (with its wall times), not the restored evaluation
    return FitResult(run, run_dir=path, scale=scale)


def compare(model: str, data: str | None = None, *, seeds: int = 3, guides: Sequence[str] = (), steps: int | None = None,
            out: str | os.PathLike | None = None, progress: bool = False, draws: int = 1000, points: int = 3,
            config: str | None = None, restarts: int = 8, time: float | None = None, verbose: bool = False,
            **options: Any) -> compare_module.CompareResult:
    """Compare the model's guides (and Pyro's baselines where they apply) with the exact reference over
    ``seeds`` seeds (:func:`experiments.compare.compare`, what ``vizoo compare`` runs); returns its
    ``CompareResult`` (rows, summary, markdown, runs). ``data``: one of the model's data sets. ``restarts``:
    random starts per point in the gap split's search for q*. ``time``: the fair mode, seconds of training per
    guide (``vizoo compare --time``; ``steps`` is then an upper bound). ``options``: config
    tables and top-level keys as in :func:`fit` (``device="cuda"``, ``dtype=...``). ``out``: the folder for the comparison's folder; default None keeps nothing on
    disk (the comparison's files are written to a temporary folder, removed afterwards, and ``out_dir`` is None)."""
    overrides = []
    if steps is not None:
        overrides.append(f"svi.steps={steps}")
    raw: dict[str, Any] = {}
    _apply_options(raw, options)
    overrides += _overrides(raw)
    log = print if verbose else _quiet
    if isinstance(guides, str):
        guides = [guides]
    if out is not None:
        opts = compare_module.CompareOptions(model, data, seeds, tuple(guides), tuple(overrides), os.fspath(out),
                                             progress, draws, points, config, restarts, time)
        return compare_module.compare(opts, log=log)
    with tempfile.TemporaryDirectory(prefix="vizoo-compare-") as tmp:
        opts = compare_module.CompareOptions(model, data, seeds, tuple(guides), tuple(overrides), tmp, progress,
                                             draws, points, config, restarts, time)
        result = compare_module.compare(opts, log=log)
    return dataclasses.replace(result, out_dir=None)


# --------------------------------------------------------------------------- helpers


def _quiet(*_args: Any) -> None:
    pass


def _bad_model(model: Any) -> ModelSpec:
    raise ConfigError(f"model: must be a model's name or the path of a model declaration (.toml), got {model!r}")


def _is_array(data: Any) -> bool:
    return isinstance(data, (np.ndarray, torch.Tensor)) or (isinstance(data, (list, tuple)) and not isinstance(data, str))


def _is_sparse(data: Any) -> bool:
    return sp.issparse(data) or (isinstance(data, torch.Tensor) and data.layout != torch.strided)


def _as_sparse(data: Any, spec: ModelSpec) -> sp.csr_matrix:
    """Sparse data (a scipy sparse matrix or a torch sparse COO/CSR tensor) as a scipy CSR matrix, for a model
    that takes it (``ModelSpec.sparse``); anything else is a DataError naming the model."""
    if not spec.sparse:
        raise DataError(f"data is a sparse matrix; model {spec.name} takes dense data only (a numpy array or a dense tensor)")
    if sp.issparse(data):
        return sp.csr_matrix(data)
    if data.dim() != 2:
        raise DataError(f"data must be 2-D (documents x words), got a sparse tensor of shape {tuple(data.shape)}")
    return to_scipy_csr(data)


def _as_array(data: Any, name: str) -> np.ndarray:
    """A numpy array of real numbers (what a .npy file would hold), or DataError naming ``name``."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    try:
        values = np.asarray(data)
    except (ValueError, TypeError) as err:
        raise DataError(f"{name} could not be read as a number array: {err}") from None
    if values.dtype.kind not in "iuf":  # as data.path: complex, bool, strings and objects are refused
        raise DataError(f"{name} holds dtype {values.dtype}, not real numbers")
    return values


def _from_array(spec: ModelSpec, cfg: RunConfig, values: np.ndarray) -> tuple[Dataset, tuple[torch.Tensor, torch.Tensor] | None]:
    """In-memory data as a data set, exactly as a .npy file holding it would load (``datasets.from_file``), and
    validated by the model; standardised (real-valued data only) when ``data.standardise`` asks. Returns the
    column mean and sd used, for scaling new data the same way. Sparse counts (``_as_sparse``) stay sparse."""
    if sp.issparse(values):
        x = spec.validate(values, cfg.model_args)
        return Dataset(x, f"sparse array {tuple(values.shape)} ({values.nnz:,} stored entries)",
                       tuple(f"x{i}" for i in range(values.shape[1]))), None
    x = torch.as_tensor(values)
    features = tuple(f"x{i}" for i in range(x.shape[-1] if x.dim() else 0))
    scale = None
    if x.dim() == 2 and x.numel() and torch.isfinite(x).all():  # anything else is refused by validation
        x = x.to(torch.float64)
    if cfg.data.standardise and spec.real_valued and x.dim() == 2 and x.numel() and torch.isfinite(x).all():
        scale = (x.mean(0), torch.where(x.std(0, unbiased=False) > 0, x.std(0, unbiased=False), torch.ones(x.shape[1], dtype=x.dtype)))
        x, features = standardise(x), tuple(f"{f} (standardised)" for f in features)
    x = spec.validate(x, cfg.model_args)
    return Dataset(x, f"array {tuple(values.shape)}", features), scale


def _apply_options(raw: dict[str, Any], options: dict[str, Any]) -> None:
    """Keyword options onto the raw config: tables merged key by key, top-level keys set."""
    for key, value in options.items():
        if key in SECTIONS:
            section = SECTIONS[key]
            if not isinstance(value, Mapping):
                raise ConfigError(f"{section} must be a table, got {value!r} ({type(value).__name__})")
            table = raw.setdefault(section, {})
            if not isinstance(table, dict):
                raise ConfigError(f"{section} must be a table, got {table!r}")
            table.update({k: _plain(v) for k, v in value.items()})
        else:
            raw[key] = _plain(value)


def _plain(value: Any) -> Any:
    """Tuples as lists, as TOML gives them."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _overrides(raw: dict[str, Any], prefix: str = "") -> list[str]:
    """A raw table as ``key=value`` overrides (JSON scalars and lists are TOML values)."""
    out = []
    for k, v in raw.items():
        if isinstance(v, dict):
            out += _overrides(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}={json.dumps(v)}")
    return out
