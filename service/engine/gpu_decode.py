"""JPEG decode and preprocessing on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``).

The pre step (decode pool) reads only the JPEG header (size, EXIF orientation) and enforces the
pixel limit; the bytes travel to the batch. There one call decodes the whole batch into device
memory, then each group of equally sized images is turned upright, resized (antialiased bilinear,
torchvision's ``Resize``), centre-cropped and normalised as one tensor, written straight into the
model's input batch (its dtype, channels_last). Nothing goes back to the host until the logits.

Other formats (PNG, WebP, CMYK JPEGs, ...) take the CPU path in the pre step. A JPEG the GPU cannot
decode is retried alone on the GPU, then with Pillow on the host; one that nothing decodes fails
its own request with a 400 and never the batch it shared.

Run with a CPU runtime (``--gpu-decode on``) the same code decodes with libjpeg-turbo through
torchvision: that is how CI tests it without a GPU.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from modelrepo.errors import ImageError, UndecodableImage
from modelrepo.image_preprocess import exif_orientation, open_image, resize_geometry
from modelrepo.preprocess import Preprocess
from service.engine.steps import Step, StepResult

logger = logging.getLogger(__name__)

# torchvision's CUDA decoder keeps one nvJPEG handle per process: instances take turns decoding.
_DECODE_LOCK = threading.Lock()

#: EXIF orientation -> how a stored CHW tensor turns upright (as ImageOps.exif_transpose turns it)
_UPRIGHT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    1: lambda t: t,
    2: lambda t: t.flip(-1),
    3: lambda t: t.flip(-1, -2),
    4: lambda t: t.flip(-2),
    5: lambda t: t.transpose(-1, -2),
    6: lambda t: t.transpose(-1, -2).flip(-1),
    7: lambda t: t.transpose(-1, -2).flip(-1, -2),
    8: lambda t: t.transpose(-1, -2).flip(-2),
}
_GPU_MODES = ("RGB", "L")  # JPEG colour modes nvJPEG decodes to RGB (CMYK/YCCK go to Pillow)


def _complete(data: bytes) -> bool:
    """Whether a JPEG ends with its EOI marker (trailing padding allowed)."""
    return data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9"


@dataclass(frozen=True)
class JpegPayload:
    data: bytes
    orientation: int  # EXIF, 1..8
    size: tuple[int, int]  # stored width, height


class JpegDecoder:
    """Pre step and batch decoder for one model's preprocessing."""

    def __init__(self, pp: Preprocess, max_pixels: int, cpu_pre: Callable[[bytes], np.ndarray]) -> None:
        self.pp = pp
        self.max_pixels = max_pixels
        self.cpu_pre = cpu_pre
        self._mode = {"bilinear": "bilinear", "bicubic": "bicubic"}.get(pp.interpolation, "bilinear")
        std = torch.tensor(pp.std, dtype=torch.float32)
        self._scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
        self._shift = (-torch.tensor(pp.mean, dtype=torch.float32) / std).view(1, 3, 1, 1)
        self._consts: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- pre: decode pool, per image -----------------------------------------------------------
    def pre(self, data: bytes) -> JpegPayload | np.ndarray:
        """A JPEG's header checks (empty, pixel limit) -> its payload; anything else -> CPU tensor."""
        img = open_image(data, self.max_pixels)  # 400/413 here, before any decode
        if img.format != "JPEG" or img.mode not in _GPU_MODES or not _complete(data):
            # a truncated JPEG goes to Pillow, which refuses it (some decoders fill in grey instead)
            return self.cpu_pre(data)
        try:
            orientation = exif_orientation(img)
        except (OSError, SyntaxError, ValueError) as e:
            raise UndecodableImage(f"image could not be decoded (truncated or corrupt?): {e}") from e
        return JpegPayload(data, orientation, img.size)

    # -- collate: the instance's thread, per batch ---------------------------------------------
    def collate(self, items: list[Any], device: Any, dtype: Any) -> tuple[torch.Tensor, dict[int, Exception]]:
        """Payloads -> ``(n_ok, 3, crop, crop)`` model input on ``device``, and the items that failed."""
        failed: dict[int, Exception] = {}
        images = self._decode([it for it in items if isinstance(it, JpegPayload)], device)
        out = torch.empty((len(items), 3, self.pp.crop, self.pp.crop), dtype=dtype, device=device).contiguous(
            memory_format=torch.channels_last)
        groups: dict[tuple[int, int, int], list[tuple[int, torch.Tensor]]] = defaultdict(list)
        host: list[tuple[int, np.ndarray]] = []
        j = 0
        for i, it in enumerate(items):
            if not isinstance(it, JpegPayload):
                host.append((i, it))
                continue
            img = images[j]
            j += 1
            if isinstance(img, Exception):
                failed[i] = img
            elif isinstance(img, np.ndarray):
                host.append((i, img))
            else:
                groups[(*img.shape[-2:], it.orientation)].append((i, img))
        for (_, _, orientation), members in groups.items():
            idx = [i for i, _ in members]
            batch = _UPRIGHT[orientation](torch.stack([t for _, t in members]))
            out[idx] = self._resize_crop_normalise(batch).to(out.dtype)
        if host:
            idx = [i for i, _ in host]
            out[idx] = torch.from_numpy(np.stack([a for _, a in host])).to(device, non_blocking=True).to(dtype)
        if failed:
            ok = [i for i in range(len(items)) if i not in failed]
            out = out[ok]
        return out, failed

    def _decode(self, payloads: list[JpegPayload], device: Any) -> list[torch.Tensor | np.ndarray | Exception]:
        """Decode a batch in one call; if that fails, each alone, then with Pillow on the host."""
        if not payloads:
            return []
        raw = [torch.frombuffer(bytearray(p.data), dtype=torch.uint8) for p in payloads]
        try:
            with _DECODE_LOCK:
                return list(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))
        except RuntimeError as e:
            logger.info("batched JPEG decode of %d images failed (%s); decoding them one by one", len(raw), e)
        out: list[torch.Tensor | np.ndarray | Exception] = []
        for p, r in zip(payloads, raw, strict=True):
            try:
                with _DECODE_LOCK:
                    out.append(decode_jpeg(r, mode=ImageReadMode.RGB, device=device))
                continue
            except RuntimeError:
                pass
            try:
                out.append(self.cpu_pre(p.data))  # Pillow decodes what nvJPEG would not (or says why not)
            except ImageError as e:
                out.append(e)
            except Exception as e:  # noqa: BLE001 - a decoder's own error for this image alone
                out.append(UndecodableImage(f"image could not be decoded: {type(e).__name__}: {e}"))
        return out

    def _resize_crop_normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """Upright uint8 ``(n, 3, h, w)`` -> normalised float32 ``(n, 3, crop, crop)``: Resize(shorter)
        then CenterCrop, exactly the box ``modelrepo.image_preprocess.crop_box`` computes on the CPU."""
        pp = self.pp
        h, w = batch.shape[-2:]
        nw, nh, left, top = resize_geometry(w, h, pp)
        x = torch.nn.functional.interpolate(batch.float(), size=(nh, nw), mode=self._mode, antialias=True,
                                            align_corners=False)
        x = x[..., top:top + pp.crop, left:left + pp.crop]
        scale, shift = self._constants(x.device)
        return x.clamp_(0, 255).mul_(scale).add_(shift)

    def _constants(self, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        c = self._consts.get(device)
        if c is None:
            c = self._consts[device] = (self._scale.to(device), self._shift.to(device))
        return c


def device_step(decoder: JpegDecoder, runtime: Any) -> Step:
    """One instance's step: decode + preprocess on its device, infer, copy the logits to the host."""
    device, dtype = runtime.torch_device, runtime.dtype
    stream = getattr(runtime, "stream", None)

    def step(items: list[Any]) -> StepResult:
        ctx = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            batch, failed = decoder.collate(items, device, dtype)
            if batch.shape[0] == 0:
                return StepResult(np.empty((0, 0), dtype=np.float32), failed)
            logits = runtime.infer_tensor(batch)
            return StepResult(logits.float().cpu().numpy(), failed)

    return step


def warm_decoder(decoder: JpegDecoder, steps: list[Step]) -> None:
    """Decode a JPEG through every instance before the model reports ready: the decoder's lazy start
    (nvJPEG handles, buffers) costs a request nothing, and the batcher's cost model never sees it."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (96, 64), (120, 80, 40)).save(buf, "JPEG")
    payload = decoder.pre(buf.getvalue())
    for step in steps:
        step([payload, payload])
