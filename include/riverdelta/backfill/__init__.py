"""Backfills: offset ranges, replays from Kafka and the hand-over to the live stream."""
