"""The one place where user-facing error messages are worded.

Every message names the key, the value received and what is allowed, e.g.
``decay_params.warmup_steps must be > 0, got 0``.
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import Any
from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration value that the plugin cannot use."""


def one_line(error: BaseException) -> str:
    """Returns the message of ``error`` on one line (an OSError's with its path)."""
    if isinstance(error, OSError) and error.filename is not None:
        message = f"{error.filename}: {error.strerror}"
    else:
        message = str(error)
    return " ".join(message.split())


def invalid(key: str, value: Any, allowed: str) -> ConfigError:
    """Returns the error for ``key`` set to ``value``, where ``allowed`` says what is accepted."""
    return ConfigError(f"{key} must be {allowed}, got {value!r}")


def unknown_name(key: str, value: str, valid: Iterable[str]) -> ConfigError:
    """Returns the error for a name that is not one of ``valid``, suggesting the closest."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(
        f"{key}: unknown value {value!r}{hint}; valid values are: {', '.join(valid)}"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integral(value: Any) -> bool:
    """An integer, or a float with an integral value (YAML reads ``1.0e+5`` as 100000.0)."""
    if isinstance(value, numbers.Integral):
        return not isinstance(value, bool)
    return _is_number(value) and math.isfinite(value) and float(value).is_integer()


def check_number(
    key: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    integer: bool = False,
) -> Any:
    """Checks that ``value`` is a number (an integer if ``integer``) within the bounds.

    With ``integer``, a float with an integral value is accepted (YAML reads ``1.0e+5`` as
    100000.0, and OpenNMT-tf accepts it), and 1.5 is refused.

    Returns:
      ``value`` unchanged, or as an ``int`` if ``integer``.

    Raises:
      ConfigError: naming ``key``, the value and the allowed range.
    """
    kind = "an integer" if integer else "a number"
    ok = _is_integral(value) if integer else _is_number(value)
    parts = []
    if minimum is not None:
        parts.append(f"{'>=' if min_inclusive else '>'} {minimum:g}")
    if maximum is not None:
        parts.append(f"{'<=' if max_inclusive else '<'} {maximum:g}")
    allowed = kind + (" " + " and ".join(parts) if parts else "")
    if not ok:
        raise invalid(key, value, allowed)
    if minimum is not None and (value < minimum or (not min_inclusive and value == minimum)):
        raise invalid(key, value, allowed)
    if maximum is not None and (value > maximum or (not max_inclusive and value == maximum)):
        raise invalid(key, value, allowed)
    return int(value) if integer else value
