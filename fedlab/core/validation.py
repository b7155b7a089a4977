"""Checks of single values, shared by every layer: one line naming the field and what is allowed.

Nothing here imports TensorFlow or another fedlab module. NumPy scalars are
accepted where Python numbers are (``np.int64(3)`` is an integer), and NaN and
infinity are refused wherever a number is asked for unless a bound says
otherwise. fedlab's warnings (:class:`FedlabWarning`) are one line too.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Iterable, Optional


class ConfigError(ValueError):
    """A value outside what is allowed; ``field`` names the config field (or parameter).

    The command line turns ``field`` into its option name, so the message reads
    ``--alpha: must be > 0, got -1.0``.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):  # pickled as (field, message): a sweep's worker process raises it in the sweep's
        return type(self), (self.field, self.message)


class FedlabWarning(UserWarning):
    """fedlab's warnings, printed as one line: where, the category and the message, without the source line
    Python's default format echoes under it (which would be fedlab's or TFF's code, not the user's)."""


class SettingWarning(FedlabWarning):
    """An allowed setting that cannot do what it is for (a run that would learn nothing); ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self):
        return type(self), (self.field, self.message)


_format_warning = warnings.formatwarning


def _format_one_line(message, category, filename, lineno, line=None) -> str:
    if isinstance(category, type) and issubclass(category, FedlabWarning):
        return f"{filename}:{lineno}: {category.__name__}: {message}\n"
    return _format_warning(message, category, filename, lineno, line)


def one_line_warnings() -> None:
    """Prints fedlab's warnings as one line (Python's documented ``warnings.formatwarning`` hook; other categories
    keep their format). Installed by ``fl.setup()`` and the command line, not on import: a library should not
    change the process's warning format for merely being imported."""
    warnings.formatwarning = _format_one_line


def is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(field: str, value: Any, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """``value`` as a Python int in [low, high]; a float with an integral value is not an integer."""
    allowed = _interval_text(low, high, integer=True)
    if not is_integer(value):
        raise ConfigError(field, f"must be an integer{allowed}, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(field, f"must be an integer{allowed}, got {value}")
    return value


def number(field: str, value: Any, low: Optional[float] = None, high: Optional[float] = None, *,
           low_open: bool = False, high_open: bool = False, allow_inf: bool = False) -> float:
    """``value`` as a finite Python float in the interval; ``*_open`` excludes that end."""
    allowed = _interval_text(low, high, low_open=low_open, high_open=high_open)
    if not is_number(value):
        raise ConfigError(field, f"must be a number{allowed}, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ConfigError(field, f"must be a finite number{allowed}, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ConfigError(field, f"must be{allowed}, got {_short(value)}")
    return value


def positive(field: str, value: Any, high: Optional[float] = None) -> float:
    return number(field, value, 0.0, high, low_open=True)


def boolean(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if type(value).__name__ == "bool_":  # numpy.bool_
        return bool(value)
    raise ConfigError(field, f"must be true or false, got {value!r}")


def one_of(field: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(field, f"must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _short(value: float) -> str:
    return f"{value:g}" if value == value and abs(value) < 1e16 else repr(value)


def _interval_text(low, high, *, integer: bool = False, low_open: bool = False, high_open: bool = False) -> str:
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {_short(low) if not integer else low}"
    if low is None:
        return f" {'<' if high_open else '<='} {_short(high) if not integer else high}"
    if integer:
        return f" >= {low} and <= {high}"
    return f" in {'(' if low_open else '['}{_short(low)}, {_short(high)}{')' if high_open else ']'}"
