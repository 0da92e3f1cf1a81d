"""Starting Spark: its configuration, spark-submit, launchers, driver processes and connector jars."""
