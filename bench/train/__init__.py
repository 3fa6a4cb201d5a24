"""Training cost: epoch time per stage, NCHW against NHWC, the NHWC defect sweep."""
