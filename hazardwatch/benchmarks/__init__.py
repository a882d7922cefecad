"""Benchmarks that need the whole service."""
