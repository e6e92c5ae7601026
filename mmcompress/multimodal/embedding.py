"""One embedded sequence from an interleaved image-text prompt.

Text segments become the LLM's token embeddings; each ``<image>`` becomes the output of an :class:`ImageEmbedder`
(an image encoder followed by an adapter, ``images -> [n_images, K_img, D_llm]``) at the marker's place. Every
position remembers where it came from (text token id, image number, segment number), so callers can check that
images land at their markers, chunk without splitting an image, and build autoencoding targets for the text.

Segment policies decide what a soft compressor compresses (:func:`split_layout`): kept segments (instructions,
questions, anything marked ``keep``) stay as text for the decoder; everything else, images included, is compressed.

    embedder = InterleavedEmbedder(tokenizer, llm.get_input_embeddings(), image_embedder)
    seq = embedder.embed(prompt.segments)            # InterleavedSequence
    seq.embeds            # [T, D]
    seq.image_index       # [T]: -1 for text, i for the tokens of image i
    batch = pad_sequences([seq, other])               # InterleavedBatch: [B, T, D] + attention mask
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import InvalidPromptError
from ..prompt import ImageSegment, Prompt, Role, Segment, TextSegment

TEXT = -1  # image_index of a text position
PAD = -2  # image_index / segment_index of padding


@runtime_checkable
class ImageEmbedder(Protocol):
    """Image encoder + adapter: a list of images (PIL, arrays, tensors or paths) -> ``[n_images, K_img, D_llm]``.

    ``tokens_per_image`` is K_img, the number of LLM positions one image takes.
    """

    tokens_per_image: int

    def __call__(self, images: Sequence[Any]) -> torch.Tensor: ...


@dataclass
class InterleavedSequence:
    """One embedded interleaved sequence, position by position.

    ``embeds`` ``[T, D]``; ``input_ids`` ``[T]`` (the token id, ``-1`` at image positions); ``image_index`` ``[T]``
    (``-1`` for text, ``i`` for the tokens of the prompt's image ``i``); ``segment_index`` ``[T]`` (which of the
    embedded segments the position came from).
    """

    embeds: torch.Tensor
    input_ids: torch.Tensor
    image_index: torch.Tensor
    segment_index: torch.Tensor

    def __len__(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.ones(len(self), dtype=torch.long, device=self.embeds.device)

    @property
    def is_image(self) -> torch.Tensor:
        return self.image_index >= 0

    @property
    def num_images(self) -> int:
        return int(self.image_index.max().item()) + 1 if self.is_image.any() else 0

    @property
    def num_text_tokens(self) -> int:
        return int((~self.is_image).sum())

    def image_positions(self, i: int) -> torch.Tensor:
        return torch.nonzero(self.image_index == i).flatten()

    def blocks(self) -> list[tuple[int, int]]:
        """Atomic ``(start, end)`` spans: one per text token, one per image (never split)."""
        spans: list[tuple[int, int]] = []
        index = self.image_index.tolist()
        t = 0
        while t < len(index):
            end = t + 1
            if index[t] >= 0:
                while end < len(index) and index[end] == index[t]:
                    end += 1
            spans.append((t, end))
            t = end
        return spans

    def slice(self, start: int, end: int) -> InterleavedSequence:
        return InterleavedSequence(self.embeds[start:end], self.input_ids[start:end], self.image_index[start:end],
                                   self.segment_index[start:end])

    @classmethod
    def concat(cls, parts: Sequence[InterleavedSequence]) -> InterleavedSequence:
        return cls(torch.cat([p.embeds for p in parts]), torch.cat([p.input_ids for p in parts]),
                   torch.cat([p.image_index for p in parts]), torch.cat([p.segment_index for p in parts]))


@dataclass
class InterleavedBatch:
    """Padded sequences: ``embeds [B, T, D]``, ``attention_mask [B, T]`` (0 on padding), ``input_ids [B, T]`` (``-1``
    on images, ``pad_id`` on padding), ``image_index [B, T]`` (``-1`` text, ``-2`` padding)."""

    embeds: torch.Tensor
    attention_mask: torch.Tensor
    input_ids: torch.Tensor
    image_index: torch.Tensor


def pad_sequences(seqs: Sequence[InterleavedSequence], *, side: str = "right", pad_id: int = 0) -> InterleavedBatch:
    """Stack sequences of different lengths, padding on ``side`` (``"left"`` for generation)."""
    if not seqs:
        raise InvalidPromptError("nothing to pad: no sequences")
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max(len(s) for s in seqs)
    dim = seqs[0].embeds.shape[-1]
    ref = seqs[0].embeds
    embeds = ref.new_zeros(len(seqs), width, dim)
    mask = torch.zeros(len(seqs), width, dtype=torch.long, device=ref.device)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long, device=ref.device)
    images = torch.full((len(seqs), width), PAD, dtype=torch.long, device=ref.device)
    for b, s in enumerate(seqs):
        n = len(s)
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        embeds[b, sl] = s.embeds
        mask[b, sl] = 1
        ids[b, sl] = s.input_ids
        images[b, sl] = s.image_index
    return InterleavedBatch(embeds, mask, ids, images)


class InterleavedEmbedder:
    """Embed segments of a prompt as one sequence of LLM input embeddings.

    ``token_embedding`` is the LLM's input embedding (``llm.get_input_embeddings()``); ``image_embedder`` maps
    images to ``[n, K_img, D]`` in the same space (an adapter over an image encoder). Text keeps the separators of
    :meth:`Prompt.render` (the text of segment ``i > 0`` is preceded by its separator), so the text positions of a
    prompt without images tokenise exactly like its rendered text, piece by piece.
    """

    def __init__(self, tokenizer: Any, token_embedding: torch.nn.Module, image_embedder: ImageEmbedder | None = None,
                 *, separator: str = "\n\n"):
        self.tokenizer = tokenizer
        self.token_embedding = token_embedding
        self.image_embedder = image_embedder
        self.separator = separator

    @property
    def device(self) -> torch.device:
        return self.token_embedding.weight.device

    def segment_texts(self, segments: Sequence[Segment], *, leading_separator: bool = False,
                      separator: str | None = None) -> list[str | None]:
        """The text each segment contributes (its separator + text); for an image, its separator or ``None``."""
        default = self.separator if separator is None else separator
        texts: list[str | None] = []
        for i, seg in enumerate(segments):
            sep = "" if (i == 0 and not leading_separator) else (default if seg.sep is None else seg.sep)
            texts.append(sep + seg.text if isinstance(seg, TextSegment) else (sep or None))
        return texts

    def tokenize(self, segments: Sequence[Segment], *, leading_separator: bool = False,
                 separator: str | None = None) -> list[list[int]]:
        """Token ids per segment; for an image, the ids of its separator (usually none)."""
        texts = self.segment_texts(segments, leading_separator=leading_separator, separator=separator)
        out: list[list[int]] = []
        for t in texts:
            out.append(list(self.tokenizer(t, add_special_tokens=False)["input_ids"]) if t else [])
        return out

    def embed(self, segments: Sequence[Segment] | Prompt, *, image_features: torch.Tensor | None = None,
              first_image: int = 0, leading_separator: bool = False, separator: str | None = None) -> InterleavedSequence:
        """Embed ``segments`` in order.

        ``image_features`` (``[n_images, K_img, D]``) skips the image embedder, e.g. when features were computed in a
        batch for many prompts or reduced by a hard vision method. ``first_image`` numbers the images (their index in
        the whole prompt when ``segments`` is part of one).
        """
        if isinstance(segments, Prompt):
            separator = segments.separator if separator is None else separator
            segments = segments.segments
        segments = list(segments)
        n_images = sum(isinstance(s, ImageSegment) for s in segments)
        if image_features is None and n_images:
            if self.image_embedder is None:
                raise InvalidPromptError("this prompt has images but the embedder has no image embedder (adapter)")
            image_features = self.image_embedder([s.image for s in segments if isinstance(s, ImageSegment)])
        if image_features is not None and image_features.shape[0] != n_images:
            raise InvalidPromptError(f"got features for {image_features.shape[0]} images but the segments hold {n_images}")
        ids_per_segment = self.tokenize(segments, leading_separator=leading_separator, separator=separator)
        flat_ids = [i for ids in ids_per_segment for i in ids]
        dev = self.device
        text_embeds = self.token_embedding(torch.tensor(flat_ids, dtype=torch.long, device=dev)) if flat_ids else None
        pieces, ids, images, segs = [], [], [], []
        cursor, image = 0, 0
        for s, (seg, seg_ids) in enumerate(zip(segments, ids_per_segment)):
            if seg_ids:  # the segment's text, or the separator in front of an image
                pieces.append(text_embeds[cursor : cursor + len(seg_ids)])
                ids.append(torch.tensor(seg_ids, dtype=torch.long))
                images.append(torch.full((len(seg_ids),), TEXT, dtype=torch.long))
                segs.append(torch.full((len(seg_ids),), s, dtype=torch.long))
                cursor += len(seg_ids)
            if isinstance(seg, ImageSegment):
                feats = image_features[image].to(dev)
                k = feats.shape[0]
                pieces.append(feats.to(text_embeds.dtype if text_embeds is not None else feats.dtype))
                ids.append(torch.full((k,), -1, dtype=torch.long))
                images.append(torch.full((k,), first_image + image, dtype=torch.long))
                segs.append(torch.full((k,), s, dtype=torch.long))
                image += 1
        if not pieces:
            raise InvalidPromptError("nothing to embed: the segments are empty")
        return InterleavedSequence(torch.cat(pieces), torch.cat(ids).to(dev), torch.cat(images).to(dev),
                                   torch.cat(segs).to(dev))


# ------------------------------------------------------------------------------------------------ segment policies
@dataclass
class Layout:
    """How a prompt is split for a soft compressor.

    ``compressed``: the segments the encoder reads and replaces by soft tokens (images always, text unless kept).
    ``prefix``: kept segments before the first compressed one; ``suffix``: kept segments after it (the question,
    kept notes between images). The decoder reads ``prefix + soft tokens + suffix``, so kept text is never lost.
    ``image_offset``: how many images come before ``compressed`` (to number them in the whole prompt).
    """

    prefix: list[Segment] = field(default_factory=list)
    compressed: list[Segment] = field(default_factory=list)
    suffix: list[Segment] = field(default_factory=list)

    @property
    def images(self) -> list[Any]:
        return [s.image for s in self.compressed if isinstance(s, ImageSegment)]

    @property
    def kept_text(self) -> str:
        return "".join(s.text for s in self.suffix if isinstance(s, TextSegment))


_TRAILING_QUESTION = re.compile(r"(?s)^(.*?)([^.!?\n]*\?\s*)$")


def split_trailing_question(segment: TextSegment) -> tuple[TextSegment | None, TextSegment | None]:
    """Split ``"... Photo B: Which one shows a cat?"`` into the text before and a kept question segment.

    Only a final sentence ending in ``?`` counts; without one the segment is returned unchanged (``(seg, None)``).
    """
    m = _TRAILING_QUESTION.match(segment.text)
    if not m or not m.group(2).strip():
        return segment, None
    before, question = m.group(1), m.group(2)
    lead = len(question) - len(question.lstrip())
    before, question = before + question[:lead], question[lead:].rstrip()
    head = segment.replace(text=before) if before else None  # whitespace too, so the rendered text is unchanged
    tail = TextSegment(question, role=Role.QUESTION, sep="" if head is not None else segment.sep, meta=dict(segment.meta))
    return head, tail


def split_layout(prompt: Prompt, *, keep_trailing_question: bool = True) -> Layout:
    """Apply the segment policies: kept segments stay text, everything else is compressed.

    With ``keep_trailing_question`` and no question segment, a final text segment ending in a question sentence is
    split so that the question stays text (the CLI's ``"Photo A: <image> Photo B: <image> Which...?"``).
    """
    segments = list(prompt.segments)
    if keep_trailing_question and prompt.question is None and segments and isinstance(segments[-1], TextSegment) \
            and segments[-1].compressible:
        head, question = split_trailing_question(segments[-1])
        if question is not None:
            segments = segments[:-1] + ([head] if head is not None else []) + [question]
    layout = Layout()
    for seg in segments:
        if seg.compressible:
            layout.compressed.append(seg)
        elif layout.compressed:
            layout.suffix.append(seg)
        else:
            layout.prefix.append(seg)
    return layout
