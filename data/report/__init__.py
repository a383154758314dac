"""Figures and tables: labels, plotting, the figure scripts' shared options and logic."""
