"""Benchmarks: request traces, an HTTP load generator, a raw floor server and reports."""
