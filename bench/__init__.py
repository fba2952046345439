"""Benchmarks: one command each (see bench/README.md). Not part of the installed package."""
