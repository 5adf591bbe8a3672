"""Generated — do not edit; regenerate with `make protos` (see README.md here)."""
