"""docs/adding-a-model.md (moved out of the README), executed: the module, the registry entry and the config
must together give a model that `vizoo run` trains, with exact EM, and the exact identities hold."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import vizoo.models
from vizoo.experiments import registry
from vizoo.experiments.config import load_config
from vizoo.experiments.run import run_experiment

DOC = Path(__file__).parents[1] / "docs" / "adding-a-model.md"


def example_blocks() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    pattern = re.compile(r"<!-- readme-example: (.+?) -->\n```\w+\n(.*?)```", re.S)
    return {name: body for name, body in pattern.findall(text)}


@pytest.fixture
def pmm(monkeypatch):
    blocks = example_blocks()
    assert set(blocks) == {"models/pmm.py", "registry entry", "experiments/configs/pmm_synthetic.toml"}
    module = types.ModuleType("vizoo.models.pmm")
    monkeypatch.setitem(sys.modules, "vizoo.models.pmm", module)  # before exec: dataclasses look it up
    exec(compile(blocks["models/pmm.py"], "docs/adding-a-model.md:models/pmm.py", "exec"), module.__dict__)
    monkeypatch.setattr(vizoo.models, "pmm", module, raising=False)
    entry: dict = {}
    exec(compile(blocks["registry entry"], "docs/adding-a-model.md:registry", "exec"), entry)
    monkeypatch.setitem(registry.MODELS, "pmm", entry["PMM_SPEC"])
    return module, blocks["experiments/configs/pmm_synthetic.toml"]


def test_readme_model_runs_end_to_end(pmm, tmp_path):
    module, toml = pmm
    path = tmp_path / "pmm_synthetic.toml"
    path.write_text(toml)
    cfg = load_config(path, [f'output_dir="{tmp_path / "runs"}"', "progress=false"])
    result = run_experiment(cfg, log=lambda *_: None)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "complete"
    em_ll = metrics["exact"]["log_likelihood_per_point"]
    assert (torch.tensor(metrics["exact"]["log_likelihood_trace"]).diff() >= -1e-12).all()
    for g in ("mean_field", "amortised"):
        m = metrics["guides"][g]
        assert abs(m["final_elbo_per_point"] + m["kl_per_point"] - m["log_likelihood_per_point"]) < 1e-9
        assert m["final_elbo_per_point"] <= m["log_likelihood_per_point"] + 1e-12
        # well-separated rates (2, 11, 20): SVI finds EM's optimum
        assert abs(m["log_likelihood_per_point"] - em_ll) < 0.01


def test_readme_model_rejects_bad_counts(pmm):
    module, _ = pmm
    with pytest.raises(vizoo.models.errors.DataError, match="non-negative integer counts"):
        module.validate(torch.tensor([[1.0, -2.0], [3.0, 4.0]]), module.PMMArgs())
