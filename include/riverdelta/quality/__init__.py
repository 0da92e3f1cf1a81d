"""The quality gate: suites, the engine rows run on, validation and publication, readers of validated data."""
