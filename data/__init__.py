"""Datasets, run files (names and schema), and the readers the plotting scripts use."""
