"""netc's compiler: description language → IR → analysis, passes and ONNX."""
