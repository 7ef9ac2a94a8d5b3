"""The naive baseline: one FastAPI endpoint, one unbatched ONNX Runtime run per request.

What a first version of the service would look like: a sync endpoint (FastAPI runs it in its
thread pool), Pillow decode, torchvision's reference eval transforms written out with Pillow and
NumPy (Resize(256) of the whole image, CenterCrop(224), ToTensor, Normalize), ``session.run`` on a
batch of one with ONNX Runtime's default session options. No batching, no reduced-size JPEG decode,
no overlap.

    python -m loadtest.naive_server --repo model_repo --model resnet50 --port 8001
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from fastapi import Body, FastAPI, HTTPException

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def model_file(repo: Path, model: str) -> Path:
    versions = sorted(int(p.name) for p in (repo / model).iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise SystemExit(f"{repo / model} has no version folder")
    return repo / model / str(versions[-1]) / "model.onnx"


def preprocess(data: bytes, resize: int = 256, crop: int = 224) -> np.ndarray:
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    nw, nh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = int(round((nw - crop) / 2.0)), int(round((nh - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return ((x - MEAN) / STD)[None].astype(np.float32)


def create_app(onnx_path: Path) -> FastAPI:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    app = FastAPI(title="naive baseline")

    @app.get("/health/ready")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/classify")
    def classify(body: bytes = Body(..., media_type="image/jpeg"), top_k: int = 5) -> dict[str, object]:
        try:
            x = preprocess(body)
        except Exception as e:  # noqa: BLE001 - any decode failure is the client's bad image
            raise HTTPException(400, f"bad image: {e}") from e
        logits = session.run(None, {input_name: x})[0][0].astype(np.float64)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        top = np.argsort(-p)[:top_k]
        return {"results": [{"predictions": [{"index": int(i), "score": float(p[i])} for i in top]}]}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    ap = argparse.ArgumentParser(prog="python -m loadtest.naive_server", description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path("model_repo"))
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args(argv)
    app = create_app(model_file(args.repo, args.model))
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
