"""The Triton model-repository format, shared by ``export`` (which writes it) and ``service`` (which serves it).

Nothing here imports a runtime, torch or HTTP: ``config`` reads and writes ``config.pbtxt`` through
Triton's own protobuf schema, ``preprocess`` is the image-preprocessing spec kept in its parameters,
``layout`` finds models and versions on disk, ``engine_cache`` names and builds managed TensorRT plans
and ``tensorrt_build`` is the one TensorRT build both the exporter and the service call. Errors are
``modelrepo.errors`` (no HTTP status: the service maps them in its one error renderer).
"""
