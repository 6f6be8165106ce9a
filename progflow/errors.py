"""User-facing errors.

Every problem caused by the user's input (a missing dataset, a corrupt file, an invalid
config value, a checkpoint that is not ours) raises :class:`ProgflowError`. The command
line turns it into a one-line message on stderr and exit code 2, without a traceback.
"""


class ProgflowError(Exception):
    """A problem with the user's input; the message is shown as one line."""


class ConfigError(ProgflowError):
    """An invalid configuration value, found when the config is built."""


class DataError(ProgflowError):
    """A dataset that is missing, unreadable or corrupt."""


class CheckpointError(ProgflowError):
    """A checkpoint that is truncated, foreign, a pickle, or does not match the config."""


class TrainingDiverged(ProgflowError):
    """The loss became NaN or infinite; training stopped."""


class WriteError(ProgflowError):
    """An output that cannot be written: an unwritable path, a full disk, an I/O error."""


class RunLocked(ProgflowError):
    """Another process is writing into the run directory (it holds the run's lock)."""
