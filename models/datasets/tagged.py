"""Tagged English sentences from Debian's ``python3-pattern`` package, for the part-of-speech tagger.

The package ships two corpora under :data:`CORPORA_DIR`, one sentence per line, tokens ``word/TAG`` with Penn
Treebank tags: ``tagged-en-oanc.txt`` (19,999 sentences from the Open American National Corpus, 360,524
tokens) and ``tagged-en-wsj.txt`` (1,000 Wall Street Journal sentences). Their README says the corpora are for
personal use and not under the module's BSD licence: they are read from the installed package, never copied
or committed, and the loaders refuse in one line, saying how to install it, when it is missing
(``apt-get install python3-pattern``). The package is optional, as Fashion-MNIST's is.

The tokens are encoded by :func:`models.pos_tagger.encode`'s rules (word id, suffix ids, flags; see
:mod:`models.exact.pos_tagger`); the gold tags are the labels, used only for evaluation.

Loaders (one signature, ``seed`` unused): :func:`load_oanc`, :func:`load_wsj`; ``data.subset`` keeps the first
sentences. :func:`tagged` under them also returns the vocabulary and the tag names.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from ..errors import DataError
from ..exact.pos_tagger import COLUMNS
from .base import DataOptions, Dataset

CORPORA_DIR = Path("/usr/share/doc/python3-pattern/test/corpora")
"""Where Debian's python3-pattern installs its test corpora."""
FILES = {"oanc": "tagged-en-oanc.txt", "wsj": "tagged-en-wsj.txt"}
_INSTALL = "apt-get install python3-pattern"


class Tagged(NamedTuple):
    """x: (N, T, 7) float64 tokens, NaN-padded; tags: (N, T) long gold tag ids, -1 past each end; words: the
    vocabulary in id order; tag_names: the tags in id order; description: one line."""

    x: Tensor
    tags: Tensor
    words: tuple[str, ...]
    tag_names: tuple[str, ...]
    description: str


def read_tagged(path: Path, subset: int = 0) -> list[list[tuple[str, str]]]:
    """Sentences of (word, tag) pairs, one sentence per non-empty line, tokens split on spaces and each token on
    its last '/'; the first ``subset`` sentences (0: all)."""
    sentences = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            pairs = []
            for token in tokens:
                word, sep, tag = token.rpartition("/")
                if not sep or not word or not tag:
                    raise DataError(f"{path.name}, line {number}: token {token!r} is not word/TAG")
                pairs.append((word, tag))
            sentences.append(pairs)
            if subset and len(sentences) == subset:
                break
    return sentences


def encode_words(sentences: list[list[str]]) -> tuple[Tensor, tuple[str, ...]]:
    """(tokens (N, T, 7) float64 NaN-padded, vocabulary) from sentences of words (the rules of
    :func:`models.pos_tagger.encode`, which calls this)."""
    ids: list[dict[str, int]] = [{} for _ in COLUMNS[:4]]
    rows: list[list[list[int]]] = []
    for sentence in sentences:
        rows.append([])
        for word in sentence:
            keys = (word, word[-1:], word[-2:], word[-3:])
            row = [table.setdefault(key, len(table)) for table, key in zip(ids, keys)]
            row += [int(word[:1].isupper()), int(any(ch.isdigit() for ch in word)), int("-" in word)]
            rows[-1].append(row)
    if not rows or any(not r for r in rows):
        raise DataError("tokens: every sentence needs at least one word")
    x = torch.full((len(rows), max(map(len, rows)), len(COLUMNS)), float("nan"), dtype=torch.float64)
    for n, r in enumerate(rows):
        x[n, : len(r)] = torch.tensor(r, dtype=torch.float64)
    return x, tuple(ids[0])


def tagged(name: str, subset: int = 0, corpora_dir: Path | None = None) -> Tagged:
    """The corpus ``name`` ("oanc" or "wsj"), its first ``subset`` sentences (0: all), encoded."""
    path = (corpora_dir or CORPORA_DIR) / FILES[name]
    if not path.is_file():
        raise DataError(f"the tagged English corpora need Debian's python3-pattern package ({_INSTALL}): {path} not found")
    sentences = read_tagged(path, subset)
    x, words = encode_words([[w for w, _ in s] for s in sentences])
    tag_names = tuple(sorted({t for s in sentences for _, t in s}))
    index = {t: i for i, t in enumerate(tag_names)}
    tags = torch.full(x.shape[:2], -1, dtype=torch.long)
    for n, s in enumerate(sentences):
        tags[n, : len(s)] = torch.tensor([index[t] for _, t in s])
    tokens = sum(map(len, sentences))
    description = (f"{FILES[name]} (python3-pattern): {len(sentences):,} sentences, {tokens:,} tokens, "
                   f"{len(words):,} word types, {len(tag_names)} gold tags")
    return Tagged(x, tags, words, tag_names, description)


def _load(name: str, opts: DataOptions) -> Dataset:
    data = tagged(name, opts.subset)
    return Dataset(data.x, data.description, COLUMNS, labels=data.tags)


def load_oanc(opts: DataOptions, args, seed: int) -> Dataset:
    """The OANC sample of python3-pattern (19,999 sentences), gold Penn tags as labels."""
    return _load("oanc", opts)


def load_wsj(opts: DataOptions, args, seed: int) -> Dataset:
    """The WSJ sample of python3-pattern (1,000 sentences), gold Penn tags as labels."""
    return _load("wsj", opts)
