"""Benchmarks against peers (``multibox bench ...``), each writing JSON."""
