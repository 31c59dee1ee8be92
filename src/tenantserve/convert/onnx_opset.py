"""The opsets converted graphs target: what onnxmltools supports and ONNX Runtime runs."""

# onnxmltools 1.16 converts up to opset 15 (it refuses higher); skl2onnx goes along.
ML_OPSET = 15
