"""vizoo: latent-variable models in Pyro with mean-field and amortised guides, checked against exact EM and
exact enumeration.

The Python API (:mod:`vizoo.experiments.api`: ``fit``, ``load``, ``compare``) runs through the same runner as
the ``vizoo`` command line, and writes nothing unless asked (``out=``)::

    import vizoo
    result = vizoo.fit("gmm", x, guides=["mean_field", "amortised"], steps=500)

The package maps the repository's folders: ``vizoo.models`` (Pyro models, exact references, data),
``vizoo.guides`` (mean-field and amortised guides), ``vizoo.experiments`` (registry, training, comparison,
reports, the CLI).
"""

from .experiments.api import FitResult, compare, fit, load
from .experiments.registry import MODELS, resolve
from .models.errors import ConfigError, DataError

__all__ = ["MODELS", "ConfigError", "DataError", "FitResult", "compare", "fit", "load", "resolve"]
