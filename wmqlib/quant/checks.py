"""Validation helpers: each raises a clear error that names the field and the allowed values."""

from __future__ import annotations


def check_float(value: object, field: str, low: float, high: float, low_open: bool = False) -> None:
    """Raise ``ValueError`` naming ``field`` unless ``value`` is a real number in ``[low, high]`` (``(low, high]``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{field} must be a number in {bracket}{low}, {high}], got {value!r}")


def check_bool(value: object, field: str) -> None:
    """Raise ``TypeError`` naming ``field`` unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise TypeError(f"{field} must be True or False, got {value!r}")


def check_int(value: object, field: str, minimum: int) -> None:
    """Raise ``ValueError`` naming ``field`` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{field} must be an int >= {minimum}, got {value!r}")
