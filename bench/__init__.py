"""Benchmarks: `python -m bench [NAME ...]` (or `make bench`) prints one table per benchmark."""
