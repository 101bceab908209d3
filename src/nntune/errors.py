"""User-facing errors: one clear line (what, where, what to do). The CLI prints it and exits 2."""

import difflib
from collections.abc import Iterable


class NNTuneError(Exception):
    """Base class of every error meant for the user rather than a traceback."""


class ConfigError(NNTuneError):
    """An invalid run config, search space or CLI value; the message names the key."""


class DataError(NNTuneError):
    """Unreadable or malformed input data; the message names the file, column or array."""


class SpecError(ConfigError):
    """A model spec that cannot be built (zero depth, image shrunk below one pixel, ...)."""


class ArtifactError(NNTuneError):
    """A missing or corrupt saved model, checkpoint or run directory."""


class TrainingError(NNTuneError):
    """Training that cannot go on (for example a non-finite loss on the first epoch)."""


class InputError(DataError, ValueError):
    """Unusable in-memory input to the scikit-learn estimators (shape, NaN/inf, too few samples per class); also a
    ValueError, as scikit-learn code expects."""


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``"; did you mean 'activation'?"`` for the closest of ``options`` to a mistyped ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
