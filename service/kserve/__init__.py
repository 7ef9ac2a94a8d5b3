"""KServe v2 (the Open Inference Protocol), the same for HTTP and gRPC: what the server says of itself
and of a model (``metadata``), and how tensors and the classification extension are read and written
(``codec``). ``service.http.routes.v2`` and ``service.grpc_api`` only move these between their wire
formats and this package."""
