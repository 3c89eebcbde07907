"""Deployment formats for the models speechprune writes: ONNX (fp32 and int8) with verification and latency."""

from speechprune.deploy.onnx import ONNX_OPSETS, export_onnx, load_for_export

__all__ = ["ONNX_OPSETS", "export_onnx", "load_for_export"]
