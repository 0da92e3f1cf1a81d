"""Configuration: the environment's settings and the stream registry (contracts)."""
