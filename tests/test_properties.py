"""Property-based tests (hypothesis) over every registered model.

* Random small models, data and guides, for every model whose posterior is enumerable: ELBO <= log p(x),
  KL >= 0 and ELBO + KL = log p(x) to float64 precision. The sizes, the seed of the simulated truth, whether
  the parameters are the truth or the data-driven start, the guide, and a random setting of every guide
  parameter are all drawn. For the factorial HMM, whose reference KL is log p(x) - ELBO by construction, the
  KL is recomputed by brute force over every joint path.
* Malformed data for every model (NaN, inf, wrong rank, wrong dtype, empty, values outside the support,
  wrong width): the model's validation raises a one-line DataError, never an exception from deep in torch
  or Pyro; the same data written to a file and given to ``vizoo run`` exit 2 with one line and write nothing.

``make test`` generates 25 cases per model for the identities, 30 per model for validation and 8 per model
for files (about 740 in all); ``VIZOO_FUZZ_SCALE=k`` multiplies them.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pyro
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from vizoo.experiments.cli import main
from vizoo.experiments.config import GuideArgs
from vizoo.experiments.registry import MODELS
from vizoo.models.datasets import DataOptions
from vizoo.models.errors import VizooError

SCALE = int(os.environ.get("VIZOO_FUZZ_SCALE", "1"))  # more generated cases: VIZOO_FUZZ_SCALE=20 pytest tests/test_properties.py
ENUMERABLE = [s for s in MODELS.values() if s.exact is not None and s.exact.enumerable and "synthetic" in s.datasets]
SIZES = {  # every size field a model's args may have, and its small range
    "num_components": st.integers(1, 4),
    "num_causes": st.integers(1, 5),
    "num_factors": st.integers(1, 4),
    "num_chains": st.integers(1, 2),
    "num_states": st.integers(2, 3),
    "covariance": st.sampled_from(["diag", "spherical"]),
    "emission": st.sampled_from(["gaussian", "bernoulli"]),
    "init_scale": st.floats(0.1, 2.0),
}


def test_the_enumerable_models_are_all_covered_and_discrete_data_are_told_apart():
    assert DISCRETE == {"noisy_or", "lfdm", "lda", "vae", "bernoulli_mixture", "declared_lfdm", "declared_noisy_or",
                        "declared_vae", "diagnosis", "sigmoid_belief_net"}
    assert {s.name for s in ENUMERABLE} == {s.name for s in MODELS.values() if s.exact and s.exact.enumerable} - {"vae"}
    assert len(ENUMERABLE) >= 10


@st.composite
def problems(draw, spec):
    fields = {f.name for f in dataclasses.fields(spec.args_type)}
    args = spec.args_type(**{k: draw(v) for k, v in SIZES.items() if k in fields})
    assume(not spec.exact_size_error(args))
    opts = DataOptions(name="synthetic", num_points=draw(st.integers(4, 10)), dim=draw(st.integers(1, 6)),
                       num_steps=draw(st.integers(1, 4)), doc_length=draw(st.integers(1, 8)), separation=draw(st.floats(0.5, 6)))
    return args, opts, draw(st.integers(0, 2**16)), draw(st.sampled_from(["truth", "start"])), \
        draw(st.sampled_from(sorted(spec.guides))), draw(st.floats(0.05, 3.0))


@pytest.mark.parametrize("spec", ENUMERABLE, ids=lambda s: s.name)
@settings(max_examples=25 * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_random_models_keep_the_bound_and_the_identity(spec, data):
    args, opts, seed, which, guide_name, scale = data.draw(problems(spec))
    from vizoo.models.errors import DataError

    try:
        dataset = spec.load(opts, args, seed)
    except DataError:  # e.g. fewer points than components: refused, as it should be
        assume(False)
    x = dataset.x
    params = dataset.truth if which == "truth" and dataset.truth is not None else spec.init_params(x, args, seed)
    pyro.set_rng_seed(seed)
    g = spec.guides[guide_name]
    guide = g.build(x, params, **GuideArgs().for_builder(g.build))
    assume(hasattr(guide, "probs"))  # the collapsed GMM has no local q
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a random member of the guide's family: every parameter drawn
        for p in guide.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        q = guide.probs(x, params)
        log_px = float(spec.exact.log_evidence(x, params))
        elbo = float(spec.exact.elbo(x, params, q))
        kl = float(spec.exact.kl(x, params, q))
        if spec.name == "fhmm":  # its reference KL is log p - ELBO: recompute it path by path
            from vizoo.models import fhmm
            from vizoo.models.exact import fhmm as exact

            lengths = fhmm.sequence_lengths(x)
            kl = float(sum(exact.brute_force_kl(q, n, x[n], params, int(lengths[n])) for n in range(x.shape[0])))
    # float64 sums of terms as large as the largest of the three carry round-off relative to that size: a
    # random q can put a point on a far component with a tiny scale (ELBO -1e7 against log p(x) = 1.8)
    tol = 1e-10 * max(1.0, abs(log_px), abs(elbo), abs(kl))
    assert math.isfinite(log_px) and math.isfinite(elbo)
    assert elbo <= log_px + tol, (elbo, log_px)
    assert kl >= -tol
    assert abs(elbo + kl - log_px) <= tol, (elbo, kl, log_px)


# --------------------------------------------------------------------------- malformed data


def valid_data(spec):
    """A small valid data set for the model, and its args."""
    args = spec.args_type()
    name = "synthetic" if "synthetic" in spec.datasets else next(iter(spec.datasets))
    opts = DataOptions(name=name, num_points=12, dim=12, num_steps=4, doc_length=8, vocab_size=30, subset=20)
    return spec.load(opts, args, 0).x, args


VALID = {name: valid_data(spec) for name, spec in MODELS.items()}
DISCRETE = {name for name, (x, _) in VALID.items() if bool(((x >= 0) & (x == x.round())).all())}
"""Models whose data are 0/1 or counts: every valid sample is whole numbers >= 0 (a real-valued sample never is)."""


@st.composite
def malformed(draw, x: torch.Tensor, discrete: bool):
    """A corruption of x that no model accepts, and what it is."""
    kind = draw(st.sampled_from(["nan", "inf", "-inf", "rank+", "rank-", "complex", "strings", "empty rows",
                                 "empty columns", "negative", "fraction", "columns"] if discrete else
                                ["nan", "inf", "-inf", "rank+", "rank-", "complex", "strings", "empty rows", "empty columns"]))
    flat = x.reshape(-1)
    i = draw(st.integers(0, flat.numel() - 1))
    if kind in ("nan", "inf", "-inf", "negative", "fraction"):
        value = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "negative": -1.0,
                 "fraction": 0.5}[kind]
        y = flat.clone()
        if x.dim() == 3 and kind == "nan":  # NaN is the padding of a sequence: a NaN inside one is the error
            y = y.reshape(x.shape)
            y[0, 0, 0] = value
            return y, kind
        y[i] = value
        return y.reshape(x.shape), kind
    if kind == "rank+":
        return x[None], kind
    if kind == "rank-":
        return flat, kind
    if kind == "complex":
        return x.to(torch.complex128) + 1j, kind
    if kind == "strings":
        return np.array([["a"] * x.shape[-1]] * 2), kind
    if kind == "empty rows":
        return x[:0], kind
    if kind == "empty columns":
        return x[..., :0], kind
    return torch.cat([x, x[..., :1]], -1), kind  # "columns": one more column than the model's vocabulary or width


FIXED_WIDTH = {name for name, spec in MODELS.items() if name.startswith("declared") or name in
               ("bernoulli_mixture", "diagnosis", "factor_analysis", "sigmoid_belief_net")}


@pytest.mark.parametrize("name", list(MODELS))
@settings(max_examples=30 * SCALE, deadline=None)
@given(data=st.data())
def test_malformed_data_is_a_clear_error(name, data):
    spec = MODELS[name]
    x, args = VALID[name]
    bad, kind = data.draw(malformed(x, name in DISCRETE))
    if kind == "columns" and name not in FIXED_WIDTH:
        return  # a wider matrix is still valid data for models whose width comes from the data
    try:
        spec.validate(bad, args)
    except VizooError as err:
        message = str(err)
        assert message and "\n" not in message, message
        return
    pytest.fail(f"{name}: {kind} data were accepted")


@pytest.mark.parametrize("name", ["gmm", "noisy_or", "lda", "fhmm", "vae", "diagnosis"])
@settings(max_examples=8 * SCALE, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), suffix=st.sampled_from([".npy", ".csv"]))
def test_malformed_data_files_exit_2_and_write_nothing(name, data, suffix, tmp_path_factory, capsys):
    x, _ = VALID[name]
    bad, kind = data.draw(malformed(x, name in DISCRETE))
    assume(kind != "columns" or name in FIXED_WIDTH)  # a wider matrix is valid data where the width comes from the data
    assume(kind not in ("complex", "strings") or suffix == ".npy")  # a CSV of them is not numbers: refused another way
    root = tmp_path_factory.mktemp("file")
    path = root / f"data{suffix}"
    arr = np.asarray(bad)
    if suffix == ".npy":
        np.save(path, arr, allow_pickle=False)
    else:
        if arr.ndim != 2:
            assume(False)  # a CSV is a matrix by construction
        np.savetxt(path, arr, delimiter=",")
    out = root / "runs"
    config = {"gmm": "gmm_synthetic", "noisy_or": "noisy_or_std", "lda": "lda_synthetic", "fhmm": "fhmm_synthetic",
              "vae": "vae_digits", "diagnosis": "diagnosis_std"}[name]
    code = main(["run", config, "--out", str(out), "--no-progress", "--set", "data.name='file'",
                 "--set", f"data.path={str(path)!r}", "--set", "data.heldout=0",
                 "--set", "svi.steps=1", "--set", "em.max_iter=1"])  # accepted data would run, briefly
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("vizoo: error:") and "\n" not in err, (kind, err)
    assert not out.exists()
