"""Data for the binary-latent models: the bundled sets load as documented, and bad input is refused
before any work, with one line that names the problem and where it is."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from vizoo.experiments.cli import main
from vizoo.experiments.registry import MODELS
from vizoo.models import lfdm, noisy_or
from vizoo.models.datasets import DataOptions, load_std
from vizoo.models.errors import DataError


def test_std_symptoms_is_the_documented_table():
    data = load_std(DataOptions("std"), None, 0)
    assert data.x.shape == (877, 10) and data.x.dtype == torch.float64
    assert set(data.x.unique().tolist()) == {0.0, 1.0}
    assert data.features[1] == "discharge" and abs(float(data.x[:, 1].mean()) - 0.4618) < 1e-4  # R's summary
    assert set(data.labels.unique().tolist()) == {0, 1, 2}  # gonorrhea, chlamydia, both


def test_a_users_binary_file_is_not_standardised(tmp_path):
    values = (np.arange(40).reshape(10, 4) % 3 == 0).astype(float)
    np.save(tmp_path / "s.npy", values)
    data = MODELS["noisy_or"].load(DataOptions("file", path=str(tmp_path / "s.npy"), standardise=True),
                                   noisy_or.NoisyORArgs(2), seed=0)
    assert torch.equal(data.x, torch.as_tensor(values))


@pytest.mark.parametrize(
    "values,message",
    [
        (np.array([[0.0, 1.0], [2.0, 0.0]]), "symptoms must be binary (0 or 1); 1 entries are not, first at row 1, column 0: 2.0"),
        (np.array([[0.0, 0.5]]), "first at row 0, column 1: 0.5"),
        (np.array([[0.0, np.nan]]), "first at row 0, column 1: nan"),
        (np.zeros((0, 3)), "symptoms are empty"),
        (np.zeros(3), "shape (num_points, num_symptoms); got shape (3,)"),
        (np.array([["a", "b"]]), "symptoms must be numbers"),
    ],
)
def test_bad_symptoms_are_refused(values, message):
    with pytest.raises(DataError) as err:
        noisy_or.validate_data(values, 2)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "values,message",
    [
        (np.array([[1.0, 2.0], [-1.0, 3.0]]), "row 1, column 0 is -1.0"),
        (np.array([[1.0, 2.0], [0.0, 0.0]]), "document 1 is empty"),
        (np.array([[1.0, 0.5]]), "counts must be integers; row 0, column 1 is 0.5"),
        (np.array([[1.0, np.inf]]), "counts must be finite"),
    ],
)
def test_bad_counts_are_refused(values, message):
    with pytest.raises(DataError) as err:
        lfdm.validate_data(values)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "model,values,message",
    [
        ("noisy_or", np.array([[0.0, 1.0], [3.0, 1.0]]), "symptoms must be binary"),
        ("lfdm", np.array([[1.0, 2.0], [-2.0, 1.0]]), "non-negative"),
        ("lfdm", np.array([[1.0, 2.0], [0.0, 0.0]]), "document 1 is empty"),
    ],
)
def test_cli_refuses_bad_files_in_one_line_before_any_work(tmp_path, capsys, model, values, message):
    np.save(tmp_path / "x.npy", values)
    config = tmp_path / "c.toml"
    config.write_text(f'model = "{model}"\n[data]\nname = "file"\npath = "{tmp_path / "x.npy"}"\n')
    code = main(["run", str(config), "--out", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "runs").exists()


def test_cli_refuses_too_many_latents_for_enumeration(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('model = "noisy_or"\n[data]\nname = "synthetic"\n[model_args]\nnum_causes = 24\n')
    assert main(["run", str(config), "--out", str(tmp_path / "runs"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "num_causes=24 is too large for exact enumeration (the limit is 20" in err and err.count("\n") == 1


@pytest.mark.parametrize("model,data", [("noisy_or", "std"), ("lfdm", "reuters")])
def test_cli_runs_each_model_end_to_end(tmp_path, model, data):
    config = tmp_path / "c.toml"
    config.write_text(
        f'model = "{model}"\nguides = ["mean_field", "amortised"]\n[data]\nname = "{data}"\nsubset = 60\nvocab_size = 300\n'
        '[model_args]\n' + ("num_causes = 2\n" if model == "noisy_or" else "num_factors = 3\n")
        + '[svi]\nelbo = "TraceEnum_ELBO"\nsteps = 20\n[em]\nmax_iter = 5\n'
    )
    assert main(["run", str(config), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["exact"]["method"] == "generalised EM"
    em = metrics["exact"]["log_likelihood_trace"]
    assert all(b >= a - 1e-12 * abs(a) for a, b in zip(em, em[1:]))
    for g in ("mean_field", "amortised"):
        m = metrics["guides"][g]
        assert abs(m["final_elbo_per_point"] + m["kl_per_point"] - m["log_likelihood_per_point"]) < 1e-9
        assert m["kl_per_point"] >= 0
        torch.load(run_dir / "params" / f"{g}.pt", weights_only=True)
    report = (run_dir / "report.md").read_text()
    assert ("W (causes x symptoms)" if model == "noisy_or" else "words each factor raises most") in report
