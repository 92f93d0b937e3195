"""Benchmarks for pgod: run with ``python -m benchmarks.ingest`` from the repository root."""
