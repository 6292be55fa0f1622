"""ONNX graph handling: loading and saving, preparation, the quantization plan and the
Q/DQ rewrite. Nothing here runs onnxruntime."""
