"""Measurements: `make bench`, `make bench-cluster`, the freshness bench and `make soak`. Product code never imports it."""
