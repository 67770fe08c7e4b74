"""Everything follows the data's device: the ``device`` key, and no tensor created on the CPU by accident.

A machine without a GPU cannot run on CUDA, so two stand-ins make a stray CPU allocation fail here as it
would there:

* **Strays recorded.** Every registered model (and a few other paths, :data:`VARIANTS`) runs the whole code
  path (``prepare``: data, init, guides; ``execute``: exact fit, SVI, evaluation) on CPU data while
  :class:`Strays` records each tensor that vizoo's own code creates with a factory function without naming a
  device (``torch.zeros(n)``, ``torch.tensor(v)``, ``nn.Linear(a, b)``, a draw from a CPU generator that does
  not say ``device="cpu"``) and each Pyro plate built without ``device=`` (Pyro then puts its subsample indices
  on the default device): on a CUDA run each would be on the CPU, away from the data. The test fails naming
  their files and lines; and every parameter, buffer and fitted tensor must be on the configured device.
* **Guides built on meta data.** Each guide's builder is given meta data and meta initial parameters, and
  every parameter and buffer of the guide and the model module must be on meta. Builders that compute from
  the data's values (a pre-fit, a CAVI start, k-means) cannot run on meta; they are skipped, and covered by
  the first test.
"""

from __future__ import annotations

import dataclasses
import sys
import tomllib
from pathlib import Path

import pyro
import pytest
import torch
import vizoo
from conftest import Killed, assert_same_run, kill_after, run_dirs, tiny_config
from torch.overrides import TorchFunctionMode
from vizoo.experiments import checkpoint as ck
from vizoo.experiments.cli import main
from vizoo.experiments.compare import base_config, tiny_overrides
from vizoo.experiments.config import apply_override, bundled_configs, parse_config
from vizoo.experiments.devices import move, resolve_device, tensor_devices
from vizoo.experiments.registry import MODELS
from vizoo.experiments.run import (
    DTYPES,
    execute,
    load_data,
    prepare,
    run_experiment,
)
from vizoo.models.errors import ConfigError

ROOT = Path(vizoo.__file__).parent
OWN = tuple(str(ROOT / pkg) for pkg in ("models", "guides", "experiments"))
MODULES = str(Path(torch.__file__).parent / "nn")  # torch.nn's layers allocate their parameters for their caller
PLATES = str(Path(pyro.__file__).parent / "poutine" / "subsample_messenger.py")
FACTORIES = {getattr(torch, n) for n in ("zeros", "ones", "full", "empty", "eye", "arange", "linspace", "logspace",
                                          "tensor", "scalar_tensor", "rand", "randn", "randint", "randperm",
                                          "tril_indices", "triu_indices")}
META = torch.device("meta")


class Strays(TorchFunctionMode):
    """Within this block, records where vizoo's code (models/, guides/, experiments/) creates a tensor with a factory
    function (``torch.zeros``, ``torch.tensor``, ``torch.arange``, ``torch.randn``, ``torch.as_tensor`` of a list or
    an array ...) without saying on which
    device, itself or through a ``torch.nn`` layer it builds (``strays``), and where it builds a Pyro plate without
    ``device=`` (``plates``): on a CUDA run each of these is a tensor on the CPU, away from the data. A deliberate
    CPU tensor says ``device="cpu"`` (a draw from a seeded CPU generator, moved to the data's device after)."""

    def __init__(self):
        super().__init__()
        self.strays: set[str] = set()
        self.plates: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        made = func in FACTORIES or (func is torch.as_tensor and not isinstance(args[0], torch.Tensor))  # a list, an array
        if made and kwargs.get("device") is None:
            caller = sys._getframe(1)
            while caller.f_code.co_filename.startswith(MODULES):  # nn.Linear(a, b) and the like: who built it
                caller = caller.f_back
            where = caller.f_code.co_filename
            if where.startswith(OWN):
                self.strays.add(f"{Path(where).relative_to(ROOT)}:{caller.f_lineno}")
            elif where == PLATES:
                frame = caller
                while frame is not None and not frame.f_code.co_filename.startswith(OWN):
                    frame = frame.f_back
                if frame is not None:
                    self.plates.add(f"{Path(frame.f_code.co_filename).relative_to(ROOT)}:{frame.f_lineno}")
        return func(*args, **kwargs)


def test_the_recorder_finds_strays_and_plates_and_passes_what_follows_the_data():
    """:class:`Strays` on code compiled as if it were a file of vizoo's: the lines it must name, and no others."""
    source = ("import pyro, torch\n"
              "def f(x):\n"
              "    a = torch.zeros(3) + x.new_zeros(3) + torch.zeros(3, device=x.device)\n"
              "    layer = torch.nn.Linear(3, 1)\n"
              "    with pyro.plate('points', 3) as idx, pyro.plate('others', 3, device=x.device):\n"
              "        return a[idx], layer, torch.nn.Linear(3, 1, device=x.device)\n")
    where = ROOT / "models" / "_stray_example.py"
    namespace: dict = {}
    exec(compile(source, str(where), "exec"), namespace)
    with Strays() as found:
        namespace["f"](torch.ones(3))
    assert found.strays == {"models/_stray_example.py:3", "models/_stray_example.py:4"}
    assert found.plates == {"models/_stray_example.py:5"}


def tiny(model: str, *extra: str):
    raw, _ = base_config(MODELS[model], None)
    for item in (*tiny_overrides(), "svi.steps=3", "eval.importance_samples=4", "progress=false", *extra):
        apply_override(raw, item)
    raw["name"] = model
    return parse_config(raw)


def minibatch_overrides(model: str) -> tuple[str, ...]:
    """Plate subsampling on, for the models that take minibatches (their subsample indices must follow the data)."""
    return ("svi.batch_size=8",) if MODELS[model].minibatch else ()


@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_runs_on_its_datas_device(model):
    cfg = tiny(model, *minibatch_overrides(model))
    spec = cfg.spec
    data = load_data(cfg, spec)
    device = resolve_device(cfg.device)
    with Strays() as strays:
        prep = prepare(cfg, spec, data)
        result = execute(prep, None, progress=False, log=lambda *a: None)
    assert not strays.strays, f"tensors created without device= (on the CPU under CUDA): {sorted(strays.strays)}"
    assert not strays.plates, f"plates built without device= (subsample indices on the default device): {sorted(strays.plates)}"
    assert prep.x.device == device and (prep.x_test is None or prep.x_test.device == device)
    assert tensor_devices(prep.init) == {device}
    for method in result.models:
        found = tensor_devices(result.models[method], result.trained[method], result.fits[method])
        assert found <= {device}, f"{method}: tensors on {found}"
    assert tensor_devices(*result.fits.values()) <= {device}
    assert result.metrics["status"] == "complete"


VARIANTS = {
    "gmm_faithful_score": ("guide_args.start='posterior'", "guide_args.baseline='network'"),
    "fhmm_score": ("guide_args.start='posterior'",),
    "noisy_or_score": (),
    "vae_digits_linear": ("svi.batch_size=8",),
    "pos_tagger_synthetic": ("guide_args.start='posterior'",),
}
"""Bundled configs that take other paths: the score-function estimator (sampled discrete paths, baselines, the
network baseline), guides started at the posterior, the linear VAE's closed-form reference. (LDA's CAVI locals,
guide_args.local = "cavi", take half a minute even at these sizes: not here.)"""


@pytest.mark.parametrize("name", list(VARIANTS))
def test_other_paths_follow_the_data_too(name):
    raw = {"name": name, **tomllib.loads(Path(bundled_configs()[name]).read_text(encoding="utf-8"))}
    for item in (*tiny_overrides(), "svi.steps=3", "eval.importance_samples=4", "progress=false", *VARIANTS[name]):
        apply_override(raw, item)
    cfg = parse_config(raw)
    data = load_data(cfg, cfg.spec)
    with Strays() as strays:
        result = execute(prepare(cfg, cfg.spec, data), None, progress=False, log=lambda *a: None)
    assert not strays.strays, f"tensors created without device=: {sorted(strays.strays)}"
    assert not strays.plates, f"plates built without device=: {sorted(strays.plates)}"
    assert result.metrics["status"] == "complete"


DATA_DEPENDENT = ("cannot be called on meta tensors", "Cannot copy out of meta tensor", "data-independent")
"""What torch says when a computation needs the data's values (``.item()``, ``nonzero``, a copy to numpy): such
a builder cannot run on meta at all, which is no stray allocation."""


@pytest.mark.parametrize("model", list(MODELS))
def test_guides_built_on_meta_data_live_on_meta(model):
    cfg = tiny(model)
    spec = cfg.spec
    x = load_data(cfg, spec).x.to(DTYPES[cfg.dtype])
    try:
        init = spec.init_params(x.to(META), cfg.model_args, cfg.seed)
    except (NotImplementedError, RuntimeError) as err:
        if not any(s in str(err) for s in DATA_DEPENDENT):
            raise
        init = move(spec.init_params(x, cfg.model_args, cfg.seed), META)  # k-means and the like need the values
    assert tensor_devices(init) == {META}
    built = 0
    for g in cfg.guides:
        build = spec.guides[g].build
        try:
            guide = build(x.to(META), init, **cfg.guide_args.for_builder(build))
        except (NotImplementedError, RuntimeError) as err:
            if not any(s in str(err) for s in DATA_DEPENDENT):
                raise
            continue
        module = (spec.guides[g].learnable or spec.learnable)(init, cfg.model_args)
        for name, t in [*guide.named_parameters(), *guide.named_buffers(), *module.named_parameters(), *module.named_buffers()]:
            assert t.device.type == "meta", f"{model} {g}: {name} is on {t.device}"
        built += 1
    if not built:
        pytest.skip(f"every guide of {model} computes from the data's values when built")


# --------------------------------------------------------------------------- the key


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cuda:-1", "CPU", "cpu:0", "", "meta", 0, True])
def test_bad_device_strings_are_refused_in_one_line(value):
    with pytest.raises(ConfigError) as err:
        tiny("gmm", f"device={value!r}" if isinstance(value, str) else f"device={str(value).lower()}")
    message = str(err.value)
    assert "\n" not in message and "device" in message and repr(value) in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("value", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_on_a_machine_without_it_is_refused_before_any_work(value, tmp_path):
    with pytest.raises(ConfigError, match=f"device='{value}'.*no CUDA device"):
        tiny("gmm", f"device={value!r}", f"output_dir={str(tmp_path)!r}")
    assert not list(tmp_path.iterdir())


def test_auto_and_cpu_resolve_and_the_default_is_cpu():
    assert tiny("gmm").device == "cpu"
    assert tiny("gmm", "device='auto'").device == "auto"
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_the_python_api_and_the_cli_take_the_key(tmp_path, capsys):

    x = MODELS["gmm"].simulate(MODELS["gmm"].init_params(torch.randn(40, 2, dtype=torch.float64), tiny("gmm").model_args, 0), 40, 1)
    x = x[0] if isinstance(x, tuple) else x
    result = vizoo.fit("gmm", x.numpy(), guides=["mean_field"], steps=2, device="cpu")
    assert result.x.device.type == "cpu" and result.config.device == "cpu"
    with pytest.raises(ConfigError, match="device"):
        vizoo.fit("gmm", x.numpy(), steps=2, device="tpu")
    with pytest.raises(ConfigError, match="device must be one of .*'tpu'"):
        vizoo.compare("gmm", seeds=1, steps=2, device="tpu")
    assert main(["run", "gmm_synthetic", "--set", "device='tpu'", "--set", "svi.steps=2", "--out", str(tmp_path),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "device must be one of" in err and "'tpu'" in err


# --------------------------------------------------------------------------- checkpoints


def test_checkpoints_hold_cpu_tensors_and_resume_through_map_location(tmp_path, monkeypatch):
    """A checkpoint is written with every tensor on the CPU and read with ``map_location="cpu"``; its param store
    entries are moved to the resumed run's device, and the identity ignores the device, so a run saved under one
    device continues under another (here, both the CPU: ``torch.load`` is checked to be called with the CPU as
    map_location, the path that brings a GPU checkpoint onto a CPU machine)."""
    cfg = tiny_config("gmm", tmp_path / "a")
    run_experiment(cfg, progress=False, log=lambda *a: None)
    kill_after(monkeypatch, saves=2, guide=cfg.guides[0])
    with pytest.raises(Killed):
        run_experiment(dataclasses.replace(cfg, output_dir=str(tmp_path / "b")), progress=False, log=lambda *a: None)
    monkeypatch.undo()
    (killed,) = run_dirs(tmp_path / "b")
    saved = torch.load(killed / "checkpoints" / f"{cfg.guides[0]}.pt", weights_only=True)
    assert tensor_devices(saved) == {torch.device("cpu")}
    seen = []
    load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    assert main(["run", "--resume", str(killed), "--set", "device='cpu'", "--no-progress"]) == 0  # on another device
    assert "cpu" in seen
    (full,) = run_dirs(tmp_path / "a")
    assert_same_run(full, killed)


def test_on_device_moves_the_param_store_and_leaves_the_random_states_on_the_cpu():
    state = {"param_store": {"baseline": torch.zeros(3)}, "rng": ck.rng_state(), "model": {}}
    moved = ck.on_device(state, META)
    assert moved["param_store"]["baseline"].device == META
    assert moved["rng"]["torch"].device.type == "cpu"
