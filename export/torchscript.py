"""PyTorch -> TorchScript (``NAME_pt``, Triton platform ``pytorch_libtorch``), gated against eager PyTorch.

The model is traced on the CPU in FP32 behind a wrapper whose ``forward`` argument is named
``input``: Triton's PyTorch backend binds config inputs by the forward arguments' names, so the
config's ``input`` / ``logits`` names hold for Triton too. The service loads it with
``service.runtimes.pytorch`` (FP16 channels_last + CUDA graphs on a GPU, FP32 on the CPU).
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.errors import ExportError
from export.parity import Runner

logger = logging.getLogger(__name__)

TS_FILE = "model.pt"  # Triton's pytorch_libtorch default model filename


class _Named(nn.Module):
    """``forward(input)``: the argument name Triton's PyTorch backend matches to config.pbtxt."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the name is the contract
        return self.model(input)


def trace(model: nn.Module, path: Path, shape: tuple[int, int, int]) -> Path:
    """Trace ``model`` (eval, CPU, FP32) on a batch of 2 and save it; the batch axis stays free."""
    t0 = time.perf_counter()
    wrapped = _Named(model).eval()
    example = torch.zeros((2, *shape))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, and is what Triton loads
            traced = torch.jit.trace(wrapped, example, check_trace=False)
        traced.save(str(path))
    except Exception as e:  # noqa: BLE001 - tracing errors come in many types
        raise ExportError(f"could not trace the model to TorchScript: {type(e).__name__}: {e}") from e
    print(f"traced TorchScript {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f}s",
          flush=True)
    return path


def ts_runner(path: Path) -> Runner:
    """Run a saved TorchScript model as written (CPU, FP32)."""
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()

    return run
