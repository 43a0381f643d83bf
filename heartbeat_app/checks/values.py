"""The shapes a setting may take, as predicates shared by the checks."""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_number(value: Any) -> bool:
    """A real, finite number; booleans are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(value)


def is_seconds(value: Any, *, allow_none: bool, allow_zero: bool = False) -> bool:
    """A positive (or, with ``allow_zero``, non-negative) finite number, or None if allowed."""
    if value is None:
        return allow_none
    if not is_number(value):
        return False
    return value >= 0 if allow_zero else value > 0


def is_count(value: Any, *, allow_none: bool, minimum: int = 1) -> bool:
    """An integer of at least ``minimum``, or None if allowed; booleans are refused."""
    if value is None:
        return allow_none
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
