"""Local checkpoints: plain state_dicts or training checkpoints, loaded without running pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from export.errors import ExportError

# Keys of training-checkpoint dicts that hold the state_dict, tried in this order.
CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict", "ema_state_dict")
# Prefixes added by DataParallel / DistributedDataParallel and torch.compile.
STRIP_PREFIXES = ("module.", "_orig_mod.")


def _unsupported(message: str) -> str:
    """The line of torch's weights-only error that names the offending global."""
    for line in message.splitlines():
        if "Unsupported global" in line or "GLOBAL" in line:
            return line.strip()
    return "weights_only unpickler refused it"


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state_dict from a plain state_dict or a training checkpoint, loaded without running code."""
    if not path.is_file():
        raise ExportError(f"checkpoint {path} does not exist: pass --weights /path/to/checkpoint.pth")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" not in str(e).lower():
            raise ExportError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
        raise ExportError(
            f"refusing to load {path}: it holds pickled objects other than tensors and containers, and "
            f"unpickling them could run arbitrary code ({_unsupported(str(e))}). If you trust it, re-save "
            "it as a plain state_dict: torch.save(model.state_dict(), path)"
        ) from e
    except Exception as e:  # torch raises RuntimeError, EOFError, IndexError, ... on garbage
        raise ExportError(f"{path} is not a readable PyTorch checkpoint: {type(e).__name__}: {e}") from e
    if isinstance(obj, dict):
        for key in CHECKPOINT_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ExportError(
            f"{path}: expected a state_dict (name -> tensor) or a dict with one under "
            f"{'/'.join(CHECKPOINT_KEYS)}"
        )
    return {_strip(k): v for k, v in obj.items()}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in STRIP_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key
