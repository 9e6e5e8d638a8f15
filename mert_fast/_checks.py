"""Argument checks of the Python front end, the twin of ``csrc/checks.h``'s ``CHECK_*`` macros.

Every check raises with a message that names the argument and what was expected:
``"<name> must be <expected>; got <value>"`` (the value's ``repr``, or its type's name where the type is what is
wrong). ``bool`` is never taken for a number, although Python makes it an ``int``. Each check returns the value
unchanged, so it can wrap an assignment.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, TypeVar

__all__ = ["check_bool", "check_float", "check_int", "is_int", "is_number"]

T = TypeVar("T")


def is_int(value: Any, *, integral: bool = False) -> bool:
    """Whether ``value`` is an ``int`` (any ``numbers.Integral``, numpy integers included, when ``integral``),
    and not a ``bool``."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral if integral else int)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a real number (``int``, ``float``, numpy scalars...), and not a ``bool``."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def _fail(error: type[Exception], name: str, expected: str, value: Any, show_type: bool) -> Exception:
    got = type(value).__name__ if show_type else repr(value)
    return error(f"{name} must be {expected}; got {got}")


def _range_text(kind: str, min: Any, max: Any, exclusive_min: bool = False, exclusive_max: bool = False) -> str:
    article = "an" if kind[0] in "aeiou" else "a"
    if min is None and max is None:
        return f"{article} {kind}"
    if max is None:
        if min == 0 and exclusive_min:
            return f"a positive {kind}"
        return f"{article} {kind} {'>' if exclusive_min else '>='} {min}"
    if min is None:
        return f"{article} {kind} {'<' if exclusive_max else '<='} {max}"
    return f"{article} {kind} in {'(' if exclusive_min else '['}{min}, {max}{')' if exclusive_max else ']'}"


def check_int(
    name: str,
    value: T,
    *,
    min: int | None = None,  # noqa: A002  (the bounds read as in the message)
    max: int | None = None,  # noqa: A002
    expected: str | None = None,
    integral: bool = False,
    error: type[Exception] = ValueError,
    show_type: bool = False,
) -> T:
    """Check that ``value`` is an integer (not a bool) in ``[min, max]`` (either bound optional).

    Args:
        name: the argument's name, first in the message.
        expected: what the message says it must be; by default from the bounds (``"an integer >= 1"``,
            ``"an integer in [1, 8]"``).
        integral: accept any ``numbers.Integral`` (numpy integers), not only ``int``.
        error: the exception raised (``ValueError``; ``TypeError`` where only the type is checked).
        show_type: the message ends with the value's type name instead of its ``repr``.

    Returns:
        ``value``, unchanged.
    """
    if (
        not is_int(value, integral=integral)
        or (min is not None and value < min)  # type: ignore[operator]
        or (max is not None and value > max)  # type: ignore[operator]
    ):
        raise _fail(error, name, expected or _range_text("integer", min, max), value, show_type)
    return value


def check_float(
    name: str,
    value: T,
    *,
    min: float | None = None,  # noqa: A002  (the bounds read as in the message)
    max: float | None = None,  # noqa: A002
    exclusive_min: bool = False,
    exclusive_max: bool = False,
    finite: bool = False,
    expected: str | None = None,
    error: type[Exception] = ValueError,
    show_type: bool = False,
) -> T:
    """Check that ``value`` is a real number (``int`` or ``float``, not a bool, never NaN) within the bounds.

    Args:
        name: the argument's name, first in the message.
        min, max: bounds, inclusive unless ``exclusive_min`` / ``exclusive_max``; ``min=0, exclusive_min=True`` is
            "positive".
        finite: refuse infinities too.
        expected: what the message says it must be; by default from the bounds (``"a positive number"``,
            ``"a number >= 0"``, ``"a number in [0, 1)"``).
        error, show_type: as for :func:`check_int`.

    Returns:
        ``value``, unchanged.
    """
    ok = is_number(value) and not math.isnan(value)  # type: ignore[arg-type]
    if ok and finite:
        ok = math.isfinite(value)  # type: ignore[arg-type]
    if ok and min is not None:
        ok = value > min if exclusive_min else value >= min  # type: ignore[operator]
    if ok and max is not None:
        ok = value < max if exclusive_max else value <= max  # type: ignore[operator]
    if not ok:
        text = expected or _range_text("number", min, max, exclusive_min, exclusive_max)
        raise _fail(error, name, text, value, show_type)
    return value


def check_bool(name: str, value: T, *, expected: str = "True or False") -> T:
    """Check that ``value`` is a ``bool`` (not merely truthy); a TypeError names its type otherwise."""
    if not isinstance(value, bool):
        raise _fail(TypeError, name, expected, value, True)
    return value
