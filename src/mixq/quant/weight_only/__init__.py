"""Weight-only quantization methods (RTN, GPTQ, AWQ) on a group-wise grid, and block-by-block calibration."""
