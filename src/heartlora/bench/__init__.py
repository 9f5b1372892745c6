"""Sweeps, aggregation and reports over run records."""
