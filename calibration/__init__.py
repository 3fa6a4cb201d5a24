"""INT8 calibration and explicit Q/DQ quantization (the compress-and-prove issue); nothing here yet."""
