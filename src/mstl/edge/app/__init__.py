"""A small web app that classifies an uploaded image with an exported model (LiteRT or ONNX Runtime).
Research prototype: not a diagnostic device."""
