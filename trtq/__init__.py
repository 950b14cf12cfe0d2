"""trtq — an INT8 deployment pipeline for NVIDIA TensorRT and ONNX Runtime."""

__version__ = "0.1.0"
