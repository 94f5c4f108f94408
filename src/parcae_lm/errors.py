"""One exception type per domain. Messages name the file, key or value at fault and what was expected.

The CLI prints these without a traceback; anything else is a bug and keeps its traceback.
"""


class ParcaeError(Exception):
    """Base class for errors caused by user input (configs, files, arguments)."""


class ConfigError(ParcaeError, ValueError):
    """An invalid model or run configuration."""


class CheckpointError(ParcaeError):
    """A checkpoint that cannot be loaded faithfully (missing/unexpected keys, shapes, formats)."""


class DataError(ParcaeError):
    """Bad corpus, shard or dataset input."""


class DownloadError(ParcaeError):
    """A file that cannot be fetched as asked (network, HTTP status, checksum, truncation, offline mode)."""


class TokenizerError(ParcaeError):
    """A tokenizer that cannot be trained, saved or loaded as asked."""


class EvalError(ParcaeError):
    """Bad evaluation data or settings."""


class StorageError(ParcaeError, OSError):
    """A path that cannot be written as asked (not a directory, read-only, disk full) or that another
    process holds."""


class TrainingError(ParcaeError):
    """Training cannot continue (non-finite loss, incompatible resume, ...)."""
