"""Airflow quality gates: one ``quality_<stream>`` per stream in ``include/streams.yaml``.

Each validates its stream's tables with their Great Expectations suites within
seconds of a new Delta version (an asset watcher in the triggerer polls the
tables' logs; the stream DAG's announcements and a 30-minute fallback are second
paths) and publishes each table's validated version analysts read. Trigger one
with ``full=true`` (and optionally ``tables``) to validate whole tables. Adding a
stream adds its gate; no Python changes.
"""

from __future__ import annotations

from riverdelta.airflow.quality_dags import quality_dags

globals().update(quality_dags())
