"""LangChain and LlamaIndex adapters, with the real langchain-core and llama-index-core packages, on the tiny random
Llama (``random`` method for speed), plus one slow test with Selective Context on the real SmolLM2."""
from __future__ import annotations

import asyncio
import re

import pytest

from mmcompress.errors import BudgetError, ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

lc_documents = pytest.importorskip("langchain_core.documents")
li_schema = pytest.importorskip("llama_index.core.schema")

DOCS = [
    "Paris is the capital and most populous city of France. The river flows to the sea through the city.",
    "Super Bowl 50 was an American football game to determine the champion of the National Football League.",
    "Photosynthesis converts light energy into chemical energy that can later be released to fuel the organism.",
]
QUERY = "What is the capital of France?"


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _check_spans(original: str, compressed: str, spans: list[list[int]]) -> None:
    """The kept spans, read off the original, are the compressed text (up to whitespace), in order."""
    assert spans and all(0 <= s < e <= len(original) for s, e in spans)
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), "spans are merged and ordered"
    assert _squash("".join(original[s:e] for s, e in spans)) == _squash(compressed)


@pytest.fixture
def spy_batches(monkeypatch):
    """Records the prompts of every compress_batch call of the random method."""
    from mmcompress.hard.random_drop import RandomDrop

    calls = []
    original = RandomDrop.compress_batch

    def spy(self, prompts, **kwargs):
        prompts = list(prompts)
        calls.append(prompts)
        return original(self, prompts, **kwargs)

    monkeypatch.setattr(RandomDrop, "compress_batch", spy)
    return calls


# ------------------------------------------------------------------------------------------------------ LangChain
def test_langchain_compressor_documents_in_documents_out(tiny_dir, spy_batches):
    from langchain_core.documents import BaseDocumentCompressor, Document

    from mmcompress.integrations.langchain import MMCompressDocumentCompressor

    compressor = MMCompressDocumentCompressor(method="random", config={"model": str(tiny_dir)}, rate=0.5)
    assert isinstance(compressor, BaseDocumentCompressor)
    docs = [Document(page_content=t, metadata={"source": f"doc{i}.txt"}, id=f"id-{i}") for i, t in enumerate(DOCS)]
    out = compressor.compress_documents(docs, query=QUERY)

    assert [d.id for d in out] == ["id-0", "id-1", "id-2"]
    assert len(spy_batches) == 1 and len(spy_batches[0]) == 3, "all documents go through one compress_batch"
    assert all(p.question == QUERY for p in spy_batches[0]), "the query is each prompt's question"
    for source, doc in zip(docs, out):
        record = doc.metadata["mmcompress"]
        assert doc.metadata["source"] == source.metadata["source"]
        assert QUERY not in doc.page_content
        assert record["method"] == "random" and record["unit"] == "token"
        assert record["compressed_tokens"] < record["origin_tokens"]
        assert record["rate"] == pytest.approx(record["compressed_tokens"] / record["origin_tokens"])
        _check_spans(source.page_content, doc.page_content, record["kept_spans"])
    # the async path of the base class gives the same documents
    again = asyncio.run(compressor.acompress_documents(docs, query=QUERY))
    assert [d.page_content for d in again] == [d.page_content for d in out]


def test_langchain_joint_budget_drops_documents_and_keeps_the_rest(tiny_dir):
    from langchain_core.documents import Document

    from mmcompress.integrations.langchain import MMCompressDocumentCompressor

    compressor = MMCompressDocumentCompressor(method="random", config={"model": str(tiny_dir), "unit": "sentence"},
                                              rate=0.45, joint=True)
    # one sentence per document: a joint sentence-level budget must drop some of them whole
    docs = [Document(page_content=t.split(". ")[0] + ".", metadata={"n": i}) for i, t in enumerate(DOCS)]
    out = compressor.compress_documents(docs, query=QUERY)
    assert 1 <= len(out) < len(docs)
    for doc in out:  # the survivors: what was kept of them, read off the original by the spans
        source = docs[doc.metadata["n"]]
        _check_spans(source.page_content, doc.page_content, doc.metadata["mmcompress"]["kept_spans"])


def test_langchain_methods_by_config_name_path_or_object_and_bad_input(tiny_dir, tmp_path):
    from langchain_core.documents import Document

    from mmcompress import create_compressor
    from mmcompress.integrations.langchain import MMCompressDocumentCompressor

    docs = [Document(page_content=DOCS[0]), Document(page_content="   ")]
    yaml_path = tmp_path / "mine.yaml"
    yaml_path.write_text(f"compressor: random\nunit: word\nmodel: {tiny_dir}\n")
    made = [
        MMCompressDocumentCompressor(method="random-token", config={"model": str(tiny_dir)}, rate=0.5),
        MMCompressDocumentCompressor(method=str(yaml_path), rate=0.5),
        MMCompressDocumentCompressor(method=create_compressor("random", model=str(tiny_dir)), rate=0.5),
    ]
    assert made[1].compressor.config.unit == "word"
    for compressor in made:
        out = compressor.compress_documents(docs, query=QUERY)
        assert len(out) == 2 and out[1].page_content == "   "  # a blank document passes through
        assert len(out[0].page_content) < len(DOCS[0])
    with pytest.raises(ConfigError, match="soft method"):
        MMCompressDocumentCompressor(method="icae", config={"model": str(tiny_dir)})
    with pytest.raises(BudgetError):
        MMCompressDocumentCompressor(method="random", config={"model": str(tiny_dir)}, rate=1.5)


# ----------------------------------------------------------------------------------------------------- LlamaIndex
def test_llamaindex_postprocessor_in_a_query_engine(tiny_dir, spy_batches):
    from llama_index.core import Document, Settings, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import MockLLM
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode

    from mmcompress.integrations.llamaindex import MMCompressNodePostprocessor

    post = MMCompressNodePostprocessor(method="random", config={"model": str(tiny_dir)}, rate=0.5)
    assert isinstance(post, BaseNodePostprocessor)
    Settings.embed_model, Settings.llm = MockEmbedding(embed_dim=8), MockLLM(max_tokens=8)
    index = VectorStoreIndex.from_documents([Document(text=t, metadata={"source": i}) for i, t in enumerate(DOCS)])
    engine = index.as_query_engine(similarity_top_k=3, node_postprocessors=[post])
    response = engine.query(QUERY)

    assert len(spy_batches) == 1 and len(spy_batches[0]) == 3 and spy_batches[0][0].question == QUERY
    assert len(response.source_nodes) == 3
    for item in response.source_nodes:
        node = item.node
        original = DOCS[node.metadata["source"]]
        record = node.metadata["mmcompress"]
        assert item.score is not None
        _check_spans(original, node.text, record["kept_spans"])
        assert record["compressed_tokens"] < record["origin_tokens"]
        # the record is for programs, not for the LLM or the embedder
        assert "kept_spans" not in node.get_content(MetadataMode.LLM)
        assert "kept_spans" not in node.get_content(MetadataMode.EMBED)


def test_llamaindex_postprocess_nodes_directly_keeps_scores_and_leaves_inputs_alone(tiny_dir):
    from llama_index.core.schema import NodeWithScore, TextNode

    from mmcompress.integrations.llamaindex import MMCompressNodePostprocessor

    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=1.0 - i / 10) for i, t in enumerate(DOCS)]
    post = MMCompressNodePostprocessor(method="random", config={"model": str(tiny_dir)}, target_tokens=20)
    out = post.postprocess_nodes(nodes, query_str=QUERY)
    assert [n.score for n in out] == [n.score for n in nodes]
    assert [n.node.node_id for n in out] == ["n0", "n1", "n2"]
    assert [n.node.text for n in nodes] == DOCS  # inputs unchanged
    assert all(n.node.metadata["mmcompress"]["compressed_tokens"] < n.node.metadata["mmcompress"]["origin_tokens"]
               for n in out)


# ------------------------------------------------------------------------------------------------------ real model
@pytest.mark.slow
def test_langchain_selective_context_on_smollm2_keeps_the_answer_bearing_words():
    from langchain_core.documents import Document

    from mmcompress.integrations.langchain import MMCompressDocumentCompressor
    from mmcompress.integrations.llamaindex import MMCompressNodePostprocessor
    from llama_index.core.schema import NodeWithScore, TextNode

    text = open("examples/data/telescope.txt", encoding="utf-8").read()
    paragraphs = [p for p in text.split("\n\n") if len(p) > 200][:4]
    docs = [Document(page_content=p, metadata={"i": i}) for i, p in enumerate(paragraphs)]
    compressor = MMCompressDocumentCompressor(method="selective_context", config={"unit": "phrase"}, rate=0.5)
    out = compressor.compress_documents(docs, query="Who built the first practical reflecting telescope?")
    assert len(out) == len(docs)
    for source, doc in zip(docs, out):
        record = doc.metadata["mmcompress"]
        assert 0.25 < record["rate"] < 0.75, record
        spans = record["kept_spans"]
        kept = "".join(source.page_content[s:e] for s, e in spans)
        assert _squash(kept) == _squash(doc.page_content)
    post = MMCompressNodePostprocessor(method="selective_context", rate=0.5)
    nodes = post.postprocess_nodes([NodeWithScore(node=TextNode(text=d.page_content), score=1.0) for d in docs],
                                   query_str="Who built the first practical reflecting telescope?")
    assert [n.node.text for n in nodes] == [d.page_content for d in out]  # same method, same result
