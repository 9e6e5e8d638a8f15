"""Argument checks (mert_fast._checks): what passes, what fails, and the message naming the argument."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mert_fast._checks import check_bool, check_float, check_int, is_int, is_number


def test_is_int_and_is_number_refuse_bool():
    assert is_int(3) and not is_int(True) and not is_int(3.0) and not is_int(np.int64(3))
    assert is_int(np.int64(3), integral=True) and not is_int(np.bool_(True), integral=True)
    assert is_number(3) and is_number(2.5) and is_number(np.float32(1)) and not is_number(False)
    assert not is_number("1") and not is_number(None)


def _assert_accepts_and_refuses(check, name, kwargs, good, bad, message):
    """``check`` returns each ``good`` value itself and refuses each ``bad`` one with a ValueError matching
    ``message``."""
    for value in good:
        assert check(name, value, **kwargs) is value
    for value in bad:
        with pytest.raises(ValueError, match=message):
            check(name, value, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "good", "bad", "message"),
    [
        (dict(), [0, -5, 2**70], [1.0, True, "1", None], "n must be an integer; got "),
        (dict(min=1), [1, 7], [0, -1, 2.0, False], "n must be an integer >= 1; got "),
        (dict(min=1, max=8), [1, 8], [0, 9], r"n must be an integer in \[1, 8\]; got "),
        (dict(max=3), [3, -1], [4], "n must be an integer <= 3; got "),
        (dict(min=1, expected="a positive integer"), [5], [0], "n must be a positive integer; got 0"),
    ],
)
def test_check_int(kwargs, good, bad, message):
    _assert_accepts_and_refuses(check_int, "n", kwargs, good, bad, message)


def test_check_int_type_errors_name_the_type():
    with pytest.raises(TypeError, match="^seed must be an int or None; got float$"):
        check_int("seed", 1.5, expected="an int or None", error=TypeError, show_type=True)
    with pytest.raises(TypeError, match=r"^k must be an integer; got '3'$"):
        check_int("k", "3", error=TypeError)
    assert check_int("seed", np.int32(4), integral=True) == 4


@pytest.mark.parametrize(
    ("kwargs", "good", "bad", "message"),
    [
        (dict(), [0, -1.5, math.inf], [math.nan, True, "x", None], "x must be a number; got "),
        (dict(min=0, exclusive_min=True), [1e-9, 3], [0, -1.0, math.nan], "x must be a positive number; got "),
        (dict(min=0), [0, 0.0, 2], [-1e-9], "x must be a number >= 0; got "),
        (dict(min=0, max=1, exclusive_max=True), [0, 0.5], [1, 1.0, -0.1], r"x must be a number in \[0, 1\); got "),
        (dict(min=0, exclusive_min=True, finite=True), [1.0], [math.inf, 0.0], "x must be a positive number; got "),
    ],
)
def test_check_float(kwargs, good, bad, message):
    _assert_accepts_and_refuses(check_float, "x", kwargs, good, bad, message)


def test_check_float_custom_message():
    with pytest.raises(ValueError, match=r"^seconds must be a positive duration; got -1\.0$"):
        check_float("seconds", -1.0, min=0, exclusive_min=True, expected="a positive duration")


def test_check_bool():
    assert check_bool("flag", False) is False
    for value in (0, 1, "yes", None):
        with pytest.raises(TypeError, match="^flag must be True or False; got "):
            check_bool("flag", value)
