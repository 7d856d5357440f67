"""Benchmarks of endpoint-janitor against its own simulator: ``python -m bench.run`` (``make bench``)."""
