"""edgekit benchmarks (`make bench`, `python -m bench`): heap, backlog drain, connect time,
deploy and code size, each figure beside a baseline measured in the same run.

Nothing here is a pytest test; tests/test_bench.py runs `python -m bench --quick` so the
benchmark code cannot rot.
"""
