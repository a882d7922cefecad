"""One module per command; see hazardwatch.cli."""
