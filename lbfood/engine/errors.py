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


class Diverged(RunError):
    """A training loss became NaN or infinite (the epoch's weights are not saved)."""


class StorageError(LbfoodError):
    """A file could not be written: no permission, a read-only file system, a full disk."""

    def __init__(self, message: str, path: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.path = path  # the file that could not be written
        self.reason = reason  # why, in a few words ("permission denied", "no space left on the device")


class DistributedError(LbfoodError):
    """A data-parallel run could not start or lost one of its processes."""

    exit_code = 3
