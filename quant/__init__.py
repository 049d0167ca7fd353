"""quant: turn an FP32 ONNX model into smaller, faster variants and prove they still agree with it."""

__version__ = "0.1.0"
