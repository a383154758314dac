"""Benchmark scripts: they print measured figures and assert nothing, so pytest does not collect
them (their names do not start with test_). Run one from the repository root:

    python3 -m tests.benchmarks.benchmark_training --help
"""
