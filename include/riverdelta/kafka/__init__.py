"""Kafka clients: one configuration for every client, and the reporting consumer group."""
