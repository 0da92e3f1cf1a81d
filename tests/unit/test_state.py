"""The desired state never loses an update: every save is a compare-and-swap, and
``update_state`` re-applies a change that lost the race (real files, real processes)."""

from __future__ import annotations

import multiprocessing

import pytest

pytestmark = pytest.mark.unit


def test_a_stale_copy_cannot_bring_back_running_after_a_stop(lake_env):
    from riverdelta.ops import state as ops

    ops.update_state("s", lambda s: setattr(s, "desired", ops.RUNNING))
    reconciler = ops.load_state("s")  # read before the operator's stop...
    ops.update_state("s", lambda s: setattr(s, "desired", ops.STOPPED))
    reconciler.last_error = "driver dead"
    with pytest.raises(ops.StaleStateError, match="re-read it"):
        ops.save_state(reconciler)  # ...and saved after it: refused
    state = ops.load_state("s")
    assert (state.desired, state.last_error, state.revision) == (ops.STOPPED, None, 2)


def _append_many(worker: int, n: int) -> None:
    from riverdelta.ops import state as ops

    for i in range(n):
        ops.update_state("s", lambda s, i=i: s.restarts.append(worker * 1000 + i))


def test_concurrent_writers_in_many_processes_lose_nothing(lake_env):
    from riverdelta.ops import state as ops

    workers, each = 6, 30
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(w, each)) for w in range(workers)]
    for p in procs:
        p.start()
    # Meanwhile, in this process: an operator's stop and an announcement.
    ops.update_state("s", lambda s: setattr(s, "desired", ops.STOPPED))
    ops.update_state("s", lambda s: s.announced_versions.update(silver=7))
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    state = ops.load_state("s")
    expected = sorted(w * 1000 + i for w in range(workers) for i in range(each))
    assert sorted(state.restarts) == expected
    assert state.desired == ops.STOPPED and state.announced_versions == {"silver": 7}
    assert state.revision == workers * each + 2


def test_urls_with_passwords_are_masked_in_the_ops_history(lake_env):
    from riverdelta.ops import state as ops

    assert ops.mask_urls("s3a://AKIA:s3cr3t@bucket/lake and https://host/x") == (
        "s3a://AKIA:***@bucket/lake and https://host/x"
    )
    ops.record("s", "deploy", error="could not reach postgresql://airflow:hunter22@db:5432/airflow")
    [event] = ops.history("s", "deploy")
    assert event["detail"]["error"] == "could not reach postgresql://airflow:***@db:5432/airflow"
