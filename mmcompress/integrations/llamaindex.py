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

from ..extras import require
from .documents import METADATA_KEY

require("llama_index.core", "the LlamaIndex integration")

from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle  # noqa: E402

from .options import CompressionOptions  # noqa: E402


class MMCompressNodePostprocessor(CompressionOptions, BaseNodePostprocessor):
    """Compress retrieved nodes for the query with an mmcompress method (name, config name, YAML path or
    compressor object); the model is loaded once, on first use."""

    @classmethod
    def class_name(cls) -> str:
        return "MMCompressNodePostprocessor"

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
