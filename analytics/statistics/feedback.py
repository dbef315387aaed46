"""How a truth from feedback is compared with the prediction it is about."""

from __future__ import annotations

from typing import Any


def labels_match(label: Any, predicted: Any) -> bool:
    """Equal labels; a boolean only equals a boolean (JSON true is not the class 1)."""
    if isinstance(label, bool) or isinstance(predicted, bool):
        return isinstance(label, bool) and isinstance(predicted, bool) and label == predicted
    return label == predicted


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
