"""IR → IR passes (one module each)."""
