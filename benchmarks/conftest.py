"""Benchmarks run with ``python -m pytest benchmarks --benchmark-only``."""
