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
    """Image encoder + adapter: ``preprocess(images) -> pixels`` (CPU, in a collate function), then
    ``embedder(pixels) -> [n_images, K_img, D_llm]`` (on the model's device, differentiable in the adapter).

    ``tokens_per_image`` is K_img, the number of LLM positions one image takes.
    """

    tokens_per_image: int

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor: ...

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor: ...


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

    def plan(self, segments: Sequence[Segment] | Prompt, *, first_image: int = 0, leading_separator: bool = False,
             separator: str | None = None, tokens_per_image: int | None = None) -> SequencePlan:
        """Where every position comes from, before anything is embedded (what collate functions build)."""
        if isinstance(segments, Prompt):
            separator = segments.separator if separator is None else separator
            segments = segments.segments
        segments = list(segments)
        k = tokens_per_image if tokens_per_image is not None else getattr(self.image_embedder, "tokens_per_image", None)
        ids_per_segment = self.tokenize(segments, leading_separator=leading_separator, separator=separator)
        plan = SequencePlan()
        image = first_image
        for s, (seg, seg_ids) in enumerate(zip(segments, ids_per_segment)):
            plan.extend(seg_ids, TEXT, s)  # the segment's text, or the separator in front of an image
            if isinstance(seg, ImageSegment):
                if k is None:
                    raise InvalidPromptError("this prompt has images but the embedder has no image embedder (adapter)")
                plan.extend([-1] * k, image, s)
                plan.images.append(seg.image)
                image += 1
        return plan

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
            images = [s.image for s in segments if isinstance(s, ImageSegment)]
            image_features = self.image_embedder(self.image_embedder.preprocess(images).to(self.device))
        if image_features is not None and image_features.shape[0] != n_images:
            raise InvalidPromptError(f"got features for {image_features.shape[0]} images but the segments hold {n_images}")
        k = int(image_features.shape[1]) if image_features is not None else 0
        plan = self.plan(segments, first_image=first_image, leading_separator=leading_separator, separator=separator,
                         tokens_per_image=k)
        if not plan.input_ids:
            raise InvalidPromptError("nothing to embed: the segments are empty")
        dev = self.device
        ids = torch.tensor(plan.input_ids, dtype=torch.long, device=dev)
        image_index = torch.tensor(plan.image_index, dtype=torch.long, device=dev)
        embeds = self.token_embedding(ids.clamp(min=0))
        if n_images:
            flat = image_features.reshape(-1, image_features.shape[-1]).to(dev, embeds.dtype)
            embeds = scatter_image_tokens(embeds, image_index - first_image, flat, k)
        return InterleavedSequence(embeds, ids, image_index, torch.tensor(plan.segment_index, dtype=torch.long, device=dev))


@dataclass
class SequencePlan:
    """Token ids (``-1`` at image positions), image number and segment number of every position; the images."""

    input_ids: list[int] = field(default_factory=list)
    image_index: list[int] = field(default_factory=list)
    segment_index: list[int] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)

    def extend(self, ids: Sequence[int], image: int, segment: int) -> None:
        self.input_ids.extend(ids)
        self.image_index.extend([image] * len(ids))
        self.segment_index.extend([segment] * len(ids))

    def __len__(self) -> int:
        return len(self.input_ids)


def scatter_image_tokens(embeds: torch.Tensor, image_index: torch.Tensor, features: torch.Tensor,
                         tokens_per_image: int) -> torch.Tensor:
    """Put image features into the image positions of ``embeds`` (any leading shape, ``[..., T, D]``).

    ``image_index`` (``[..., T]``) numbers the image of each position (``< 0`` for text and padding) in the order of
    ``features`` ``[n_images * K, D]``; within an image, its positions take its K feature rows in order. Differentiable
    in ``features`` (gradients reach the adapter).
    """
    is_image = image_index >= 0
    # rank of each image position within its image block: positions of one image are contiguous
    flat_index = image_index.reshape(-1)
    flat_is = is_image.reshape(-1)
    rank = torch.zeros_like(flat_index)
    where = torch.nonzero(flat_is).flatten()
    if where.numel():
        first = torch.ones_like(where, dtype=torch.bool)
        first[1:] = (flat_index[where[1:]] != flat_index[where[:-1]]) | (where[1:] != where[:-1] + 1)
        block_start = torch.cummax(torch.where(first, torch.arange(len(where), device=where.device),
                                               torch.zeros_like(where)), 0).values
        rank[where] = torch.arange(len(where), device=where.device) - block_start
    row = (flat_index.clamp(min=0) * tokens_per_image + rank).reshape(image_index.shape)
    gathered = features[row.clamp(max=max(features.shape[0] - 1, 0))] if features.shape[0] else torch.zeros_like(embeds)
    return torch.where(is_image[..., None], gathered.to(embeds.dtype), embeds)


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
