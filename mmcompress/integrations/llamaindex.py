"""A LlamaIndex node postprocessor backed by any hard mmcompress method (``pip install 'mmcompress[llamaindex]'``).

    from mmcompress.integrations.llamaindex import MMCompressNodePostprocessor
    post = MMCompressNodePostprocessor(method="selective_context", rate=0.5)
    query_engine = index.as_query_engine(node_postprocessors=[post])
    # or directly: post.postprocess_nodes(nodes, query_str="...")

Nodes come back as copies with the compressed text, their score, and ``metadata["mmcompress"]`` (method, token
counts, rate, unit, ``kept_spans`` of the original text), a key hidden from the LLM and the embedder. The query is
the question of every prompt; ``joint=True`` puts all nodes under one budget (see
:mod:`mmcompress.integrations.documents`).
"""
from __future__ import annotations

from typing import Any

from ..extras import require
from .documents import METADATA_KEY, DocumentCompressor, build_compressor

require("llama_index.core", "the LlamaIndex integration")

from llama_index.core.bridge.pydantic import Field, PrivateAttr  # noqa: E402
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle  # noqa: E402


class MMCompressNodePostprocessor(BaseNodePostprocessor):
    """Compress retrieved nodes for the query with an mmcompress method (name, config name, YAML path or
    compressor object); the model is loaded once, on first use."""

    method: Any = Field(default="selective_context", description="method name, config name, YAML path or object")
    config: dict[str, Any] = Field(default_factory=dict, description="fields of the method's config, e.g. model")
    rate: float | None = Field(default=None, description="fraction of tokens kept (default: the method's)")
    target_tokens: int | None = Field(default=None, description="tokens kept per prompt instead of a rate")
    instruction: str | None = Field(default=None, description="kept instruction put before the documents")
    joint: bool = Field(default=False, description="one budget over all nodes (may drop and reorder them)")

    _documents: DocumentCompressor = PrivateAttr()

    def __init__(self, **data: Any):
        super().__init__(**data)
        # built after pydantic's validation, so that a bad method raises mmcompress's own error, not a wrapped one
        compressor = build_compressor(self.method, self.config)
        self._documents = DocumentCompressor(compressor, rate=self.rate, target_tokens=self.target_tokens,
                                             instruction=self.instruction, joint=self.joint)

    @classmethod
    def class_name(cls) -> str:
        return "MMCompressNodePostprocessor"

    @property
    def compressor(self):
        """The underlying mmcompress compressor."""
        return self._documents.compressor

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        query = query_bundle.query_str if query_bundle is not None else None
        texts = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        out = []
        for piece in self._documents.compress(texts, query):
            source = nodes[piece.index]
            node = source.node.model_copy(deep=True)
            node.set_content(piece.text)
            node.metadata[METADATA_KEY] = piece.record
            for hidden in (node.excluded_llm_metadata_keys, node.excluded_embed_metadata_keys):
                if METADATA_KEY not in hidden:
                    hidden.append(METADATA_KEY)
            out.append(NodeWithScore(node=node, score=source.score))
        return out
