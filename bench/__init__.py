"""Benchmarks for procmond: run with ``python -m bench.<name>``."""
