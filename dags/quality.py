"""Airflow quality DAGs: one ``quality_<table>`` per table of every stream in ``include/streams.yaml``.

Each validates its table with the table's Great Expectations suite when the
stream DAG announces a new Delta version (asset event), or every 30 minutes as
a fallback, and publishes the validated version analysts read. Trigger one with
``full=true`` to validate the whole table. Adding a stream adds its quality DAGs;
no Python changes.
"""

from __future__ import annotations

from riverdelta.quality_dags import quality_dags

globals().update(quality_dags())
