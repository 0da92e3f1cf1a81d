"""Riverdelta: Kafka -> Spark Structured Streaming -> Delta, run by Airflow."""

from __future__ import annotations

__version__ = "0.1.0"
