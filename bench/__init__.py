"""Benchmarks: `make bench` runs them all; each prints figures and writes bench/results/*.json."""
