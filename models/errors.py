"""Errors raised on bad input, before any work starts. Each message names the field and the value."""


class VizooError(ValueError):
    """Base class: the CLI prints ``str(err)`` on one line and exits with status 2."""


class DataError(VizooError):
    """A data matrix or data set that cannot be used (NaN, wrong rank, too few points, ...)."""


class ConfigError(VizooError):
    """A config file or ``--set`` override that is malformed, unknown or of the wrong type."""
