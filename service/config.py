"""The one settings class: every field is an env var (``IMGSERVE_<FIELD>``) and a CLI flag (``--field``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="IMGSERVE_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_prog_name="python -m service",
        protected_namespaces=(),
    )

    model_repo: Path = Field(Path("model_repo"), description="Triton-layout model repository to serve")
    models: list[str] | None = Field(None, description="serve only these models (default: all in the repo)")
    default_model: str | None = Field(None, description="model for requests that name none (default: first)")
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, description="HTTP port")
    runtime: str = Field(
        "auto",
        description="runtime: auto (the best available per model and device: TensorRT > ONNX Runtime on a GPU, "
        "OpenVINO > ONNX Runtime on a CPU) or a registered one (onnxruntime, openvino, tensorrt)",
    )
    inference_precision: Literal["auto", "f32", "bf16", "f16"] = Field(
        "auto",
        description="OpenVINO inference precision (auto: the model's config.pbtxt pin, else OpenVINO's default "
        "for this CPU, BF16 where the CPU has it)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to run models")
    max_upload_bytes: int = Field(20 * 1024 * 1024, description="largest request body accepted (413 above)")
    max_image_pixels: int = Field(40_000_000, description="largest image (width*height) accepted (413 above)")
    max_images_per_request: int = Field(64, description="most images in one multipart request (413 above)")
    max_queue_size: int | None = Field(
        None, description="per-model queue bound in images (default: config.pbtxt, else 256)"
    )
    max_batch_size: int | None = Field(None, description="override config.pbtxt max_batch_size")
    max_queue_delay_ms: float | None = Field(None, description="override config.pbtxt max_queue_delay_microseconds")
    dispatch_when_idle: bool | None = Field(
        None,
        description="close a batch at once when the runtime is idle instead of waiting max_queue_delay "
        "(default: on for CPU runtimes, where a batch costs the same per image as single runs)",
    )
    request_timeout_s: float | None = Field(
        None, description="default request deadline (default: config.pbtxt queue policy, else 30 s)"
    )
    api_key: SecretStr | None = Field(
        None, description="when set, requests need 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
    )
    log_format: Literal["json", "text"] = Field("text", description="log line format (json in containers)")
    log_level: str = Field("INFO", description="logging level")
    workers: int = Field(max(1, os.cpu_count() or 1), description="threads that decode and preprocess images")
    intra_op_threads: int = Field(0, description="compute threads per model (0: one per core)")
    warmup: bool = Field(True, description="run every batch size once before reporting ready")
    cache_size: int = Field(0, description="result cache entries keyed by image hash (0: off)")
    admission_control: bool = Field(True, description="reject on arrival requests that cannot meet their deadline")
    graceful_timeout_s: float = Field(30.0, description="how long SIGTERM waits for in-flight requests")
    shutdown_delay_s: float = Field(
        0.0, description="after SIGTERM, keep serving this long with readiness 503 (lets load balancers drain)"
    )

    @field_validator("runtime")
    @classmethod
    def _registered_runtime(cls, v: str) -> str:
        from service.runtimes.registry import registered

        names = sorted(registered())
        if v != "auto" and v not in names:
            raise ValueError(f"unknown runtime {v!r}: use auto or one of {', '.join(names)}")
        return v
