"""Benchmarks of sa_pgdispatch (not tests): ``python -m bench`` (see docs/benchmarks.md)."""
