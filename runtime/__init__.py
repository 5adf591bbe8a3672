"""netc's runtime: IR → PyTorch execution and training, onnxruntime sessions."""
