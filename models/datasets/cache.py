"""The data cache shared by the loaders that build slowly (news counts, chorale rolls): one ``.npz`` file per
build, keyed by everything that shapes it, under ``$VIZOO_CACHE`` (else ``.cache/vizoo`` in the current
directory). Files are read without pickles and written atomically; a cache that cannot be written is a
warning, never an error."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np


def folder(cache_dir: Path | str | None = None) -> Path:
    """``cache_dir``, else ``$VIZOO_CACHE``, else ``.cache/vizoo``."""
    return Path(os.environ.get("VIZOO_CACHE", ".cache/vizoo")) if cache_dir is None else Path(cache_dir)


def load(path: Path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays of ``path``, or None when it is absent or was written for another key. A damaged file
    raises (anything from zipfile or numpy): the caller decides how loudly to rebuild."""
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as f:
        if str(f["key"]) != key:
            return None
        return {name: f[name] for name in f.files}


def save(path: Path, key: str, what: str, **arrays: np.ndarray) -> None:
    """Write ``arrays`` (and ``key``) to ``path``: a temporary file in the same folder, then ``os.replace``,
    so a reader never sees half a file; on failure the temporary file is removed and ``what`` is named
    in the warning."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.stem + ".", suffix=".tmp", delete=False) as f:
            tmp = Path(f.name)
            np.savez_compressed(f, key=np.array(key), **arrays)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        warnings.warn(f"could not write the {what} cache {path}: {err}", stacklevel=4)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
