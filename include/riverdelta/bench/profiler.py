"""Where the time of ``batch.process_batch`` goes: every Spark action, by the step that made it."""

from __future__ import annotations

import linecache
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from riverdelta.bench.common import now

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class BatchProfiler:
    """Times every Spark action ``batch.process_batch`` makes, by the step that made it.

    Wraps the actions (count / collect / first, Delta writes, merges, table
    probes) and ``process_batch`` itself; an action is charged to the step of the
    batch (the function ``process_batch`` called, or its own line) and to the
    innermost frame of the batch's modules (``stream/batch.py``,
    ``stream/delta_sink.py``) that called it, with the Spark jobs it started (the
    streaming query's job group, read through the status tracker).
    """

    def __init__(self, spark: SparkSession) -> None:
        from riverdelta.stream import batch, delta_sink

        self.sc = spark.sparkContext
        self.batch = batch
        self.batch_files = {batch.__file__, delta_sink.__file__}
        self.sites: dict[str, dict[str, float]] = {}
        self.batches: list[dict[str, Any]] = []
        self._local = threading.local()
        self._restore: list[tuple[Any, str, Any]] = []

    def _jobs(self) -> set[int]:
        group = self.sc.getLocalProperty("spark.jobGroup.id")
        return set(self.sc.statusTracker().getJobIdsForGroup(group))

    def _site(self, action: str, args: tuple) -> str | None:
        """``<statement of the batch's step> [<function of the batch that ran it>.<action>]``."""
        frames = []
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename in self.batch_files:
                frames.append(frame)
            frame = frame.f_back
        if not frames:
            return None
        # The statement being run in the step process_batch called (or in process_batch
        # itself) says which step of the batch this is.
        top = next((i for i, f in enumerate(frames) if f.f_code.co_name == "process_batch"), None)
        outer = frames[-1] if top is None else frames[max(top - 1, 0)]
        inner = frames[0]
        text = linecache.getline(outer.f_code.co_filename, outer.f_lineno).strip()[:60]
        target = f" -> {Path(str(args[1])).name}" if action == "save" and len(args) > 1 else ""
        return (
            f"{outer.f_code.co_name}:{outer.f_lineno} {text} "
            f"[{inner.f_code.co_name}.{action}{target}]"
        )

    def _wrap_action(self, owner: Any, name: str) -> None:
        original = owner.__dict__[name]
        func = original.__func__ if isinstance(original, classmethod | staticmethod) else original
        profiler = self

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(profiler._local, "depth", 0)
            site = profiler._site(name, args) if depth == 0 else None
            if site is None:
                return func(*args, **kwargs)
            profiler._local.depth = depth + 1
            before, t = profiler._jobs(), now()
            try:
                return func(*args, **kwargs)
            finally:
                seconds, jobs = now() - t, len(profiler._jobs() - before)
                profiler._local.depth = depth
                entry = profiler.sites.setdefault(site, {"calls": 0, "seconds": 0.0, "jobs": 0})
                entry["calls"] += 1
                entry["seconds"] += seconds
                entry["jobs"] += jobs

        patched = classmethod(wrapper) if isinstance(original, classmethod) else wrapper
        patched = staticmethod(wrapper) if isinstance(original, staticmethod) else patched
        self._restore.append((owner, name, original))
        setattr(owner, name, patched)

    def __enter__(self) -> BatchProfiler:
        from delta.tables import DeltaMergeBuilder, DeltaTable
        from pyspark.sql import DataFrameWriter

        # The classic (non-Connect) implementation, the one a local session runs.
        from pyspark.sql.classic.dataframe import DataFrame

        for owner, name in (
            (DataFrame, "count"),
            (DataFrame, "collect"),
            (DataFrame, "first"),
            (DataFrameWriter, "save"),
            (DeltaMergeBuilder, "execute"),
            (DeltaTable, "isDeltaTable"),
        ):
            self._wrap_action(owner, name)
        original = self.batch.process_batch

        def process_batch(job: Any, raw_df: Any, batch_id: int) -> dict:
            before, t = self._jobs(), now()
            counts = original(job, raw_df, batch_id)
            self.batches.append(
                {
                    "mode": str(job.mode),
                    "batch_id": batch_id,
                    "records": counts.get("records_in", 0),
                    "seconds": round(now() - t, 3),
                    "jobs": len(self._jobs() - before),
                }
            )
            return counts

        # start_query's foreachBatch looks process_batch up in its module at call time.
        self._restore.append((self.batch, "process_batch", original))
        self.batch.process_batch = process_batch
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        self._restore.clear()

    def report(self) -> dict[str, Any]:
        batches = [b for b in self.batches if b["records"]]
        total = sum(b["seconds"] for b in batches)
        sites = sorted(self.sites.items(), key=lambda kv: -kv[1]["seconds"])
        return {
            "batches": self.batches,
            "process_batch_seconds": round(total, 3),
            "actions": [
                {
                    "site": site,
                    "calls": int(v["calls"]),
                    "seconds": round(v["seconds"], 3),
                    "share": round(v["seconds"] / total, 3) if total else None,
                    "jobs": int(v["jobs"]),
                }
                for site, v in sites
            ],
            "outside_actions_seconds": round(total - sum(v["seconds"] for _, v in sites), 3),
        }
