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
from ..extras import require
from .documents import METADATA_KEY

require("langchain_core", "the LangChain integration")

from langchain_core.callbacks import Callbacks  # noqa: E402
from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402

from .options import CompressionOptions  # noqa: E402


class MMCompressDocumentCompressor(CompressionOptions, BaseDocumentCompressor):
    """Compress retrieved documents for the query with an mmcompress method (name, config name, YAML path or
    compressor object); the model is loaded once, on first use."""

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        documents = list(documents)
        out = []
        for piece in self._documents.compress([d.page_content for d in documents], query):
            source = documents[piece.index]
            metadata = {**source.metadata, METADATA_KEY: piece.record}
            out.append(Document(page_content=piece.text, metadata=metadata, id=source.id))
        return out
