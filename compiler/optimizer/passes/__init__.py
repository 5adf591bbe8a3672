"""One module per optimizer pass."""
