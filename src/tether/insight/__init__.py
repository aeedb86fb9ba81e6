"""Insight into data and runs: tether inspect (and, later, sweeps and drift)."""
