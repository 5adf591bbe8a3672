"""ONNX → ONNX optimizer: an ordered pipeline of verified rewrites (see `pipeline`)."""
