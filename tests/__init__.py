"""The unit tests; tests.benchmarks holds the benchmark scripts (python3 -m tests.benchmarks.NAME)."""
