"""Run one experiment: load and check data, fit the exact reference, train each guide, report.

    config -> data (validated) -> shared initialisation -> exact EM (if the model has one)
           -> for each guide: SVI -> exact ELBO, log p(x), KL by enumeration -> (optionally) run folder

Two parts, one code path for ``vizoo run`` and the Python API (:func:`vizoo.fit`): the runner
(:func:`prepare`, then :func:`execute`) computes everything in memory, and a :class:`RunWriter`, when there
is one, writes. ``vizoo run`` always has a writer; ``vizoo.fit`` has one only with ``out=``.

The run folder ``<output_dir>/<name>-<timestamp>/`` holds::

    config.toml        the resolved config (every default filled in)
    data.npy           the data, when it was given in memory (vizoo.fit with an array; data.path = "data.npy")
    params/em.pt       parameters fitted by exact EM           (torch.load(..., weights_only=True))
    params/<guide>.pt  model parameters learned with that guide
    guides/<guide>.pt  the guide's own parameters (state_dict)
    checkpoints/<guide>.pt  the guide's training state, saved periodically (``[checkpoint]``): what
                       ``vizoo run --resume RUN_DIR`` continues from, and what ``vizoo.load`` rebuilds the
                       trained guide from (experiments/checkpoint.py)
    elbo.png           ELBO per point against step, with the exact log-likelihood line
    fit.png            the data and every method's fit (models that provide ``plot_fit``)
    *.png              the model's own pictures (``pictures``: the VAE's reconstructions, samples, latent map)
    report.md          the comparison table
    metrics.json       written last; "status" is "complete" or "interrupted" (Ctrl-C; resumable), or
                       "failed" (a non-finite step: the error, and the last good checkpoint kept; or a file
                       that could not be written, a full or read-only disk: "resumable": true, written
                       when the disk still takes it)

Every path the run writes is inside the run folder: the folder's name is checked by the config (a plain
name, never a path), and a resumed folder must hold real sub-folders (no symbolic links out of it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyro
import scipy.sparse as sp
import torch

from ..models.datasets import Dataset, take_rows
from ..models.errors import ConfigError, DataError, ImpossibleResult
from ..models.exact.binary import MAX_LATENTS
from ..models.importance import ImportanceEstimate, log_weights
from ..models.spec import ModelSpec
from . import report
from .checkpoint import Checkpointer, check_modules, fingerprint, on_device
from .config import RunConfig, load_config
from .devices import move, resolve_device, to_cpu
from .train import NonFiniteLoss, SVIResult, interruptible, stop_requested, train_svi

DTYPES = {"float64": torch.float64, "float32": torch.float32}
DATA_FILE = "data.npy"  # in-memory data, saved into its run folder (config: data.name = "file", data.path = "data.npy")
SPARSE_DATA_FILE = "data.npz"  # in-memory sparse counts, saved the same way (scipy.sparse.save_npz)


@dataclasses.dataclass
class RunResult:
    """run_dir (None when nothing was written) and metrics (what metrics.json holds); and, in memory for callers
    such as the guide comparison and the Python API, the training data x, the fitted parameters of every
    method (fits: "exact EM", "SVI <guide>", ...), each SVI method's trained guide and trained model module,
    the config, the spec, the data set and the held-out rows (x_test)."""

    run_dir: Path | None
    metrics: dict[str, Any]
    x: torch.Tensor | None = None
    fits: dict[str, Any] = dataclasses.field(default_factory=dict)
    trained: dict[str, Any] = dataclasses.field(default_factory=dict)
    models: dict[str, Any] = dataclasses.field(default_factory=dict)
    cfg: RunConfig | None = None
    spec: ModelSpec | None = None
    data: Dataset | None = None
    x_test: torch.Tensor | None = None

    @property
    def interrupted(self) -> bool:
        return self.metrics["status"] == "interrupted"


@dataclasses.dataclass
class Prepared:
    """Everything checked and built before any work or any write: the training and held-out rows, the shared
    initialisation, each guide (built, networks initialised), and what a checkpoint must match (identity)."""

    cfg: RunConfig
    spec: ModelSpec
    data: Dataset
    x: torch.Tensor
    x_test: torch.Tensor | None
    init: Any
    guides: dict[str, Any]
    identity: dict[str, str]
    enumerable: bool


def run_experiment(cfg: RunConfig, progress: bool | None = None, log=print, spec=None) -> RunResult:
    """Run ``cfg`` and write its run folder. All input is checked before any training starts. ``spec``: the
    model's spec with more guides than the registry's (the comparison's outside baselines); default cfg.spec.

    Ctrl-C anywhere in the run stops training at the next step boundary (see ``interruptible``); what
    finished is evaluated and written, and ``metrics.json`` says "interrupted"."""
    spec = spec or cfg.spec
    with interruptible():
        prep = prepare(cfg, spec, load_data(cfg, spec))  # raises before anything is written
        return execute(prep, RunWriter.new(cfg), progress=progress, log=log)


def resume_experiment(run_dir: str | Path, progress: bool | None = None, log=print, device: str | None = None) -> RunResult:
    """Continue the run in ``run_dir`` (killed, or stopped by Ctrl-C) from each guide's last checkpoint, with
    the config it was started with (its ``config.toml``). The run folder ends as an uninterrupted run's would,
    bit for bit on the same machine and thread count (wall times aside). Guides that finished are restored,
    not retrained; the exact reference is refitted (it is deterministic). Every checkpoint is loaded and
    checked before any work starts. ``device``: continue on another device than the config's (checkpoints hold
    CPU tensors; the result then matches the uninterrupted run's up to the devices' round-off and draws)."""
    run_dir = check_run_dir(run_dir)
    cfg = load_config(run_dir / "config.toml", [] if device is None else [f"device={json.dumps(device)}"])
    with interruptible():
        prep = prepare(cfg, cfg.spec, load_data(cfg, cfg.spec, run_dir))
        states = load_states(prep, run_dir, final=False)
        return execute(prep, RunWriter(run_dir, new=False), states=states, progress=progress, log=log)


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
            recorded = json.loads(metrics.read_text(encoding="utf-8"))
            status, resumable = recorded.get("status"), recorded.get("resumable") is True  # failed writing: resumable
        except (ValueError, UnicodeDecodeError, AttributeError):
            status, resumable = None, False
        if status == "complete":
            raise ConfigError(f"--resume: the run in {given!r} is complete; there is nothing to resume")
        if status == "failed" and not resumable:
            raise ConfigError(f"--resume: the run in {given!r} failed (see its metrics.json): resuming would repeat "
                              "the same steps; change the config and start a new run")
    return run_dir


def load_data(cfg: RunConfig, spec: ModelSpec, run_dir: Path | None = None) -> Dataset:
    """The config's data, validated for the model (raises DataError). In a run folder (``run_dir``), a relative
    ``data.path`` that names a file inside the folder is read from there (the in-memory data a run saved)."""
    opts = cfg.data
    if run_dir is not None and opts.name == "file" and not Path(opts.path).is_absolute() and (run_dir / opts.path).is_file():
        opts = dataclasses.replace(opts, path=str(run_dir / opts.path))
    return spec.load(opts, cfg.model_args, cfg.seed)


def load_states(prep: Prepared, run_dir: Path, final: bool) -> dict[str, dict]:
    """Each guide's checkpoint in ``run_dir/checkpoints``, loaded and checked against the run (config, data) and
    the guide's modules. ``final``: every guide must have one (``vizoo.load``); otherwise guides without one
    start from scratch (a resumed run)."""
    cfg, spec = prep.cfg, prep.spec
    states = {}
    for g, guide in prep.guides.items():
        ck = Checkpointer(run_dir / "checkpoints" / f"{g}.pt", {**prep.identity, "guide": g})
        advice = (f"guide {g!r} cannot be rebuilt from it: run the config again (vizoo run {run_dir / 'config.toml'})" if final
                  else f"delete it to train guide {g!r} again from step 0 (vizoo run --resume {run_dir}), or start a new run")
        state = ck.load(cfg.svi.steps, advice)
        if state is None:
            if final:
                raise ConfigError(f"{str(run_dir)!r}: guide {g!r} has no checkpoint ({str(ck.path)!r}); "
                                  "runs written with checkpoint.enabled = false cannot be loaded")
            continue
        check_modules(state, (spec.guides[g].learnable or spec.learnable)(prep.init, cfg.model_args), guide, str(ck.path))
        states[g] = on_device(state, prep.x.device)
    return states


def _identity(cfg: RunConfig, x: torch.Tensor, x_test: torch.Tensor | None) -> dict[str, str]:
    """What a checkpoint must match to be resumed: the config (where the run writes, whether it shows progress
    and its device aside: a checkpoint holds CPU tensors and resumes on any device) and the data."""
    config = {k: v for k, v in cfg.to_dict().items() if k not in ("output_dir", "progress", "device")}
    data = fingerprint(x) + ("" if x_test is None else fingerprint(x_test))
    return {"config_sha256": fingerprint(config), "data_sha256": fingerprint(data)}


def prepare(cfg: RunConfig, spec: ModelSpec, data: Dataset) -> Prepared:
    """Split the (validated) data, check the batch size, initialise, and build every guide; all input errors
    are raised here, before anything is written or trained."""
    args = cfg.model_args
    dtype = DTYPES[cfg.dtype]
    device = resolve_device(cfg.device)  # checked by the config; everything below follows the data onto it
    x, x_test = heldout_split(data.x.to(dtype), cfg.data.heldout, cfg.seed)
    if x_test is None and data.x_test is not None and spec.heldout is not None:  # the data set's fixed test set
        x_test = data.x_test.to(dtype)
    x, x_test = x.to(device), None if x_test is None else x_test.to(device)
    num_points = x.shape[0]
    if cfg.svi.batch_size > num_points:
        raise ConfigError(f"svi.batch_size={cfg.svi.batch_size} is larger than the {num_points} training points")
    init = spec.init_params(x, args, cfg.seed)
    _check_preprocessing(cfg, data, x, x_test, init)
    pyro.set_rng_seed(cfg.seed)  # network initialisations
    guides = {}
    for g in cfg.guides:  # builder options are checked here, before anything is written
        try:
            build = spec.guides[g].build
            guides[g] = build(x, init, **cfg.guide_args.for_builder(build))
        except ValueError as err:
            raise ConfigError(f"guide {g!r}: {err}") from None
    ref = spec.exact
    enumerable = ref is not None and ref.enumerable and not spec.exact_size_error(args) and (
        not spec.latent_field or getattr(args, spec.latent_field) <= MAX_LATENTS
    )  # beyond the limit (em disabled; the config refuses it otherwise) the ELBO is reported by Monte Carlo
    return Prepared(cfg, spec, data, x, x_test, init, guides, _identity(cfg, x, x_test), enumerable)


class RunWriter:
    """Writes a run folder: the runner (:func:`execute`) calls it at each point where something is to be
    kept. Without a writer the runner writes nothing at all."""

    def __init__(self, run_dir: Path, new: bool, data: np.ndarray | None = None):
        self.run_dir = Path(run_dir)
        self.new = new
        self.data = data  # in-memory data to save as data.npy (a scipy sparse matrix: data.npz)
        self.begun = False  # begin() done: the run's work has started
        self.metrics: dict[str, Any] | None = None  # the runner's metrics so far, for fail()

    @classmethod
    def new(cls, cfg: RunConfig, data: np.ndarray | None = None) -> RunWriter:
        """A fresh run folder ``<cfg.output_dir>/<cfg.name>-<timestamp>``."""
        return cls(report.make_run_dir(_output_dir(cfg.output_dir), cfg.name), new=True, data=data)

    def begin(self, prep: Prepared) -> dict[str, Checkpointer]:
        """Sub-folders, the config (and the data given in memory); returns each guide's checkpointer."""
        cfg = prep.cfg
        for sub in ("params", "guides", "checkpoints"):
            report.make_dir(self.run_dir / sub)
            for stale in (self.run_dir / sub).glob(".*.tmp"):  # a temporary file left by a killed write
                with contextlib.suppress(OSError):  # a read-only folder: the first write says so
                    stale.unlink()
        if self.new:
            if self.data is not None:
                buf = io.BytesIO()
                if sp.issparse(self.data):
                    sp.save_npz(buf, self.data)
                    report.write_atomic(self.run_dir / SPARSE_DATA_FILE, buf.getvalue())
                else:
                    np.save(buf, self.data, allow_pickle=False)
                    report.write_atomic(self.run_dir / DATA_FILE, buf.getvalue())
            report.write_atomic(self.run_dir / "config.toml", report.to_toml(cfg.to_dict()))
        self.begun = True
        return {g: Checkpointer(self.run_dir / "checkpoints" / f"{g}.pt", {**prep.identity, "guide": g},
                                cfg.checkpoint.every_steps, cfg.checkpoint.every_seconds)
                for g in prep.guides if cfg.checkpoint.enabled}

    def exact(self, params: Any) -> None:
        report.save_tensors(self.run_dir / "params" / "em.pt", params.state_dict())

    def guide(self, g: str, fitted: Any, guide: Any) -> None:
        report.save_tensors(self.run_dir / "params" / f"{g}.pt", fitted.state_dict())
        report.save_tensors(self.run_dir / "guides" / f"{g}.pt", guide.state_dict())

    def failed(self, metrics: dict[str, Any]) -> None:
        report.write_json(self.run_dir / "metrics.json", metrics)

    def fail(self, err: report.OutputError) -> report.OutputError:
        """A write failed (``err``: a full or read-only disk): metrics.json says "failed" (and "resumable") when
        the disk still takes it; the returned error says in one line what failed, what was kept and what to do.
        Exit code 2 when the run's work had not started, else 1."""
        failed = {"status": "failed", "error": str(err), "resumable": True}
        kept = ""
        for metrics in ({**(self.metrics or {}), **failed}, failed):  # the short one may fit where the whole did not
            try:
                report.write_json(self.run_dir / "metrics.json", metrics)
                kept = f'; {self.run_dir / "metrics.json"} says "failed"'
                break
            except report.OutputError as again:
                kept = f"; {again} either"
        if (self.run_dir / "config.toml").is_file():
            kept += f"; free space or make it writable, then continue with: vizoo run --resume {self.run_dir}"
        return report.OutputError(f"{err}{kept}", exit_code=1 if self.begun else 2)

    def finish(self, prep: Prepared, metrics: dict[str, Any], fits: dict[str, Any], trained: dict[str, Any], text: str) -> None:
        """The pictures, report.md (``text``) and, last, metrics.json."""
        spec, cfg, data = prep.spec, prep.cfg, prep.data
        x, fits, trained = to_cpu(prep.x), to_cpu(fits), {m: to_cpu(g) for m, g in trained.items()}  # pictures are drawn on the CPU
        report.plot_elbo(self.run_dir / "elbo.png", metrics)
        if spec.plot_fit is not None:
            report.plot_fit(self.run_dir / "fit.png", spec.plot_fit, x, fits, data.features, metrics["title"])
        if spec.pictures is not None:
            labels = data.labels if data.labels is not None and not cfg.data.heldout else None  # rows of x are data.x's
            for name, fig in spec.pictures(x, fits, trained, labels, cfg.seed).items():
                report.save_png(fig, self.run_dir / name)
        report.write_atomic(self.run_dir / "report.md", f"# {metrics['title']}\n\n{text}\n")
        report.write_json(self.run_dir / "metrics.json", metrics)


def execute(prep: Prepared, writer: RunWriter | None = None, states: dict[str, dict] | None = None,
            progress: bool | None = None, log=print, data_parallel=None) -> RunResult:
    """The runner: exact reference, SVI for each guide (from its checkpoint ``states`` where given), evaluation;
    everything in memory, and written by ``writer`` when there is one. A write that fails (full or read-only
    disk) stops the run with one :class:`report.OutputError`, metrics.json saying "failed" when it can.
    ``data_parallel(model, guide, seed)``: one process of a data-parallel run (experiments/distributed.py) gives
    each guide's training its ``parallel`` hook; None: one process."""
    try:
        return _execute(prep, writer, states, progress, log, data_parallel)
    except report.OutputError as err:
        if writer is None:
            raise
        raise writer.fail(err) from None


def _execute(prep: Prepared, writer: RunWriter | None, states: dict[str, dict] | None, progress: bool | None,
             log, data_parallel=None) -> RunResult:
    cfg, spec, data, x, x_test, init = prep.cfg, prep.spec, prep.data, prep.x, prep.x_test, prep.init
    args = cfg.model_args
    progress = cfg.progress if progress is None else progress
    states = states or {}
    num_points = x.shape[0]
    checkpointers = writer.begin(prep) if writer is not None else {}
    title = f"{spec.name} on {data.description}; {spec.describe(args)}".rstrip("; ")
    metrics: dict[str, Any] = {
        "status": "running",
        "title": title,
        "model": spec.name,
        "data": data.description,
        "num_points": num_points,
        "num_heldout": 0 if x_test is None else x_test.shape[0],
        "seed": cfg.seed,
        "enumerable": prep.enumerable,
        "exact": None,
        "guides": {},
    }
    if writer is not None:
        writer.metrics = metrics  # what a failed write leaves in metrics.json
    log(title + (f"\nrun folder: {writer.run_dir}" if writer is not None else ""))
    for g, state in states.items():
        log(f"resuming {g} from its checkpoint: " + ("finished" if state.get("finished") else f"step {state['step']} of {cfg.svi.steps}"))

    enumerable = prep.enumerable
    ref = spec.exact
    if not (cfg.em.enabled and ref is not None and (enumerable or not ref.enumerable)):
        ref = None
    fits: dict[str, Any] = {}  # method -> fitted parameters, for the model's picture
    trained: dict[str, Any] = {}  # method -> its trained guide (SVI methods)
    models: dict[str, Any] = {}  # method -> its trained model module (SVI methods)
    if data.truth is not None and enumerable and not cfg.data.heldout:  # x is all of data.x; validated data and truths are float64
        truth_x, truth = data.x.to(x.device), move(data.truth, x.device)
        metrics["truth_log_likelihood_per_point"] = _per_point(spec.exact.log_evidence(truth_x, truth), num_points)
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
        if writer is not None:
            writer.exact(em.params)
        fits[ref.method] = em.params
        _stop_if_impossible(metrics, writer, cfg.dtype)
        log(f"{ref.method}: {ref.objective}/point = {float(trace[-1]):.4f} after {em.num_iters} iterations ({wall:.2f} s)")

    interrupted = False
    for i, (g, guide) in enumerate(prep.guides.items()):
        model = (spec.guides[g].learnable or spec.learnable)(init, args)
        parallel = None if data_parallel is None else data_parallel(model, guide, cfg.seed + 1 + i)
        try:
            result = train_svi(model, guide, x, cfg.svi, seed=cfg.seed + 1 + i, progress=progress, desc=g,
                               checkpoint=checkpointers.get(g), resume=states.get(g), parallel=parallel)
        except NonFiniteLoss as err:  # nothing more is saved: the guide's last checkpoint is its last good state
            metrics.update(status="failed", error=str(err), failed_guide=g)
            if writer is not None:
                writer.failed(metrics)
            raise
        fitted = spec.fitted(model, guide)
        metrics["guides"][g] = _evaluate(spec, enumerable, fitted, guide, x, result, cfg)
        _stop_if_impossible(metrics, writer, cfg.dtype, g)
        fits[f"SVI {g}"] = fitted
        trained[f"SVI {g}"] = guide
        models[f"SVI {g}"] = model
        if writer is not None:
            writer.guide(g, fitted, guide)
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
    if spec.label_metrics is not None and data.labels is not None and not cfg.data.heldout:  # rows of x are data.x's
        labels = data.labels.to(x.device)
        metrics["labels"] = {method: spec.label_metrics(x, params, trained.get(method), labels) for method, params in fits.items()}
        for method, values in metrics["labels"].items():
            log(f"against the true labels, {method}: " + ", ".join(f"{k} = {v:.4g}" for k, v in values.items()))
    metrics["status"] = "interrupted" if interrupted or stop_requested() else "complete"
    table = report.comparison_table(metrics)
    if metrics.get("heldout"):
        table += f"\n\nHeld out ({metrics['num_heldout']} documents, points or sequences, never trained on):\n\n" + report.heldout_table(metrics)
    if metrics.get("labels"):
        table += "\n\nAgainst the data's true labels (used for nothing else):\n\n" + report.labels_table(metrics)
    fit_notes = f"\n\n{spec.describe_fit(fits, data.features)}" if spec.describe_fit is not None else ""
    if writer is not None:
        writer.finish(prep, metrics, fits, trained, f"{table}\n\n{_notes(metrics)}{fit_notes}")
    log(table + fit_notes)
    return RunResult(None if writer is None else writer.run_dir, metrics, x, fits, trained, models, cfg, spec, data, x_test)


def _check_preprocessing(cfg: RunConfig, data: Dataset, x: torch.Tensor, x_test: torch.Tensor | None, init: Any) -> None:
    """Refuse, before any work, data that overflowed on its way to the model: values beyond the range of
    ``cfg.dtype`` (float32 ends near 3.4e38), or initial parameters computed from the data that are not finite."""
    def largest(t: torch.Tensor) -> float:
        finite = t[torch.isfinite(t)]
        return float(finite.abs().max()) if finite.numel() else float("nan")

    def stored(t: torch.Tensor | None) -> torch.Tensor | None:  # a sparse tensor's stored entries, a dense one itself
        if t is None or t.layout == torch.strided:
            return t
        return (t.coalesce() if t.layout == torch.sparse_coo else t).values()

    for rows, given, cast in (("data", data.x, x), ("held-out data", data.x_test, x_test)):
        given, cast = stored(given), stored(cast)
        if cast is not None and given is not None and torch.isinf(cast).any() and not torch.isinf(given).any():
            raise DataError(f"dtype={cfg.dtype!r}: the {rows} overflow it (largest |value| {largest(given):.3g}); "
                            "use dtype = 'float64', or rescale the data")
    state = init.state_dict() if hasattr(init, "state_dict") else {}
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise DataError(f"the initial parameters computed from the data are not finite ({name}): the data's values "
                            f"(largest |value| {largest(x):.3g}) overflow {cfg.dtype} arithmetic; rescale the data, "
                            "or set data.standardise = true")


ROUND_OFF = {"float64": 1e-6, "float32": 1e-4}
"""Relative slack for round-off when an ELBO is checked against the exact log p(x) at the same parameters. The
bound is exact (log p(x) - ELBO = KL(q || p(z|x)) >= 0), so only round-off can put the ELBO above: float64
keeps ~1e-16 per operation and float32 ~1e-7, and torch's pairwise sums over up to 10^6 points and the
log-sum-exp over z lose a few dozen times that. The slack is far above that round-off and far below a real
violation."""


def _stop_if_impossible(metrics: dict[str, Any], writer: RunWriter | None, dtype: str, guide: str | None = None) -> None:
    """Stop the run, instead of reporting it, when a number the runner just computed is impossible: the exact
    reference's objective NaN, or (``guide``) an exact ELBO NaN, above the exact log p(x) at the same parameters
    beyond round-off, or a negative KL. metrics.json then says "failed" (when there is a writer).
    (A guide's log p(x) above EM's is possible: different parameters, and EM finds a local optimum.)"""
    problem = ""
    if guide is None:
        ref = metrics["exact"]
        key = "log_likelihood_per_point" if "log_likelihood_per_point" in ref else "elbo_per_point"
        if ref[key] != ref[key]:
            problem = f"{ref['method']}: {ref['objective']}/point is NaN after {ref['iterations']} iterations"
    else:
        m = metrics["guides"][guide]
        if "kl_per_point" in m:  # exact, by enumeration: ELBO <= log p(x), with equality iff q = p(z|x)
            elbo, logp, kl = m["final_elbo_per_point"], m["log_likelihood_per_point"], m["kl_per_point"]
            slack = ROUND_OFF[dtype] * max(1.0, abs(logp))
            if elbo != elbo or logp != logp or kl != kl:
                problem = f"guide {guide!r}: exact ELBO/point = {elbo}, log p(x)/point = {logp}, KL/point = {kl} (NaN)"
            elif elbo - logp > slack or kl < -slack:
                problem = (f"guide {guide!r}: the exact ELBO/point {elbo:.10g} is above the exact log p(x)/point "
                           f"{logp:.10g} at the same parameters (KL/point {kl:.3g}; round-off allows {slack:.1e}), "
                           "which the bound rules out")
    if not problem:
        return
    message = f"impossible result, not reported: {problem}"
    metrics.update(status="failed", error=message, **({"failed_guide": guide} if guide else {}))
    if writer is not None:
        writer.failed(metrics)
    raise ImpossibleResult(message)


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
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed), device="cpu").to(x.device)  # the same split on every device
    return take_rows(x, perm[num_test:].sort().values), take_rows(x, perm[:num_test].sort().values)


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
        "out_of_time": result.out_of_time,  # stopped by svi.max_seconds (steps < svi.steps)
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
