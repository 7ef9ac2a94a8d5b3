"""Server and model metadata, as both KServe v2 protocols answer it."""

from __future__ import annotations

import importlib.metadata
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from service.engine.catalog import ServedModel

SERVER_NAME = "imgserve"
#: the protocol extensions both front doors serve (Triton's names)
EXTENSIONS = ["classification", "binary_tensor_data", "model_repository"]


def server_version() -> str:
    try:
        return importlib.metadata.version(SERVER_NAME)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def datatype(data_type: int) -> str:
    """ModelConfig ``TYPE_FP32`` -> protocol ``FP32`` (``TYPE_STRING`` is ``BYTES``)."""
    name = mc.DataType.Name(data_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def io_metadata(model: ServedModel) -> tuple[dict[str, Any], dict[str, Any]]:
    """The model's input and output as ``{"name", "datatype", "shape"}``; always a -1 batch dimension:
    the service batches every model (max_batch_size 0 runs at batch 1)."""
    cfg = model.config
    inp, out = cfg.input[0], cfg.output[0]
    return (
        {"name": inp.name, "datatype": datatype(inp.data_type), "shape": [-1, *map(int, inp.dims)]},
        {"name": out.name, "datatype": datatype(out.data_type), "shape": [-1, *map(int, out.dims)]},
    )
