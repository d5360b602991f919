"""Benchmarks for ragqa (run with `python -m bench.<name>`)."""
