"""The stream-control interface a backfill hand-over uses: pause, move, resume.

Each save is a compare-and-swap of one field group, so an operator's stop during
the hand-over survives it; the pause is always lifted (real state files)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_pause_holds_reconcile_off_and_always_lets_go(lake_env):
    from riverdelta.ops import control
    from riverdelta.ops import state as ops

    with control.pause("s", by="run-1") as paused:
        assert ops.load_state("s").paused_by == "run-1"
        assert paused.was_running is False  # no driver was recorded
    assert ops.load_state("s").paused_by is None
    with pytest.raises(RuntimeError), control.pause("s", by="run-2"):
        raise RuntimeError("hand-over failed")
    assert ops.load_state("s").paused_by is None


def test_an_operators_stop_during_the_hand_over_is_kept(lake_env, monkeypatch):
    from riverdelta.ops import control
    from riverdelta.ops import state as ops
    from riverdelta.storage.lake import stream_location

    ops.update_state("s", lambda s: setattr(s, "desired", ops.RUNNING))
    ops.update_state("s", lambda s: setattr(s, "announced_versions", {"bronze": 3}))
    monkeypatch.setattr(control, "_launch", lambda stream: {"launcher": "local", "pid": 1})
    with control.pause("s", by="run-1"):
        assert control.move("s", "/new/tables", "/new/cp", by="run-1") is True
        assert control.resume("s") == {"launcher": "local", "pid": 1}
        ops.update_state("s", lambda s: setattr(s, "desired", ops.STOPPED))  # the operator
        assert control.move("s", "/new/tables", "/new/cp", by="run-1") is False
    state = ops.load_state("s")
    assert (state.desired, state.paused_by, state.announced_versions) == (ops.STOPPED, None, {})
    assert state.deployment == {"launcher": "local", "pid": 1}
    assert stream_location("s")["tables_root"] == "/new/tables"
