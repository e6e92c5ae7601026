"""The options both framework adapters take (a pydantic mixin; both frameworks' bases are pydantic v2 models)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from .documents import DocumentCompressor, build_compressor


class CompressionOptions(BaseModel):
    """Method, config, budget and mode; builds the :class:`DocumentCompressor` once (the model loads on first use)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    method: Any = Field(default="selective_context", description="method name, config name, YAML path or object")
    config: dict[str, Any] = Field(default_factory=dict, description="fields of the method's config, e.g. model")
    rate: float | None = Field(default=None, description="fraction of tokens kept (default: the method's)")
    target_tokens: int | None = Field(default=None, description="tokens kept per prompt instead of a rate")
    instruction: str | None = Field(default=None, description="kept instruction put before the documents")
    joint: bool = Field(default=False, description="one budget over all documents (may drop and reorder them)")

    _documents: DocumentCompressor = PrivateAttr()

    def __init__(self, **data: Any):
        super().__init__(**data)
        # built after pydantic's validation, so that a bad method raises mmcompress's own error, not a wrapped one
        compressor = build_compressor(self.method, self.config)
        self._documents = DocumentCompressor(compressor, rate=self.rate, target_tokens=self.target_tokens,
                                             instruction=self.instruction, joint=self.joint)

    @property
    def compressor(self):
        """The underlying mmcompress compressor."""
        return self._documents.compressor
