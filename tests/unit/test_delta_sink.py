"""Concurrent Delta commits are retried with a jittered back-off; other errors are not."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit

CONFLICT = "io.delta.exceptions.ConcurrentAppendException: files were added by a concurrent update"


def test_a_conflict_is_retried_with_back_off_and_anything_else_raised(slept):
    from riverdelta.stream.delta_sink import retry_conflicts

    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError(CONFLICT)
        return "committed"

    assert retry_conflicts(flaky, "append") == "committed"
    assert len(calls) == 3 and len(slept) == 2
    assert 0.25 <= slept[0] < 0.75 and 0.5 <= slept[1] < 1.5  # 0.5 s doubling, jittered

    def broken() -> None:
        calls.append(1)
        raise ValueError("not a conflict")

    calls.clear()
    with pytest.raises(ValueError, match="not a conflict"):
        retry_conflicts(broken, "append")
    assert len(calls) == 1

    def always() -> None:
        raise RuntimeError(CONFLICT)

    with pytest.raises(RuntimeError, match="ConcurrentAppendException"):
        retry_conflicts(always, "append", attempts=3)
