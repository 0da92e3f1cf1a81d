"""Airflow stream DAGs: one ``stream_<name>`` per stream in ``include/streams.yaml``.

Each reconciles the stream's desired state every few minutes, checks lag and
batch age against the stream's thresholds and announces new Delta versions as
asset events. Adding a stream to the registry adds its DAG; no Python changes.
"""

from __future__ import annotations

from riverdelta.airflow.stream_dags import stream_dags

globals().update(stream_dags())
