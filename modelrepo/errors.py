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


class EngineBuildError(RepositoryError):
    """TensorRT could not parse the ONNX model or build a plan from it (or is missing here)."""
