"""The image preprocessing a model expects, kept in its config's ``parameters`` (Triton has no field for it)."""

from __future__ import annotations

from dataclasses import dataclass

from modelrepo.errors import RepositoryError


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing kept in ``parameters`` (Triton has no field for it)."""

    resize_shorter: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def to_params(self) -> dict[str, str]:
        return {
            "preprocess.resize_shorter": str(self.resize_shorter),
            "preprocess.crop": str(self.crop),
            "preprocess.mean": ",".join(f"{v:g}" for v in self.mean),
            "preprocess.std": ",".join(f"{v:g}" for v in self.std),
            "preprocess.interpolation": self.interpolation,
        }

    @classmethod
    def from_params(cls, params: dict[str, str], input_dims: list[int] | None = None) -> Preprocess:
        d = cls()
        crop = int(params.get("preprocess.crop", 0)) or (input_dims[-1] if input_dims else d.crop)
        resize = int(params.get("preprocess.resize_shorter", 0)) or round(crop * 256 / 224)

        def triple(key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
            raw = params.get(key)
            if not raw:
                return default
            vals = [float(x) for x in raw.split(",")]
            if len(vals) != 3:
                raise RepositoryError(f"parameter {key} needs 3 comma-separated numbers, got {raw!r}")
            return (vals[0], vals[1], vals[2])

        return cls(
            resize_shorter=resize,
            crop=crop,
            mean=triple("preprocess.mean", d.mean),
            std=triple("preprocess.std", d.std),
            interpolation=params.get("preprocess.interpolation", d.interpolation),
        )
