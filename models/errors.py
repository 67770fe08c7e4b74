"""Errors raised on bad input, before any work starts (each message names the field and the value), and the
error that stops a run whose result is impossible."""


class VizooError(ValueError):
    """Base class: the CLI prints ``str(err)`` on one line and exits with status 2."""


class DataError(VizooError):
    """A data matrix or data set that cannot be used (NaN, wrong rank, too few points, ...)."""


class ConfigError(VizooError):
    """A config file or ``--set`` override that is malformed, unknown or of the wrong type."""


class ImpossibleResult(RuntimeError):
    """A computed result that the mathematics rules out (an ELBO above the exact log p(x) beyond round-off, a NaN
    log-likelihood): a bug or an overflow, never a result. The run stops instead of reporting it; the CLI prints
    one line and exits with status 1, and metrics.json says "failed"."""
