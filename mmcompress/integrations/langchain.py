"""A LangChain document compressor backed by any hard mmcompress method (``pip install 'mmcompress[langchain]'``).

    from mmcompress.integrations.langchain import MMCompressDocumentCompressor
    compressor = MMCompressDocumentCompressor(method="longllmlingua", rate=0.4)
    short_docs = compressor.compress_documents(docs, query="Who built the first reflecting telescope?")
    # or around a retriever:
    # ContextualCompressionRetriever(base_compressor=compressor, base_retriever=retriever)

Documents come back with their metadata (and ``id``) plus ``metadata["mmcompress"]``: the method, the document's
token counts before and after, its rate, the unit, and ``kept_spans`` (character spans of the original text that
were kept). The query is the question of every prompt. See :mod:`mmcompress.integrations.documents` for
``joint`` (one budget over all documents) versus the default (each document on its own, batched).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..extras import require
from .documents import METADATA_KEY, DocumentCompressor, build_compressor

require("langchain_core", "the LangChain integration")

from langchain_core.callbacks import Callbacks  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402
from pydantic import ConfigDict, Field, PrivateAttr  # noqa: E402


class MMCompressDocumentCompressor(BaseDocumentCompressor):
    """Compress retrieved documents for the query with an mmcompress method (name, config name, YAML path or
    compressor object); the model is loaded once, on first use."""

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

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        documents = list(documents)
        out = []
        for piece in self._documents.compress([d.page_content for d in documents], query):
            source = documents[piece.index]
            metadata = {**source.metadata, METADATA_KEY: piece.record}
            out.append(Document(page_content=piece.text, metadata=metadata, id=source.id))
        return out
