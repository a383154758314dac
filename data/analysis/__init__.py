"""Statistics and break-even analysis."""
