"""Bach's four-part chorales as binary piano rolls, built from the corpus bundled with music21.

For each chorale in ``music21/corpus/bach`` (MusicXML) that has Soprano, Alto, Tenor and Bass parts, the
score is sampled on a quarter-note grid: roll[t, p] = 1 when pitch p (MIDI number) sounds at beat t in any of
the four voices (a note sounds on the beats in [offset, offset + duration)). Columns are then cut to the
pitches in use anywhere in the loaded chorales, so every column has at least one 1. Files are read directly
(music21's corpus reader), never downloaded; music21 is not imported until a roll must be built.

The split is fixed: chorales sorted by file name, every fifth one (index % 5 == 4) is a test chorale.
The result is cached as ``chorales-<key>.npz`` under ``cache_dir`` (default ``$VIZOO_CACHE``, else
``.cache/vizoo``), keyed by the options and the versions of music21 and of this builder; a cache file that
cannot be read is rebuilt.

Rolls are returned padded: (N, T_max, D) float64 with NaN rows past each chorale's end (see
:func:`models.exact.fhmm.sequence_lengths`).

The loader has the one signature ``load_chorales(opts: DataOptions, args, seed: int) -> Dataset`` (the
factorial HMM's args, whose emission must be Bernoulli; ``seed`` unused); :func:`chorales` under it also
returns the chorale names and takes a ``cache_dir``.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from . import cache
from .base import DataOptions, Dataset

CHORALES_CACHE_VERSION = "chorales-1"
VOICES = ("soprano", "alto", "tenor", "bass")
_PIP = "pip install music21"


class Chorales(NamedTuple):
    """train, test: (N, T_max, D) float64 piano rolls, NaN past each chorale's end.
    pitches: (D,) the MIDI number of each column. names: (train names, test names). description: one line."""

    train: Tensor
    test: Tensor
    pitches: tuple[int, ...]
    names: tuple[tuple[str, ...], tuple[str, ...]]
    description: str


def _music21_version() -> str:
    try:
        return version("music21")
    except PackageNotFoundError:
        raise DataError(f"the Bach chorales need the music21 package, which is not installed ({_PIP})") from None


def chorale_files() -> list[Path]:
    """The MusicXML files of music21's Bach corpus, sorted by name."""
    _music21_version()
    spec = find_spec("music21")
    assert spec is not None and spec.origin is not None
    folder = Path(spec.origin).parent / "corpus" / "bach"
    return sorted(p for p in folder.iterdir() if p.suffix in (".mxl", ".xml"))


def roll_of(path: Path) -> np.ndarray | None:
    """(T, 128) uint8 quarter-note piano roll of one chorale, or None when it lacks one of the four voices."""
    from music21 import converter

    score = converter.parse(str(path))
    parts = {}
    for part in score.parts:
        name = (part.partName or "").strip().lower()
        for voice in VOICES:
            if name.startswith(voice) and voice not in parts:
                parts[voice] = part
    if len(parts) != len(VOICES):
        return None
    spans = []
    for part in parts.values():
        for n in part.flatten().notes:
            start, length = float(n.offset), float(n.quarterLength)
            if length <= 0:  # grace notes take no time on the grid
                continue
            for p in n.pitches:
                spans.append((math.ceil(start - 1e-9), math.ceil(start + length - 1e-9), int(p.midi)))
    if not spans:
        return None
    steps = max(end for _, end, _ in spans)
    roll = np.zeros((steps, 128), dtype=np.uint8)
    for a, b, p in spans:
        roll[a:b, p] = 1
    return roll


def chorales(subset: int = 0, cache_dir: Path | None = None) -> Chorales:
    """The chorales, split and padded (see the module docstring). ``subset`` > 0: only the first ``subset``
    training chorales and the first max(1, subset // 4) test ones (for tests; the pitches are those they use)."""
    key = hashlib.sha256(f"{CHORALES_CACHE_VERSION}|{_music21_version()}|{subset}".encode()).hexdigest()[:16]
    path = cache.folder(cache_dir) / f"chorales-{key}.npz"
    cached = _read_cache(path, key)
    if cached is None:
        cached = _build(subset)
        _write_cache(path, key, *cached)
    rolls, lengths, is_test, names = cached
    used = np.flatnonzero(rolls.any(0))
    rolls = rolls[:, used]
    pieces = np.split(rolls, np.cumsum(lengths)[:-1])
    train = [p for p, s in zip(pieces, is_test) if not s]
    test = [p for p, s in zip(pieces, is_test) if s]
    names_train = tuple(n for n, s in zip(names, is_test) if not s)
    names_test = tuple(n for n, s in zip(names, is_test) if s)
    description = (
        f"Bach chorales (music21 corpus; {len(train)} train, {len(test)} test; quarter-note grid, "
        f"{len(used)} pitches in use, MIDI {int(used.min())}-{int(used.max())}; lengths {int(lengths.min())}-{int(lengths.max())})"
    )
    return Chorales(pad(train), pad(test), tuple(int(u) for u in used), (names_train, names_test), description)


def load_chorales(opts: DataOptions, args: Any, seed: int = 0) -> Dataset:
    """Bach chorales as binary piano rolls with the fixed train/test split (the test chorales as ``x_test``);
    ``opts.subset`` as in :func:`chorales`. ``args.emission`` must be "bernoulli" (the rolls are binary)."""
    if args.emission != "bernoulli":
        raise DataError("data.name='chorales' is binary piano rolls: set model_args.emission = 'bernoulli'")
    c = chorales(subset=opts.subset)
    return Dataset(c.train, c.description, tuple(f"midi{p}" for p in c.pitches), x_test=c.test)


def pad(sequences: list[np.ndarray]) -> Tensor:
    """(N, T_max, D) float64 from N arrays of shape (T_n, D), NaN rows past each one's end."""
    t_max = max(s.shape[0] for s in sequences)
    out = torch.full((len(sequences), t_max, sequences[0].shape[1]), float("nan"), dtype=torch.float64)
    for i, s in enumerate(sequences):
        out[i, : s.shape[0]] = torch.as_tensor(s, dtype=torch.float64)
    return out


def _build(subset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    files = chorale_files()
    chosen = [(f, i % 5 == 4) for i, f in enumerate(files)]
    if subset:
        train = [c for c in chosen if not c[1]][:subset]
        test = [c for c in chosen if c[1]][: max(1, subset // 4)]
        chosen = sorted(train + test)
    rolls, lengths, is_test, names = [], [], [], []
    for f, test_flag in chosen:
        roll = roll_of(f)
        if roll is None:
            continue
        rolls.append(roll)
        lengths.append(roll.shape[0])
        is_test.append(test_flag)
        names.append(f.stem)
    if not rolls:
        raise DataError("no four-part chorale could be read from music21's Bach corpus")
    return np.concatenate(rolls), np.asarray(lengths), np.asarray(is_test), names


def _read_cache(path: Path, key: str):
    try:
        z = cache.load(path, key)
        if z is None:
            return None
        rolls, lengths, is_test, names = z["rolls"], z["lengths"], z["is_test"], [str(n) for n in z["names"]]
    except Exception as err:  # noqa: BLE001 (a truncated or foreign file raises anything from zipfile/numpy)
        warnings.warn(f"ignoring an unreadable chorale cache {path}: {err}", stacklevel=3)
        return None
    if rolls.shape[0] != lengths.sum() or len(names) != len(lengths) or len(is_test) != len(lengths):
        return None
    return rolls, lengths, is_test, names


def _write_cache(path: Path, key: str, rolls, lengths, is_test, names) -> None:
    cache.save(path, key, "chorale", rolls=rolls, lengths=lengths, is_test=is_test, names=np.asarray(names))
