"""KServe v2 over gRPC (``inference.GRPCInferenceService``, Triton's messages as ``tritonclient`` ships
them) and ``grpc.health.v1``, served by every front end on ``--grpc-port`` in the HTTP server's event
loop, with the HTTP side's engine, access control, limits, result cache and metrics."""
