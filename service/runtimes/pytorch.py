"""TorchScript models (platform ``pytorch_libtorch``, ``model.pt``) on the CPU or a CUDA GPU.

On a GPU the model runs channels_last in FP16 (BF16 or FP32 when pinned), and each warm batch
size up to ``max_batch_size`` is captured once as a CUDA graph on the instance's own stream: a
batch then costs one graph launch instead of a few hundred kernel launches from Python, padded up
to the next captured size (``graph_sizes``). ``pytorch.cuda_graphs=false`` in config.pbtxt runs
plain eager instead (the GPU check measures both). ``infer_tensor`` takes a device tensor, so a
batch decoded on the GPU (``service.engine.gpu_decode``) reaches the model without a host round trip.

On the CPU it runs FP32 (BF16 when pinned), frozen (conv+batch-norm folded).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelrepo.errors import RepositoryError
from service.runtimes.base import DeviceKind, LoadSpec

logger = logging.getLogger(__name__)

#: --inference-precision / ``pytorch.precision`` values -> torch dtype names
_DTYPES = {"f32": "float32", "fp32": "float32", "bf16": "bfloat16", "f16": "float16", "fp16": "float16"}
_LABELS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
PRECISION_PARAM = "pytorch.precision"
GRAPHS_PARAM = "pytorch.cuda_graphs"


def graph_sizes(max_batch: int, preferred: list[int] | None = None) -> list[int]:
    """Batch sizes to capture: powers of two, the preferred sizes and ``max_batch`` (padding a batch
    to the next one wastes at most half of it for small batches, under a quarter past 64)."""
    sizes = {max_batch, *(p for p in preferred or [] if 0 < p <= max_batch)}
    b = 1
    while b < max_batch:
        sizes.add(b)
        if b >= 64:
            sizes.add(b + b // 2)  # 96, 192, ...: finer steps where padding costs the most compute
        b *= 2
    return sorted(s for s in sizes if s <= max_batch)


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    static_in: Any
    static_out: Any


class PyTorchRuntime:
    name = "pytorch"

    def __init__(self) -> None:
        self.label = "pytorch-cpu"
        self.device_kind: DeviceKind = "cpu"
        self.precision = "fp32"
        self._torch: Any = None
        self._model: Any = None
        self._device: Any = None
        self._dtype: Any = None
        self._stream: Any = None
        self._use_graphs = False
        self._graphs: dict[int, _Graph] = {}
        self._sizes: list[int] = []

    # -- loading -------------------------------------------------------------------------------
    def load(self, spec: LoadSpec) -> None:
        try:
            import torch
        except ImportError as e:
            raise RepositoryError(f"{spec.model_file} is a TorchScript model and needs PyTorch (pip install torch): "
                                  f"{e}") from e
        self._torch = torch
        cuda = spec.device == "cuda"
        if cuda and not torch.cuda.is_available():
            raise RepositoryError(f"{spec.model_file}: --device cuda, but PyTorch sees no CUDA GPU")
        self._device = torch.device("cuda" if cuda else "cpu")
        self.device_kind = "gpu" if cuda else "cpu"
        self.label = f"pytorch-{'cuda' if cuda else 'cpu'}"
        wanted = spec.precision or spec.params.get(PRECISION_PARAM) or ("fp16" if cuda else "fp32")
        if wanted not in _DTYPES:
            raise RepositoryError(f"{spec.model_file}: unknown PyTorch precision {wanted!r} "
                                  f"(use one of {', '.join(sorted(_DTYPES))})")
        dtype_name = _DTYPES[wanted]
        if dtype_name == "float16" and not cuda:
            raise RepositoryError("FP16 PyTorch inference needs a GPU: use f32 or bf16 on the CPU")
        self._dtype = getattr(torch, dtype_name)
        self.precision = _LABELS[dtype_name]
        if not cuda and spec.threads:
            torch.set_num_threads(spec.threads)
        t0 = time.perf_counter()
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", FutureWarning)  # Triton's format
        try:
            model = torch.jit.load(str(spec.model_file), map_location=self._device)
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/ValueError for bad archives
            raise RepositoryError(f"{spec.model_file} is not a TorchScript archive PyTorch {torch.__version__} can "
                                  f"load: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
        model = model.eval().to(self._dtype)
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        self._model = torch.jit.freeze(model)
        self._use_graphs = cuda and spec.params.get(GRAPHS_PARAM, "true").lower() != "false"
        if cuda:
            self._stream = torch.cuda.Stream(device=self._device)
        self._check_shape(spec)
        logger.info("loaded %s on %s (%s, channels_last=%s, CUDA graphs=%s) in %.1fs", spec.model_file.name,
                    self._device, self.precision, cuda, self._use_graphs, time.perf_counter() - t0)

    def _check_shape(self, spec: LoadSpec) -> None:
        """TorchScript declares no input shape: run one image of the configured size to prove it fits."""
        if not spec.input_shape:
            return
        try:
            out = self.infer_tensor(self._torch.zeros((1, *spec.input_shape)))
        except Exception as e:  # noqa: BLE001 - a model that cannot take the config's input
            raise RepositoryError(f"{spec.model_file} does not run on an input of [1, "
                                  f"{', '.join(map(str, spec.input_shape))}] (config.pbtxt dims): {e}") from e
        if out.dim() != 2:
            raise RepositoryError(f"{spec.model_file}: expected logits [N, classes], got {list(out.shape)}")

    # -- inference -----------------------------------------------------------------------------
    @property
    def torch_device(self) -> Any:
        """Where ``infer_tensor`` computes (a GPU pre step puts its batch there)."""
        return self._device

    @property
    def graphs_active(self) -> bool:
        return bool(self._graphs)

    @property
    def dtype(self) -> Any:
        return self._dtype

    @property
    def stream(self) -> Any:
        """This instance's CUDA stream (None on the CPU): collate and infer run on it."""
        return self._stream

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        out = self.infer_tensor(torch.from_numpy(batch))
        return np.asarray(out.float().cpu().numpy())

    def infer_tensor(self, x: Any) -> Any:
        """``(N, 3, H, W)`` tensor (any device/dtype) -> logits on this runtime's device.

        With CUDA graphs the result is a view of the graph's output buffer, valid until this
        instance's next call: copy it (``.cpu()``) before then (the batcher calls one instance
        from one thread, so a step that copies at once is safe)."""
        torch = self._torch
        with torch.inference_mode(), self._stream_ctx():
            if self._device.type == "cuda":
                x = x.to(self._device, self._dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
                g = self._graph_for(x.shape[0])
                if g is not None:
                    n = x.shape[0]
                    g.static_in[:n].copy_(x)
                    g.graph.replay()
                    return g.static_out[:n]
            else:
                x = x.to(self._dtype)
            return self._model(x)

    def _stream_ctx(self) -> Any:
        return self._torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()

    def _graph_for(self, n: int) -> _Graph | None:
        for size in self._sizes:
            if size >= n:
                return self._graphs.get(size)
        return None

    # -- warm-up -------------------------------------------------------------------------------
    def warmup(self, batch_sizes: list[int], input_shape: tuple[int, ...]) -> None:
        torch = self._torch
        if not batch_sizes:
            return
        if not self._use_graphs:
            for n in sorted({1, max(batch_sizes)} | set(batch_sizes[:8])):
                self.infer_tensor(torch.zeros((n, *input_shape)))
            return
        sizes = graph_sizes(max(batch_sizes))
        pool = torch.cuda.graph_pool_handle()
        t0 = time.perf_counter()
        try:
            with torch.inference_mode():
                for size in sorted(sizes, reverse=True):  # largest first: smaller ones reuse its memory
                    self._graphs[size] = self._capture(size, input_shape, pool)
            torch.cuda.synchronize(self._device)
        except Exception as e:  # noqa: BLE001 - a model whose ops cannot be captured still serves, eager
            logger.warning("CUDA graph capture failed (%s: %s): serving eager", type(e).__name__, e)
            self._graphs.clear()
            self._use_graphs = False
            torch.cuda.synchronize(self._device)
            self.warmup(batch_sizes, input_shape)
            return
        self._sizes = sorted(self._graphs)
        logger.info("captured %d CUDA graphs (batch %s) in %.1fs", len(sizes), ",".join(map(str, self._sizes)),
                    time.perf_counter() - t0)

    def _capture(self, size: int, input_shape: tuple[int, ...], pool: Any) -> _Graph:
        torch = self._torch
        static_in = torch.zeros((size, *input_shape), dtype=self._dtype, device=self._device).contiguous(
            memory_format=torch.channels_last)
        side = torch.cuda.Stream(device=self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side):
            for _ in range(3):  # TorchScript's profiling runs and cuDNN's algorithm choice happen here
                self._model(static_in)
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=self._stream):
            static_out = self._model(static_in)
        return _Graph(graph, static_in, static_out)

    def close(self) -> None:
        self._graphs.clear()
        self._model = None
        if self._torch is not None and self._device is not None and self._device.type == "cuda":
            self._torch.cuda.empty_cache()
