"""Compression: FP32 / FP16 / INT8 artifacts, speed and accuracy per batch; ONNX Runtime op profiles."""
