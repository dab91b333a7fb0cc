"""One exception family, so the CLI can turn any bad input into one clear line and a non-zero exit."""


class ItrbenchError(Exception):
    """Base class: the message is the whole user-facing line (it names the file or key and what was expected)."""


class DataError(ItrbenchError):
    """A data file is missing, truncated, mis-shaped or holds bad values."""


class ConfigError(ItrbenchError):
    """A config key is unknown, mistyped or out of range."""


class TrainingError(ItrbenchError):
    """Training diverged (non-finite loss or weights); nothing non-finite is ever saved."""
