"""Sizes past which netc refuses an input: the same on the command line and the server."""

# One dimension of an input tensor (a height, a width, a channel count). onnx and torch
# keep sizes in signed 64-bit and numpy would take more, but no picture comes near this,
# so a larger size is a mistake to name, not a tensor to try to allocate.
MAX_DIM = 2**31 - 1
