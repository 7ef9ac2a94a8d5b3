"""Errors of the repository format. They carry no HTTP status: ``service.errors`` maps them."""

from __future__ import annotations


class RepositoryError(Exception):
    """A model folder or config.pbtxt that cannot be served (or written) as it is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidModelName(RepositoryError):
    """A model name that cannot be a folder of the repository."""


class VersionNotFound(RepositoryError):
    """A version that is not (or cannot be) a version folder of the model."""


class ImageError(Exception):
    """An image that cannot become a model input (the service answers 400 or 413; the exporter skips it)."""

    #: the machine code the service answers it with
    code = "bad_image"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UndecodableImage(ImageError):
    """Empty, not an image, or truncated / corrupt: nothing to classify."""


class ImageTooLarge(ImageError):
    """More pixels than allowed (checked from the header, before decoding)."""

    code = "payload_too_large"


class EngineBuildError(RepositoryError):
    """TensorRT could not parse the ONNX model or build a plan from it (or is missing here)."""
