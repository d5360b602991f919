"""Benchmarks for ragqa (run with `python -m bench.<name>`); what they share is in bench/harness.py."""
