"""Benchmarks run by launch/benchmark.py, one module per mode."""
