"""Benchmarks: one script per figure, each measuring its own ceiling in the same run."""
