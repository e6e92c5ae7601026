"""Interleaved input: images land at their markers, segment policies, chunking never splits an image, tasks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import shared_file

from mmcompress.errors import ConfigError, InvalidPromptError
from mmcompress.multimodal import (
    InterleavedEmbedder,
    chunk_sequence,
    chunk_spans,
    pack_blocks,
    pad_sequences,
    split_layout,
)
from mmcompress.multimodal.embedding import TEXT, ImageEmbedder
from mmcompress.prompt import ImageSegment, Prompt, Role, TextSegment


class GridMeanEmbedder(torch.nn.Module):
    """A tiny image embedder: the mean colour of each cell of a grid, projected to the LLM width."""

    def __init__(self, dim: int, grid: int = 2):
        super().__init__()
        self.grid = grid
        self.tokens_per_image = grid * grid
        self.proj = torch.nn.Linear(3, dim)

    def preprocess(self, images):
        from mmcompress.image_io import to_pil_rgb

        return torch.stack([torch.from_numpy(np.asarray(to_pil_rgb(im).resize((8, 8)), dtype=np.float32) / 255.0)
                            for im in images])

    def forward(self, pixels):
        g = self.grid
        cells = pixels.reshape(-1, g, 8 // g, g, 8 // g, 3).mean((2, 4)).reshape(len(pixels), g * g, 3)
        return self.proj(cells)


def _solid(rgb):
    return np.full((16, 16, 3), rgb, dtype=np.uint8)


@pytest.fixture
def embedder(tiny_lm):
    model, tok = tiny_lm
    torch.manual_seed(0)
    return InterleavedEmbedder(tok, model.get_input_embeddings(), GridMeanEmbedder(model.config.hidden_size))


def test_grid_embedder_follows_the_protocol(embedder):
    assert isinstance(embedder.image_embedder, ImageEmbedder)


def test_images_land_at_their_markers(embedder, tiny_lm):
    _, tok = tiny_lm
    red, blue = _solid((255, 0, 0)), _solid((0, 0, 255))
    prompt = Prompt.from_interleaved("Photo A: <image> Photo B: <image> Which one is red?", [red, blue])
    seq = embedder.embed(prompt)
    k = embedder.image_embedder.tokens_per_image
    assert seq.num_images == 2 and int(seq.is_image.sum()) == 2 * k
    # the text before image 0 is exactly "Photo A: ", between the images " Photo B: ", after it the question
    pos0, pos1 = seq.image_positions(0), seq.image_positions(1)
    assert pos0.tolist() == list(range(int(pos0[0]), int(pos0[0]) + k))  # contiguous block
    assert tok.decode(seq.input_ids[: int(pos0[0])].tolist()) == "Photo A: "
    assert tok.decode(seq.input_ids[int(pos0[-1]) + 1 : int(pos1[0])].tolist()) == " Photo B: "
    assert tok.decode(seq.input_ids[int(pos1[-1]) + 1 :].tolist()) == " Which one is red?"
    # the image positions hold the embedder's output for that image, text positions the token embeddings
    feats = embedder.image_embedder(embedder.image_embedder.preprocess([red, blue]))
    assert torch.allclose(seq.embeds[pos0], feats[0]) and torch.allclose(seq.embeds[pos1], feats[1])
    text = seq.image_index == TEXT
    assert torch.allclose(seq.embeds[text], embedder.token_embedding(seq.input_ids[text]))


def test_swapping_images_swaps_their_blocks(embedder):
    red, blue = _solid((255, 0, 0)), _solid((0, 0, 255))
    a = embedder.embed(Prompt.from_interleaved("A: <image> B: <image>", [red, blue]))
    b = embedder.embed(Prompt.from_interleaved("A: <image> B: <image>", [blue, red]))
    assert torch.allclose(a.embeds[a.image_positions(0)], b.embeds[b.image_positions(1)])
    assert not torch.allclose(a.embeds[a.image_positions(0)], b.embeds[b.image_positions(0)])


def test_text_only_positions_match_the_rendered_text(embedder, tiny_lm):
    _, tok = tiny_lm
    prompt = Prompt.from_documents(["first doc", "second doc"], question="Which?")
    seq = embedder.embed(prompt)
    assert tok.decode(seq.input_ids.tolist()) == prompt.text


def test_wrong_feature_count_is_a_clear_error(embedder):
    prompt = Prompt.from_interleaved("A: <image> B: <image>", [_solid((1, 2, 3))] * 2)
    with pytest.raises(InvalidPromptError, match="features for 1 images"):
        embedder.embed(prompt, image_features=torch.zeros(1, 4, 32))
    bare = InterleavedEmbedder(embedder.tokenizer, embedder.token_embedding, None)
    with pytest.raises(InvalidPromptError, match="no image embedder"):
        bare.embed(prompt)


def test_padding_keeps_image_map_and_mask(embedder):
    short = embedder.embed(Prompt.from_interleaved("<image>", [_solid((0, 0, 0))]))
    long = embedder.embed(Prompt.from_interleaved("Two photos: <image> and <image>", [_solid((0, 0, 0))] * 2))
    batch = pad_sequences([short, long], side="left")
    assert batch.embeds.shape[:2] == (2, len(long))
    pad = len(long) - len(short)
    assert batch.attention_mask[0, :pad].sum() == 0 and batch.attention_mask[0, pad:].all()
    assert (batch.image_index[0, pad:] == 0).all() and (batch.image_index[0, :pad] == -2).all()
    assert torch.equal(batch.image_index[1], long.image_index)


def test_layout_keeps_question_and_compresses_the_rest():
    img = _solid((0, 0, 0))
    prompt = Prompt.from_interleaved("Photo A: <image> Photo B: <image> Which one shows a vehicle?", [img, img])
    layout = split_layout(prompt)
    assert [type(s).__name__ for s in layout.compressed] == ["TextSegment", "ImageSegment", "TextSegment", "ImageSegment",
                                                             "TextSegment"]
    assert layout.compressed[-1].text == " " and layout.kept_text == "Which one shows a vehicle?"
    assert layout.suffix[0].role is Role.QUESTION
    assert len(layout.images) == 2
    # an explicit instruction stays in front, a question segment is used as is, kept notes between images stay text
    prompt = Prompt((TextSegment("Be brief.", role=Role.INSTRUCTION), ImageSegment(img),
                     TextSegment("note", keep=True), ImageSegment(img), TextSegment("Which?", role=Role.QUESTION)))
    layout = split_layout(prompt)
    assert [s.text for s in layout.prefix] == ["Be brief."]
    assert [s.text for s in layout.suffix] == ["note", "Which?"]
    assert split_layout(prompt, keep_trailing_question=False).suffix == layout.suffix
    # without a trailing question nothing is split
    plain = Prompt.from_interleaved("A: <image> the end.", [img])
    assert split_layout(plain).suffix == []


def test_chunks_never_split_an_image(embedder):
    images = [_solid((i * 40, 0, 0)) for i in range(5)]
    text = "Intro text here. " + " and then ".join(["<image>"] * 5) + " the end of the prompt."
    seq = embedder.embed(Prompt.from_interleaved(text, images))
    k = embedder.image_embedder.tokens_per_image
    for max_len in (k, k + 1, k + 3, 2 * k + 1, 11, len(seq)):
        spans = chunk_spans(seq, max_len)
        assert spans[0][0] == 0 and spans[-1][1] == len(seq)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, covering
        assert all(0 < e - s <= max_len for s, e in spans)
        for i in range(5):  # each image's positions fall in exactly one chunk
            pos = seq.image_positions(i)
            assert sum(s <= int(pos[0]) < e for s, e in spans) == 1
            assert any(s <= int(pos[0]) and int(pos[-1]) < e for s, e in spans)
    chunks = chunk_sequence(seq, k + 3)
    assert sum(len(c) for c in chunks) == len(seq)
    assert torch.equal(torch.cat([c.embeds for c in chunks]), seq.embeds)
    with pytest.raises(ConfigError, match="an image takes 4 positions"):
        chunk_spans(seq, k - 1)


def test_pack_blocks_is_greedy():
    assert pack_blocks([1, 1, 4, 1, 1, 1], 4) == [(0, 2), (2, 6), (6, 9)]
    assert pack_blocks([], 3) == []


@pytest.mark.shared
def test_tasks_build_answerable_examples_with_disjoint_splits():
    shared_file("cifar10_dev.npz")
    from mmcompress.multimodal.tasks import ORDINALS, answer_correct, build_examples, load_cifar

    train = build_examples("cifar", "train", 40, seed=0)
    again = build_examples("cifar", "train", 40, seed=0)
    assert [e.text for e in train] == [e.text for e in again]  # seeded
    for e in train:
        assert e.text.count("<image>") == len(e.images) in (2, 3)
        assert len(set(e.labels)) == len(e.labels)  # the question has one right image
        if e.kind == "cifar-which":
            assert e.answer == f"the {ORDINALS[e.target_image]}" and e.labels[e.target_image] in e.question
        else:
            assert e.answer == e.labels[e.target_image] and ORDINALS[e.target_image] in e.question
        prompt = e.prompt()
        assert prompt.question == e.question and len(prompt.images) == len(e.images)
    train_imgs, _ = load_cifar("train")
    val_imgs, _ = load_cifar("validation")
    test_imgs, _ = load_cifar("test")
    assert (len(train_imgs), len(val_imgs), len(test_imgs)) == (1440, 160, 400)
    splits = [{x.tobytes() for x in imgs} for imgs in (train_imgs, val_imgs, test_imgs)]
    assert not splits[0] & splits[1] and not splits[0] & splits[2] and not splits[1] & splits[2]
    assert answer_correct("The second.", "the second") and not answer_correct("the first", "the second")


def test_shapes_tasks_read_colour_and_shape_from_easy_vqa():
    pytest.importorskip("easy_vqa")
    from mmcompress.multimodal.tasks import COLOURS, SHAPES, build_examples

    from mmcompress.multimodal.tasks import load_shapes

    train, validation = load_shapes("train")[0], load_shapes("validation")[0]
    assert len(validation) > 0 and not {x.tobytes() for x in train} & {x.tobytes() for x in validation}
    examples = build_examples("shapes", "test", 30, seed=0, max_images=200)
    kinds = {e.kind for e in examples}
    assert kinds == {"shape-colour", "shape-which", "shape-what"}
    for e in examples:
        colour, shape = e.labels[e.target_image].split()
        assert colour in COLOURS and shape in SHAPES
        if e.kind == "shape-colour":
            assert e.answer == colour
        elif e.kind == "shape-what":
            assert e.answer == shape
        # the labelled colour is the dominant non-white colour of the image
        img = e.images[e.target_image].reshape(-1, 3).astype(int)
        assert e.images[e.target_image].shape == (64, 64, 3)
        assert (np.abs(img - img[0]).sum(1) > 60).any()  # a shape is drawn on the background
    with pytest.raises(ConfigError, match="unknown source"):
        build_examples("mnist", "train", 2)
