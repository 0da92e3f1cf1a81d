"""The embedded stack the demo and tests start: broker, Airflow, Spark cluster, generator, demo. Product code never imports it."""
