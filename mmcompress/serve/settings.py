"""What the service's modules share: its settings, the error a request gets refused with, and the JSON error body
(kept apart from :mod:`.app` so that :mod:`.proxy` does not import the app that imports it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import MMCompressError


@dataclass
class ServeSettings:
    """How the service runs. ``config`` sets fields of the default method (``model``, ``device``...); other
    methods a request names get the fields of it that they have."""

    method: str = "selective_context"
    rate: float = 0.5
    config: dict[str, Any] = field(default_factory=dict)
    upstream_base_url: str | None = None
    upstream_api_key: str | None = None
    upstream_timeout: float = 300.0
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_methods: int = 4  # compressors kept loaded at once (the default one always stays)


class ServeError(MMCompressError):
    """A request the service refuses; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def error_response(status: int, message: str, kind: str = "invalid_request_error"):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)
