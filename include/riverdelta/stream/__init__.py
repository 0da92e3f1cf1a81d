"""The streaming query: Kafka source, transforms, the per-batch Delta writes, gold and the Kafka sink."""
