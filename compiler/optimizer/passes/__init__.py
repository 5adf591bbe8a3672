"""One module per ONNX optimizer pass (ONNX → ONNX); the passes over netc's IR are in
compiler/ir_passes/."""
