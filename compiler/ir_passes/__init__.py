"""IR → IR passes over netc's own graph (one module each); the ONNX → ONNX passes are
in compiler/optimizer/passes/."""
