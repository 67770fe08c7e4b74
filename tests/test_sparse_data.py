"""Sparse counts end to end through the runner: validation on the stored entries, held-out rows taken without
making the corpus dense, fingerprints, ``.npz`` files, the Python API with scipy and torch sparse matrices, and
the same numbers as the dense run. Models that take dense data only refuse sparse data in one line."""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import vizoo
from vizoo.experiments.checkpoint import fingerprint
from vizoo.experiments.run import SPARSE_DATA_FILE
from vizoo.models.datasets import take_rows
from vizoo.models.datasets.corpora import validate_counts
from vizoo.models.datasets.tabular import from_file
from vizoo.models.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def sparse_forms(dense: np.ndarray):
    """The same matrix as a torch CSR, a torch COO and a scipy CSR matrix."""
    t = torch.as_tensor(dense)
    return {"torch csr": t.to_sparse_csr(), "torch coo": t.to_sparse(), "scipy csr": sp.csr_matrix(dense)}


@pytest.mark.parametrize(
    "dense,message",
    [
        (np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 0.0]]), "document 1 is empty (no words)"),
        (np.array([[1, 0], [0, 0], [0, 0]]), "document 1 is empty (no words) (2 empty documents in all)"),
        (np.array([[1.0, 2.0], [-1.0, 3.0]]), "counts must be non-negative integers; row 1, column 0 is -1.0"),
        (np.array([[1.0, 0.5], [1.0, 0.25]]), "counts must be integers; row 0, column 1 is 0.5"),
        (np.array([[1.0, 2.0], [3.0, np.nan]]), "counts must be finite; row 1, column 1 is nan"),
        (np.array([[1.0, np.inf]]), "counts must be finite; row 0, column 1 is inf"),
    ],
)
def test_sparse_counts_are_refused_with_the_dense_message(dense, message):
    with pytest.raises(DataError, match=re.escape(message)):
        validate_counts(dense)
    for form, x in sparse_forms(dense).items():
        with pytest.raises(DataError, match=re.escape(message)):
            validate_counts(x)


def test_sparse_counts_come_back_sparse_equal_and_the_input_untouched():
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.7, size=(30, 12)).astype(np.int64)
    dense[:, 3] += 1
    for form, x in sparse_forms(dense).items():
        out = validate_counts(x, vocab_size=12)
        assert out.layout == torch.sparse_csr and out.dtype == torch.float64, form
        assert torch.equal(out.to_dense(), torch.as_tensor(dense, dtype=torch.float64)), form
    with pytest.raises(DataError, match="counts has 12 columns but vocab_size is 13"):
        validate_counts(sp.csr_matrix(dense), vocab_size=13)
    # unsorted column indices and a duplicate entry, as scipy allows: summed, sorted, and the caller's copy kept
    m = sp.csr_matrix((np.array([2.0, 1.0, 1.0]), np.array([2, 0, 2]), np.array([0, 3])), shape=(1, 3))
    before = (m.data.copy(), m.indices.copy())
    assert validate_counts(m).to_dense().tolist() == [[1.0, 0.0, 3.0]]
    assert np.array_equal(m.data, before[0]) and np.array_equal(m.indices, before[1])


@pytest.mark.parametrize("idx", [[4, 0, 7, 7, 2], [], list(range(9, -1, -1))])
def test_take_rows_keeps_sparse_rows_sparse(idx):
    rng = np.random.default_rng(1)
    dense = torch.as_tensor(rng.poisson(0.5, size=(10, 6)), dtype=torch.float64)
    dense[3] = 0  # an empty row in the middle
    idx = torch.tensor(idx, dtype=torch.long)
    for x in (dense, dense.to_sparse_csr(), dense.to_sparse()):
        rows = take_rows(x, idx)
        assert rows.layout == x.layout
        assert torch.equal(rows.to_dense() if rows.layout != torch.strided else rows, dense[idx])


def test_fingerprints_of_sparse_data():
    dense = torch.tensor([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]])
    a, b = dense.to_sparse_csr(), dense.clone().to_sparse_csr()
    assert fingerprint(a) == fingerprint(b) != fingerprint(dense)
    changed = dense.clone()
    changed[1, 1] = 4.0
    assert fingerprint(changed.to_sparse_csr()) != fingerprint(a)


def test_npz_files_are_read_sparse_and_bad_ones_refused(tmp_path):
    dense = np.array([[1, 0, 2], [0, 3, 0]])
    sp.save_npz(tmp_path / "c.npz", sp.csr_matrix(dense))
    data = from_file(str(tmp_path / "c.npz"), standardised=False)
    assert data.x.layout == torch.sparse_csr and data.x.to_dense().tolist() == dense.tolist()
    with pytest.raises(DataError, match="standardising it would make it dense; set data.standardise = false"):
        from_file(str(tmp_path / "c.npz"), standardised=True)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"bad.npz' is not a sparse matrix written by scipy.sparse.save_npz \(not a .npz archive\)"):
        from_file(str(tmp_path / "bad.npz"), standardised=False)
    np.savez(tmp_path / "plain.npz", a=np.ones(3))
    with pytest.raises(DataError, match="plain.npz' is not a sparse matrix written by scipy.sparse.save_npz"):
        from_file(str(tmp_path / "plain.npz"), standardised=False)


OPTIONS = dict(model_args={"num_topics": 3}, svi={"batch_size": 32, "steps": 15}, em={"max_iter": 4},
               data_options={"heldout": 0.1})


def test_a_sparse_corpus_gives_the_dense_run_numbers_and_reloads(tmp_path):
    """LDA on the same counts, dense and sparse (scipy and torch): the same ELBOs and held-out scores to 1e-12
    (the runner takes the same rows and the model the same non-zeros); the run folder keeps data.npz."""
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.3, size=(100, 30))
    dense[:, 0] += 1
    ref = vizoo.fit("lda", dense, **OPTIONS)
    for data in (sp.csr_matrix(dense), torch.as_tensor(dense).to_sparse()):
        got = vizoo.fit("lda", data, out=tmp_path, **OPTIONS)
        for a, b in zip(ref.table, got.table):
            assert a["method"] == b["method"] and b["elbo"] == pytest.approx(a["elbo"], rel=1e-12, abs=1e-12)
        for method, scores in ref._run.metrics["heldout"].items():
            assert got._run.metrics["heldout"][method]["perplexity"] == pytest.approx(scores["perplexity"], rel=1e-12)
        assert got._run.x.layout == torch.sparse_csr
        assert (got.run_dir / SPARSE_DATA_FILE).is_file()
        again = vizoo.load(got.run_dir)
        assert [r["elbo"] for r in again.table] == [r["elbo"] for r in got.table]


def test_a_dense_only_model_refuses_sparse_data_in_one_line(tmp_path):
    m = sp.csr_matrix(np.eye(5))
    with pytest.raises(DataError, match="data is a sparse matrix; model gmm takes dense data only"):
        vizoo.fit("gmm", m)
    sp.save_npz(tmp_path / "x.npz", m)
    with pytest.raises(DataError, match="model gmm takes dense data only"):
        vizoo.fit("gmm", str(tmp_path / "x.npz"), standardise=False)
