"""Errors the engine raises. Each message tells the user what to do; the CLI prints it on one line."""


class LbfoodError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 2


class ConfigError(LbfoodError):
    """A flag or hyper-parameter value is invalid."""


class DataError(LbfoodError):
    """A dataset is missing, has the wrong layout, or cannot be decoded."""


class RunError(LbfoodError):
    """A run folder is missing, not a run, or from an incompatible version."""


class DistributedError(LbfoodError):
    """A data-parallel run could not start or lost one of its processes."""

    exit_code = 3
