"""PyTorch -> ONNX (-> INT8 / FP16 / TensorRT) exporter writing a Triton-layout model repository.

Pure builders live in their own modules (``models``, ``onnx_export``, ``parity``, ``quantize``,
``tensorrt``, ``repo_writer``); ``pipeline`` chains them and ``cli`` is the thin command line.
"""
