# Benchmarks (bench/run.py): a private redis-server, the simulator and real Celery workers, all on loopback.
PYTHON ?= .venv/bin/python

.PHONY: bench bench-smoke

bench:
	$(PYTHON) -m bench.run --sizes 1000,10000,100000

bench-smoke:
	$(PYTHON) -m bench.run --smoke
