"""Differential tests: the simulated kernel against the real one, scenario by scenario."""
