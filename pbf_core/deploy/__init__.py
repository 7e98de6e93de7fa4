"""Deploy: a trained checkpoint → ONNX files that run anywhere, and running them on layers.

``export`` (fp32 ONNX, checked against PyTorch), ``metadata`` (the spec inside the ONNX file),
``quantization`` (static int8), ``parity`` (the gate every variant passes), ``runtimes`` (ONNX
Runtime and OpenVINO sessions), ``inputs`` (raw layer → network input), ``tiling`` (native
resolution by stitched tiles), ``inference`` (the :class:`Segmenter`), ``overlays`` (components
and overlay images).
"""
