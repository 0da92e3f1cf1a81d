"""A bounded explanation for a failed `==` between large values.

pytest's own explanation pretty-prints both sides whole and runs difflib over them, and
with CI set it never truncates. For two collections of thousands of items that outlasted
the test's 900 s timeout: the timeout's thread dump then ended the whole run without
naming the test. Above LIMIT items (or TEXT_LIMIT characters) this says what differs
in a few lines instead; smaller values keep pytest's explanation.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence, Set

LIMIT = 200
TEXT_LIMIT = 10_000
SHOWN = 10


def explain_eq(left: object, right: object) -> list[str] | None:
    if isinstance(left, (str, bytes)) and isinstance(right, type(left)):
        return _text(left, right) if max(len(left), len(right)) > TEXT_LIMIT else None
    if not (_collection(left) and _collection(right)):
        return None
    if max(len(left), len(right)) <= LIMIT:  # type: ignore[arg-type]
        return None
    head = f"{_size(left)} == {_size(right)} (bounded explanation: tests/compare.py)"
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return [head, *_mappings(left, right)]
    return [head, *_items(left, right)]  # type: ignore[arg-type]


def _collection(value: object) -> bool:
    return isinstance(value, (Sequence, Set, Mapping)) and not isinstance(value, (str, bytes))


def _size(value: object) -> str:
    return f"{type(value).__name__} of {len(value)}"  # type: ignore[arg-type]


def _first(values: object) -> str:
    items = list(values)  # type: ignore[call-overload]
    with contextlib.suppress(TypeError):
        items.sort()
    more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return f"{items[:SHOWN]!r}{more}"


def _mappings(left: Mapping, right: Mapping) -> list[str]:
    lines = []
    if missing := right.keys() - left.keys():
        lines.append(f"keys missing on the left: {_first(missing)}")
    if extra := left.keys() - right.keys():
        lines.append(f"keys extra on the left: {_first(extra)}")
    differ = [k for k in left.keys() & right.keys() if left[k] != right[k]]
    if differ:
        k = differ[0]
        lines.append(f"{len(differ)} keys differ; first {k!r}: {left[k]!r} != {right[k]!r}")
    return lines


def _items(left: Sequence | Set, right: Sequence | Set) -> list[str]:
    lines = []
    try:
        have, want = Counter(left), Counter(right)
    except TypeError:  # unhashable items: say where the sequences part
        have = want = Counter()
    if missing := want - have:
        lines.append(f"missing on the left: {_first(missing.elements())}")
    if extra := have - want:
        lines.append(f"extra on the left: {_first(extra.elements())}")
    if isinstance(left, Sequence) and isinstance(right, Sequence):
        at = next((i for i, (a, b) in enumerate(zip(left, right, strict=False)) if a != b), None)
        if at is not None:
            lines.append(f"first difference at index {at}: {left[at]!r} != {right[at]!r}")
        elif len(left) != len(right):
            lines.append(f"equal for the first {min(len(left), len(right))} items")
    return lines


def _text(left: str | bytes, right: str | bytes) -> list[str]:
    at = next(
        (i for i, (a, b) in enumerate(zip(left, right, strict=False)) if a != b),
        min(len(left), len(right)),
    )
    return [
        f"{type(left).__name__} of {len(left)} == {len(right)} (bounded explanation: tests/compare.py)",
        f"first difference at {at}: {left[at : at + 80]!r} != {right[at : at + 80]!r}",
    ]
