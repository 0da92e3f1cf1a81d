"""Airflow's side: DAG factories, the REST client, Airflow's environment and the UI page."""
