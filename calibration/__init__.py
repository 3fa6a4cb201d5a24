"""INT8 calibration and explicit Q/DQ quantization, plus FP16 conversion and per-layer sensitivity.

- ``fdkd.calibration.dataset``: choose the calibration set (stratified by class from the training
  split), save it as ``calib.npz`` keyed by the ONNX input name, and read it back through ONNX
  Runtime's ``CalibrationDataReader``.
- ``fdkd.calibration.quantize``: FP32 ONNX -> FP16 ONNX (FP32 I/O) and -> INT8 Q/DQ ONNX configured
  for TensorRT (signed INT8, symmetric activations and weights, per-channel weights).
- ``fdkd.calibration.sensitivity``: per-layer error of an INT8 graph against FP32.
"""
