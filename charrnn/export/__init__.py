"""Exporting a trained model for use outside charrnn: the ONNX and web writers."""
