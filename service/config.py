"""The one settings class: every field is an env var (``IMGSERVE_<FIELD>``) and a CLI flag (``--field``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
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
        description="runtime: auto (the best available per model and device: TensorRT > ONNX Runtime > PyTorch on a "
        "GPU, OpenVINO > ONNX Runtime > PyTorch on a CPU) or a registered one (onnxruntime, openvino, tensorrt, "
        "pytorch)",
    )
    inference_precision: Literal["auto", "f32", "bf16", "f16"] = Field(
        "auto",
        description="inference precision of OpenVINO and PyTorch (auto: the model's config.pbtxt pin, else the "
        "runtime's default: OpenVINO's for this CPU, BF16 where the CPU has it; PyTorch FP16 on a GPU, FP32 on a CPU)",
    )
    accept_accuracy_loss: bool = Field(
        False, description="serve a reduced-precision model (INT8, FP16, BF16) that scores below the accuracy "
        "gate recorded at export when its check set is re-run here (default: such an INT8/FP16 version is "
        "refused, and an FP32 model that the runtime ran in BF16/FP16 is served in FP32 instead)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to run models")
    instances: int | None = Field(
        None, ge=1, description="runtime instances per model version behind its one batcher (default: "
        "config.pbtxt instance_group count, else 1); a GPU overlaps their batches on separate CUDA streams",
    )
    gpu_decode: Literal["auto", "on", "off"] = Field(
        "auto", description="decode JPEGs with nvJPEG and preprocess on the GPU (auto: when a CUDA runtime that "
        "takes device tensors serves the model; on: also with a CPU torch runtime, decoding with torchvision)",
    )
    processes: int = Field(
        1, ge=1, description="HTTP front-end processes sharing the port (SO_REUSEPORT); with 2 or more they feed "
        "one engine process that owns the models and batchers (docs/guides/process-model.md); 1: one process, no IPC",
    )
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="KServe v2 over gRPC (inference.GRPCInferenceService, grpc.health.v1) "
        "on this port, beside HTTP (Triton's 8001); 0 turns gRPC off",
    )
    ipc_shm_mb: int = Field(
        64, ge=1, description="with --processes >= 2: shared memory per front end (MiB) for images on their way "
        "to the engine; a request that does not fit right now travels over the engine socket instead",
    )
    ipc_payload: Literal["auto", "bytes", "pixels"] = Field(
        "auto", description="with --processes >= 2: what a front end sends the engine; pixels: it decodes and "
        "preprocesses itself (in parallel across front ends), bytes: the engine does (auto: bytes for a GPU "
        "decode pipeline, pixels otherwise)",
    )
    ipc_dir: str | None = Field(
        None, description="set by the --processes supervisor: the folder of the engine socket and the shared "
        "memory files (not a user setting)",
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, description="largest request body accepted (413 above)")
    max_image_pixels: int = Field(40_000_000, description="largest image (width*height) accepted (413 above)")
    max_images_per_request: int = Field(64, description="most images in one multipart request (413 above)")
    max_body_bytes_in_flight: int = Field(
        1024**3, gt=0, description="bytes of request bodies one process holds at once, all requests together; "
        "a body that would pass it is refused at once (503 + Retry-After), never buffered"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request head (request line and headers) must arrive within this many seconds "
        "of the connection opening or of the previous response (408, connection closed)"
    )
    body_timeout_s: float = Field(
        10.0, ge=0, description="grace before --body-min-rate applies to a request body"
    )
    body_min_rate: float = Field(
        32 * 1024, gt=0, description="bytes/s a request body must average after --body-timeout-s "
        "(408, connection closed)"
    )
    max_connections: int = Field(
        0, ge=0, description="open connections per process (0: the open-file limit, raised to its hard "
        "maximum at start, less max(128, 1/8) for everything else); over it: 503 and closed"
    )
    max_connections_per_client: int = Field(
        0, ge=0, description="open connections per client address (0: half of --max-connections); over it: "
        "503 and closed"
    )
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
    admin_api_key: SecretStr | None = Field(
        None, description="key for model load/unload (serving keys get 403 there; without any admin key, "
        "--api-key may administer)"
    )
    api_keys: SecretStr | None = Field(
        None, description="more keys, comma-separated 'name:key' or 'name:key:admin' (role serve by default)"
    )
    api_keys_file: Path | None = Field(
        None, description="keys file, one 'name:key[:serve|admin]' a line, '#' comments; re-read on SIGHUP "
        "and when it changes (checked at most once a second)"
    )
    rate_limit_rps: float = Field(
        0.0, ge=0, description="requests/s per API key (per client IP without keys), token bucket; "
        "429 + Retry-After above (0: off)"
    )
    rate_limit_burst: int | None = Field(
        None, ge=1, description="requests a key may send at once above the rate (default: the rate, at least 1)"
    )
    cors_origins: list[str] = Field(
        [], description="browser origins allowed to call the API (repeat the flag or comma-separate; env: a "
        "JSON list); default: none, no CORS headers"
    )
    docs_url: str | None = Field(
        None, description="address of the published documentation (e.g. https://example.org/imgserve): error "
        "answers link to <docs-url>/reference/errors/#<code>; default: the repository's page, "
        "docs/reference/errors.md#<code>"
    )
    log_format: Literal["json", "text"] = Field("text", description="log line format (json in containers)")
    log_level: str = Field("INFO", description="logging level")
    workers: int = Field(max(1, os.cpu_count() or 1), description="threads that decode and preprocess images")
    intra_op_threads: int = Field(0, description="compute threads per model (0: one per core)")
    warmup: bool = Field(True, description="run each --warmup-batch-sizes size once before reporting ready")
    warmup_batch_sizes: Literal["auto", "all", "one"] = Field(
        "auto", description="what warms before ready: all (every batch size 1..max_batch_size), one (batch size 1: "
        "the runtime's one-time first-run costs) or auto: all on a GPU (a shape's first run picks its kernels), one "
        "on a CPU (a size's first real batch is a little slower once, while warming every size costs max*(max+1)/2 "
        "images: over a minute for ResNet-50 on a slow 2-core CPU)",
    )
    compile_cache: str = Field(
        "auto", description="keep OpenVINO's compiled models here, so a restart (a crashed engine, a rolling "
        "restart, the next start) skips compiling: a folder, auto ($XDG_CACHE_HOME/imgserve/compiled, else "
        "~/.cache/imgserve/compiled) or off. Entries are keyed by model file, CPU and OpenVINO version, 2 GiB "
        "in all; a folder that is not writable only turns the cache off, with a warning",
    )
    cache_size: int = Field(0, description="result cache entries keyed by image hash (0: off)")
    admission_control: bool = Field(True, description="reject on arrival requests that cannot meet their deadline")
    graceful_timeout_s: float = Field(30.0, description="how long SIGTERM waits for in-flight requests")
    watchdog_s: float = Field(
        60.0, ge=0, description="a batch running longer than this fails its requests (503), and its runtime "
        "instance is retired and the model marked unhealthy until reloaded (0: off)"
    )
    fault_file: Path | None = Field(
        None, description="TESTING/DRILLS ONLY (off by default): inject runtime faults from this file's mode: "
        "ok, raise, hang, nan, shape or once:<mode> (service/runtimes/faults.py)"
    )
    shutdown_delay_s: float = Field(
        0.0, description="after SIGTERM, keep serving this long with readiness 503 (lets load balancers drain)"
    )

    def compile_cache_dir(self) -> Path | None:
        """``--compile-cache`` as a folder; None when off (or auto with no home folder to put it in)."""
        if self.compile_cache in ("off", ""):
            return None
        if self.compile_cache != "auto":
            return Path(self.compile_cache).expanduser()
        try:
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        except RuntimeError:  # no $HOME and no passwd entry
            return None
        return base / "imgserve" / "compiled"

    @field_validator("runtime")
    @classmethod
    def _registered_runtime(cls, v: str) -> str:
        from service.runtimes.registry import registered

        names = sorted(registered())
        if v != "auto" and v not in names:
            raise ValueError(f"unknown runtime {v!r}: use auto or one of {', '.join(names)}")
        return v


def parse_settings(argv: list[str]) -> Settings:
    """Settings from the command line (and IMGSERVE_* variables); exits 2 naming each bad flag."""
    try:
        return Settings(_cli_parse_args=argv)
    except ValidationError as e:
        for err in e.errors():
            where = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-")
            print(f"error: {where}: {err['msg']} (env IMGSERVE_{'_'.join(map(str, err['loc'])).upper()})",
                  file=sys.stderr)
        raise SystemExit(2) from None
