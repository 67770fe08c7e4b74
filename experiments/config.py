"""Experiment configs: TOML parsed into typed, frozen dataclasses.

A config holds only what differs from the defaults below. Unknown keys, wrong types and
out-of-range values raise :class:`ConfigError` with one line naming the key and the value.
``--set key=value`` overrides are applied to the raw table before parsing, so they are checked
exactly like the file.

    name = "gmm_faithful"          # run folder prefix (default: the file's stem)
    model = "gmm"
    guides = ["mean_field", "amortised"]
    seed = 0
    device = "cpu"                 # or "cuda", "cuda:N", "auto" (experiments/devices.py)
    [data]        -> models.datasets.DataOptions
    [model_args]  -> the model's own args dataclass (e.g. models.gmm.GMMArgs)
    [guide_args]  -> GuideArgs
    [svi]         -> SVIConfig
    [em]          -> EMConfig
    [eval]        -> EvalConfig
    [checkpoint]  -> CheckpointConfig
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..guides.nets import BASELINES
from ..models.datasets import DataOptions
from ..models.errors import ConfigError
from ..models.exact.binary import MAX_LATENTS, MAX_PARALLEL_LATENTS
from ..models.spec import ELBOS, ModelSpec
from .devices import check_device
from .registry import resolve

OPTIMISERS = ("adam", "sgd")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=-]{0,99}")  # a run folder's prefix: never a path
DTYPES = ("float64", "float32")


@dataclass(frozen=True)
class GuideArgs:
    """Options for the guides' builders.

    hidden: hidden layer sizes of an amortised guide's network.
    start: where a guide starts: "uniform" q(z), or "posterior", the E-step at the initial
        parameters (an amortised guide's network is first fitted to it).
    baseline: TraceGraph_ELBO's control variate for discrete sites: "average" (decaying average of
        each point's downstream cost), "network" (that average plus a learned correction, an MLP of the data
        point with the ``hidden`` sizes) or "none". The other estimators ignore it.
    refine: LDA's amortised guide: CAVI document updates applied to the network's output
        (semi-amortised; 0: the network alone).
    topic_step: LDA's guides: how q(beta)'s lambda moves, "natural" (Hoffman et al.'s stochastic
        natural-gradient step) or "gradient" (the optimiser, on the Monte Carlo gradient).
    reparameterised: the VAE's guides: false hides rsample from their sites, so Trace_ELBO falls back to
        the score-function estimator (same family, same objective, a different gradient estimate).
    local: LDA's guides: how each minibatch's q(theta_d), q(z_d) are set; unset: the guide's own default
        ("gradient" for mean_field, "network" for amortised); "cavi": CAVI document updates to convergence
        (Hoffman et al.'s stochastic VI; the amortised guide starts them from its network).
    learning_offset, learning_decay: LDA's natural step size rho_t = (learning_offset + t)^-learning_decay.
    local_steps: the free per-point guides (gmm, noisy_or, lfdm, fhmm, vae mean fields): before each SVI step,
        bring the step's points' own parameters to (near) their optimum at the current model (guides/local.py):
        0 off; N: N coordinate-ascent sweeps (closed form: the GMM's exact E-step, binary CAVI, the factorial
        HMM's fixed points) or N inner Adam steps (the VAE). Unset: the guide's default, on where the update is
        exact and cheap (gmm 1, noisy_or/lfdm 20 for K <= 12, fhmm 1), off for the VAE.
    local_lr: the VAE mean field's inner Adam step size (> 0; unset: guides.vae.LOCAL_LR), with local_steps > 0.
    finish_sweeps, finish_restarts: LDA's guides: full-corpus CAVI sweeps after the last SVI step (0: none),
        the first finish_restarts of them (unset: all) restarting every document (see guides/lda.py).
    Each guide's builder gets the keys it takes; a key that no guide of the run takes must stay at its
    default (the run refuses it otherwise).
    """

    hidden: tuple[int, ...] = (32,)
    start: str = "uniform"
    baseline: str = "average"
    refine: int = 0
    topic_step: str = "natural"
    reparameterised: bool = True
    local: str | None = None
    learning_offset: float = 10.0
    learning_decay: float = 0.7
    finish_sweeps: int = 0
    finish_restarts: int | None = None
    local_steps: int | None = None
    local_lr: float | None = None

    def __post_init__(self) -> None:
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"guide_args.hidden sizes must be >= 1, got {list(self.hidden)}")
        if self.start not in ("uniform", "posterior"):
            raise ValueError(f"guide_args.start must be 'uniform' or 'posterior', got {self.start!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"guide_args.baseline must be one of {BASELINES}, got {self.baseline!r}")
        if self.refine < 0:
            raise ValueError(f"guide_args.refine must be >= 0, got {self.refine}")
        if self.topic_step not in ("natural", "gradient"):
            raise ValueError(f"guide_args.topic_step must be 'natural' or 'gradient', got {self.topic_step!r}")
        if self.local not in (None, "gradient", "network", "cavi"):
            raise ValueError(f"guide_args.local must be 'gradient', 'network' or 'cavi', got {self.local!r}")
        if self.local_steps is not None and self.local_steps < 0:
            raise ValueError(f"guide_args.local_steps must be >= 0, got {self.local_steps}")
        if self.local_lr is not None and not 0 < self.local_lr < math.inf:
            raise ValueError(f"guide_args.local_lr must be > 0, got {self.local_lr}")
        if self.finish_sweeps < 0 or (self.finish_restarts is not None and self.finish_restarts < 1):
            raise ValueError(f"guide_args.finish_sweeps must be >= 0 and finish_restarts >= 1, got "
                             f"{self.finish_sweeps}, {self.finish_restarts}")

    def for_builder(self, build) -> dict:
        """The options ``build`` takes."""
        takes = inspect.signature(build).parameters
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in takes}


@dataclass(frozen=True)
class SVIConfig:
    """Stochastic variational inference.

    elbo: Trace_ELBO (default), TraceGraph_ELBO, TraceEnum_ELBO, TraceMeanField_ELBO or Analytic_ELBO (the
        ELBO in closed form, no sampling: the factorial HMM's guides), where valid.
    num_particles: samples per step for the Monte Carlo estimators.
    optimiser, lr: torch optimiser and its initial step size; lr_final: the step size decays
        geometrically to this by the last step (default: no decay).
    betas: Adam's decay rates for its running first and second moments (adam only).
    steps: optimisation steps (0 evaluates the initialisation).
    batch_size: documents (points) per step, drawn by plate subsampling with the ELBO rescaled to the
        whole data set; 0 uses all of them every step. Models that support it only (``vizoo list``).
    lr_model, lr_network, lr_local: the initial step sizes of the three parameter groups
        (:mod:`experiments.param_groups`): the model's parameters, the guide's shared parameters (network weights,
        its global factors) and its free per-point parameters; unset: ``lr``. ``lr_final`` decays every group by
        the same factor (group g ends at lr_g * lr_final / lr).
    max_seconds: a wall-time budget: training stops cleanly between steps once this many seconds have passed
        (counting the time before a resume), so ``steps`` is an upper bound; with ``lr_final`` the decay then
        runs over the budget's time instead of the steps (unset: no budget).
    """

    elbo: str = "Trace_ELBO"
    num_particles: int = 1
    optimiser: str = "adam"
    lr: float = 0.05
    lr_final: float | None = None
    betas: tuple[float, ...] = (0.9, 0.999)
    steps: int = 1000
    batch_size: int = 0
    lr_model: float | None = None
    lr_network: float | None = None
    lr_local: float | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.elbo not in ELBOS:
            raise ValueError(f"svi.elbo must be one of {ELBOS}, got {self.elbo!r}")
        if self.optimiser not in OPTIMISERS:
            raise ValueError(f"svi.optimiser must be one of {OPTIMISERS}, got {self.optimiser!r}")
        if self.steps < 0:
            raise ValueError(f"svi.steps must be >= 0, got {self.steps}")
        if self.batch_size < 0:
            raise ValueError(f"svi.batch_size must be >= 0 (0: all points every step), got {self.batch_size}")
        if self.num_particles < 1:
            raise ValueError(f"svi.num_particles must be >= 1, got {self.num_particles}")
        if not self.lr > 0:
            raise ValueError(f"svi.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"svi.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.optimiser != "adam" and self.betas != (0.9, 0.999):
            raise ValueError(f"svi.betas applies to adam only, not svi.optimiser={self.optimiser!r}")
        if self.lr_final is not None and not self.lr_final > 0:
            raise ValueError(f"svi.lr_final must be > 0, got {self.lr_final}")
        for key in ("lr_model", "lr_network", "lr_local", "max_seconds"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"svi.{key} must be a positive finite number, got {value}")


@dataclass(frozen=True)
class EMConfig:
    """The exact reference fit (for models that have one): run it, and its stopping rule."""

    enabled: bool = True
    max_iter: int = 1000
    tol: float = 1e-8

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise ValueError(f"em.max_iter must be >= 1, got {self.max_iter}")
        if not self.tol > 0:
            raise ValueError(f"em.tol must be > 0, got {self.tol}")


@dataclass(frozen=True)
class EvalConfig:
    """Monte Carlo evaluation, for models where nothing is exact (the non-linear VAE).

    importance_samples: k, the samples per point of the importance-sampled log p(x) (IWAE estimate) and of
        the ELBO estimate reported for each guide.
    refit_steps: steps of the per-point fit of q on a fixed decoder (held-out data; the amortisation gap);
        0 skips it.
    train_points: evaluate each guide on the first this many training points (0: all of them); held-out
        points are always all evaluated.
    """

    importance_samples: int = 1000
    refit_steps: int = 300
    train_points: int = 0

    def __post_init__(self) -> None:
        if self.importance_samples < 1:
            raise ValueError(f"eval.importance_samples must be >= 1, got {self.importance_samples}")
        if self.refit_steps < 0:
            raise ValueError(f"eval.refit_steps must be >= 0, got {self.refit_steps}")
        if self.train_points < 0:
            raise ValueError(f"eval.train_points must be >= 0 (0: all), got {self.train_points}")


@dataclass(frozen=True)
class CheckpointConfig:
    """When training saves a checkpoint (``checkpoints/<guide>.pt`` in the run folder), from which
    ``vizoo run --resume RUN_DIR`` continues bit for bit. A checkpoint is also written when each guide
    finishes and when Ctrl-C stops it; saving never changes the result.

    enabled: false writes no checkpoints (the guide comparison's runs, which are never resumed).
    every_steps: save every this many SVI steps (0: not by count).
    every_seconds: save when this many seconds have passed since the last save (0: not by time).
    """

    enabled: bool = True
    every_steps: int = 0
    every_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.every_steps < 0:
            raise ValueError(f"checkpoint.every_steps must be >= 0 (0: not by count), got {self.every_steps}")
        if self.every_seconds < 0:
            raise ValueError(f"checkpoint.every_seconds must be >= 0 (0: not by time), got {self.every_seconds}")


@dataclass(frozen=True)
class RunConfig:
    name: str
    model: str = "gmm"
    guides: tuple[str, ...] = ("mean_field", "amortised")
    seed: int = 0
    dtype: str = "float64"
    device: str = "cpu"  # "cpu", "cuda", "cuda:N" or "auto" (experiments/devices.py): where data, parameters and guides live
    output_dir: str = "runs"
    progress: bool = True
    data: DataOptions = field(default_factory=DataOptions)
    model_args: Any = None
    guide_args: GuideArgs = field(default_factory=GuideArgs)
    svi: SVIConfig = field(default_factory=SVIConfig)
    em: EMConfig = field(default_factory=EMConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    @property
    def spec(self) -> ModelSpec:
        return resolve(self.model)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain data (every default filled in), for the run folder."""
        return _drop_none(dataclasses.asdict(self))


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, tuple):
        return list(obj)
    return obj


# --------------------------------------------------------------------------- parsing


def bundled_configs() -> dict[str, str]:
    """name -> path of every config bundled in experiments/configs/."""
    root = files(__package__) / "configs"
    return {p.name.removesuffix(".toml"): str(p) for p in sorted(root.iterdir(), key=lambda p: p.name) if p.name.endswith(".toml")}


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """Read a TOML file, apply ``key=value`` overrides, and parse into a :class:`RunConfig`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {str(path)!r}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config {str(path)!r} is not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {str(path)!r} is not UTF-8 text: {err}") from None
    raw.setdefault("name", path.stem)
    for item in overrides:
        apply_override(raw, item)
    return parse_config(raw)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b=value`` in the raw table; the value is read as TOML, or as a bare string."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    *parents, leaf = key.split(".")
    table = raw
    for p in parents:
        table = table.setdefault(p, {})
        if not isinstance(table, dict):
            raise ConfigError(f"--set {key}: {p!r} is not a table")
    table[leaf] = value


def parse_config(raw: dict[str, Any]) -> RunConfig:
    """Check the raw table against the dataclasses; resolve model_args against the model's type."""
    raw = dict(raw)
    model_name = raw.get("model", "gmm")
    if not isinstance(model_name, str):
        raise ConfigError(f"model: must be a model's name or the path of a model declaration (.toml), got {model_name!r}")
    spec = resolve(model_name)
    model_args_raw = raw.pop("model_args", {})
    cfg: RunConfig = _build(RunConfig, raw, "")
    model_args = _build(spec.args_type, model_args_raw, "model_args.")
    cfg = dataclasses.replace(cfg, model_args=model_args)
    _check_choices(cfg, spec)
    return cfg


def _check_choices(cfg: RunConfig, spec: ModelSpec) -> None:
    if not cfg.guides:
        raise ConfigError("guides: list at least one guide")
    for g in cfg.guides:
        if g not in spec.guides:
            raise ConfigError(f"guides: unknown guide {g!r} for model {spec.name!r}; known: {', '.join(spec.guides)}")
        gs = spec.guides[g]
        if cfg.svi.elbo not in gs.valid_elbos:
            why = gs.why_not
            if cfg.svi.elbo == "Analytic_ELBO":
                why = "Analytic_ELBO needs the ELBO in closed form under the guide, which this guide does not give"
            raise ConfigError(
                f"svi.elbo={cfg.svi.elbo!r} is not valid for model {spec.name!r} with guide {g!r}: {why}; "
                f"valid: {', '.join(gs.valid_elbos)}"
            )
    if cfg.data.name != "file" and cfg.data.name not in spec.datasets:
        raise ConfigError(
            f"data.name: unknown data set {cfg.data.name!r} for model {spec.name!r}; known: {', '.join(spec.datasets)}, file"
        )
    _check_sizes(cfg)
    _check_enumeration(cfg, spec)
    taken = {k for g in cfg.guides for k in inspect.signature(spec.guides[g].build).parameters}
    for f in dataclasses.fields(GuideArgs):
        value = getattr(cfg.guide_args, f.name)
        if f.name not in taken and value != f.default:
            raise ConfigError(f"guide_args.{f.name}={_toml(value)} does not apply to the guides {list(cfg.guides)} of model {spec.name!r}")
    if cfg.svi.batch_size and not spec.minibatch:
        raise ConfigError(f"svi.batch_size={cfg.svi.batch_size}: model {spec.name!r} does not support minibatches; use 0")
    if cfg.data.heldout and spec.heldout is None:
        raise ConfigError(f"data.heldout={cfg.data.heldout}: model {spec.name!r} has no held-out evaluation; use 0")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {DTYPES}, got {cfg.dtype!r}")
    check_device(cfg.device)
    if not _NAME.fullmatch(cfg.name):
        raise ConfigError(f"name must be a plain folder name of letters, digits and _ . + = - (at most 100, not starting "
                          f"with '.' or '-'), got {cfg.name!r}")


MAX_UNITS = 10_000
"""The largest size of anything a model or guide allocates per point or per layer: components, causes, factors,
topics, states, chains, latent and hidden sizes (every integer under ``[model_args]``, and guide_args.hidden)."""
SIZE_LIMITS = {
    "guide_args.refine": 1_000,
    "guide_args.local_steps": 10_000,
    "svi.num_particles": 10_000,
    "eval.importance_samples": 1_000_000,
    "data.num_points": 1_000_000,
    "data.dim": 100_000,
    "data.doc_length": 1_000_000,
    "data.num_steps": 100_000,
    "data.vocab_size": 1_000_000,
    "data.min_doc_freq": 1_000_000,
    "data.subset": 100_000_000,
    "svi.steps": 1_000_000,
    "svi.batch_size": 1_000_000,
    "em.max_iter": 100_000,
    "eval.refit_steps": 100_000,
    "eval.train_points": 1_000_000,
    "checkpoint.every_steps": 1_000_000,
}
"""Limits on the other sizes and counts: each is far beyond what runs on one machine in reasonable time, and low
enough that a typo (an extra three zeros) is refused with a message instead of an allocation failure deep in torch
or a run that trains for days."""
MAX_SEED = 2**31 - 1
"""The largest ``seed``: Pyro and NumPy take seeds up to 2^32 - 1, and a run seeds its guides with seed + 1, + 2, ...
and a comparison its repeats with seed + 1, + 2, ... (at most MAX_SEEDS), which stay below that."""
MAX_SEEDS = 1_000
"""The most seeds of a comparison or a report (``--seeds``)."""


LIMIT_REASONS = {
    "svi.steps": "a run this long would take days",
    "em.max_iter": "a run this long would take days",
    "eval.refit_steps": "a run this long would take days",
    "guide_args.local_steps": "sweeps per SVI step; a run this long would take days",
    "checkpoint.every_steps": "more steps than a run may have",
    "data.subset": "more rows than any data set here",
    "data.min_doc_freq": "more documents than any corpus here",
}
"""Why a limit above is there, where it is not memory."""


def _check_sizes(cfg: RunConfig) -> None:
    """Refuse, before any work, a size beyond the limits above."""
    def ints(value: Any) -> list[int]:
        if isinstance(value, bool):
            return []
        if isinstance(value, int):
            return [value]
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)] if isinstance(value, tuple) else []

    checks = [(f"model_args.{f.name}", getattr(cfg.model_args, f.name), MAX_UNITS) for f in dataclasses.fields(cfg.model_args)]
    checks.append(("guide_args.hidden", cfg.guide_args.hidden, MAX_UNITS))
    for key, limit in SIZE_LIMITS.items():
        table, name = key.split(".")
        checks.append((key, getattr(getattr(cfg, table), name), limit))
    for key, value, limit in checks:
        too_big = [v for v in ints(value) if v > limit]
        if too_big:
            why = LIMIT_REASONS.get(key, "a size this large would not fit in memory")
            raise ConfigError(f"{key}={_toml(value)} is larger than the limit of {limit:,} ({why}; if you meant it, "
                              "raise the limit in experiments/config.py)")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed={cfg.seed} must be in [0, {MAX_SEED:,}] (Pyro's and NumPy's seeds are 0 to 2^32 - 1, "
                          "and runs add small offsets to it)")


def _check_enumeration(cfg: RunConfig, spec: ModelSpec) -> None:
    """Refuse, before any work, a run that would enumerate more latent configurations than the limits."""
    too_large = spec.exact_size_error(cfg.model_args)
    if too_large and spec.exact is not None and cfg.em.enabled:
        raise ConfigError(f"{too_large}; set em.enabled = false to train without the exact reference")
    if not spec.latent_field:
        return
    k = getattr(cfg.model_args, spec.latent_field)
    field = f"model_args.{spec.latent_field}={k}"
    if cfg.svi.elbo == "TraceEnum_ELBO" and k > MAX_PARALLEL_LATENTS:
        raise ConfigError(
            f"{field} is too large for svi.elbo='TraceEnum_ELBO', which sums over all 2^{k} configurations "
            f"per point in memory; the limit is {MAX_PARALLEL_LATENTS}: use Trace_ELBO or TraceGraph_ELBO"
        )
    if spec.exact is not None and cfg.em.enabled and k > MAX_LATENTS:
        raise ConfigError(
            f"{field} is too large for exact enumeration (the limit is {MAX_LATENTS}: 2^{MAX_LATENTS} = "
            f"{2**MAX_LATENTS:,} configurations per point); set em.enabled = false to train without the exact reference"
        )


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from ``raw``, checking keys and types field by field."""
    table = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise ConfigError(f"{table} must be a table, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}' in {table}; known keys: {', '.join(fields)}")
    missing = [n for n, f in fields.items() if n not in raw and _no_default(f)]
    if missing:
        raise ConfigError(f"missing key '{prefix}{missing[0]}'")
    kwargs = {name: _coerce(hints[name], value, prefix + name) for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ValueError as err:  # range checks in __post_init__
        raise ConfigError(str(err)) from None


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _no_default(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _show(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` (int, float, bool, str, tuples, optionals, dataclasses)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = [t for t in options if t is not type(None)]
        return _coerce(inner, value, key)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin is tuple:
        (inner, _) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {_show(value)}")
        return tuple(_coerce(inner, v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {_show(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {_show(value)}")
        return value
    raise TypeError(f"config field {key} has unsupported type {tp}")  # a bug in this module, not user input
