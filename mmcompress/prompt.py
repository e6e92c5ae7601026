"""The prompt model: an ordered list of text and image segments.

Every compressor in mmcompress reads and writes a :class:`Prompt`. Text segments carry a *role* (instruction,
context/document, question, free text) and a *policy* (compress at the global rate, compress at their own rate, or
keep verbatim); image segments carry an image in any common form and are passed through untouched by text-only
methods.

    >>> p = Prompt.from_documents(["doc one", "doc two"], instruction="Answer briefly.", question="Which doc?")
    >>> [s.role.value for s in p.segments]
    ['instruction', 'context', 'context', 'question']
    >>> p.text
    'Answer briefly.\\n\\ndoc one\\n\\ndoc two\\n\\nWhich doc?'
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Union

from .errors import ImageError, InvalidPromptError

IMAGE_TOKEN = "<image>"
DEFAULT_SEPARATOR = "\n\n"  # what LLMLingua puts between instruction, documents and question


class Role(str, Enum):
    INSTRUCTION = "instruction"
    CONTEXT = "context"
    QUESTION = "question"
    TEXT = "text"

    @classmethod
    def parse(cls, value: str | Role) -> Role:
        if isinstance(value, Role):
            return value
        aliases = {"document": "context", "doc": "context", "system": "instruction", "query": "question"}
        value = aliases.get(str(value).lower(), str(value).lower())
        try:
            return cls(value)
        except ValueError:
            raise InvalidPromptError(
                f"unknown segment role {value!r}; use one of: instruction, context (document), question, text"
            ) from None


class Policy(str, Enum):
    GLOBAL = "global"  # compressed at the prompt-wide rate / token budget
    OWN_RATE = "own_rate"  # compressed at the segment's own rate
    KEEP = "keep"  # kept verbatim


# Instructions and questions are never compressed unless the user says otherwise.
_KEPT_BY_DEFAULT = {Role.INSTRUCTION, Role.QUESTION}


@dataclass(frozen=True)
class TextSegment:
    """A piece of text with a role and a compression policy.

    ``keep=None`` means "decide by role": instructions and questions are kept, everything else is compressed.
    ``rate`` (fraction of tokens kept, in (0, 1]) gives the segment its own rate instead of the global one.
    ``sep`` is the text placed between the previous segment and this one (``None``: the prompt's separator).
    """

    text: str
    role: Role = Role.TEXT
    keep: bool | None = None
    rate: float | None = None
    sep: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise InvalidPromptError(f"text segment needs a str, got {type(self.text).__name__}")
        try:
            self.text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidPromptError(f"the text has an invalid character at position {e.start} "
                                     f"({self.text[e.start]!r}, a lone UTF-16 surrogate); fix the input's encoding") from None
        object.__setattr__(self, "role", Role.parse(self.role))
        if self.rate is not None and not (0.0 < float(self.rate) <= 1.0):
            raise InvalidPromptError(f"segment rate must be in (0, 1], got {self.rate}")

    @property
    def policy(self) -> Policy:
        keep = self.keep if self.keep is not None else self.role in _KEPT_BY_DEFAULT
        if keep:
            return Policy.KEEP
        return Policy.OWN_RATE if self.rate is not None else Policy.GLOBAL

    @property
    def compressible(self) -> bool:
        return self.policy is not Policy.KEEP

    def replace(self, **changes: Any) -> TextSegment:
        return dataclasses.replace(self, **changes)


ImageLike = Union["PIL.Image.Image", "np.ndarray", "torch.Tensor", str, Path]  # noqa: F821


@dataclass(frozen=True)
class ImageSegment:
    """An image: a PIL image, an ``(H, W[, C])`` array, a ``(C, H, W)`` tensor, or a path to an image file.

    Paths are checked when the segment is built; pixels are decoded lazily by :meth:`to_pil`.
    """

    image: Any
    sep: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.image, (str, Path)):
            path = Path(self.image).expanduser()
            if not path.is_file():
                raise ImageError(f"image file not found: {path}")
            object.__setattr__(self, "image", path)

    @property
    def policy(self) -> Policy:
        return Policy.GLOBAL

    @property
    def compressible(self) -> bool:
        return True

    def replace(self, **changes: Any) -> ImageSegment:
        return dataclasses.replace(self, **changes)

    def to_pil(self) -> PIL.Image.Image:  # noqa: F821
        """The image as an RGB PIL image (grayscale, palette and RGBA inputs are converted)."""
        from .image_io import to_pil_rgb

        return to_pil_rgb(self.image)


Segment = Union[TextSegment, ImageSegment]


@dataclass(frozen=True)
class Prompt:
    """An ordered list of segments, rendered to text by joining them with ``separator``.

    Images render as ``image_token`` in :attr:`text`.
    """

    segments: tuple[Segment, ...]
    separator: str = DEFAULT_SEPARATOR
    image_token: str = IMAGE_TOKEN

    def __post_init__(self) -> None:
        segments = tuple(self.segments)
        for s in segments:
            if not isinstance(s, (TextSegment, ImageSegment)):
                raise InvalidPromptError(f"a prompt holds TextSegment/ImageSegment, got {type(s).__name__}")
        object.__setattr__(self, "segments", segments)

    # ----------------------------------------------------------------------------------------------- builders
    @classmethod
    def from_text(cls, text: str, *, role: Role | str = Role.TEXT, **kw: Any) -> Prompt:
        """One text segment (role ``text``: compressed at the global rate)."""
        _check_str(text, "prompt text")
        return cls((TextSegment(text, role=role),), **kw)

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        question: str | None = None,
        separator: str = DEFAULT_SEPARATOR,
    ) -> Prompt:
        """Instruction (kept), documents (compressed), question (kept), joined by ``separator``."""
        if isinstance(documents, str):
            documents = [documents]
        segments: list[Segment] = []
        if instruction:
            segments.append(TextSegment(_check_str(instruction, "instruction"), role=Role.INSTRUCTION))
        for i, doc in enumerate(documents):
            segments.append(TextSegment(_check_str(doc, f"document {i}"), role=Role.CONTEXT, meta={"document": i}))
        if question:
            segments.append(TextSegment(_check_str(question, "question"), role=Role.QUESTION))
        return cls(tuple(segments), separator=separator)

    @classmethod
    def from_messages(cls, messages: Sequence[dict[str, Any]], *, keep_last_user: bool = True) -> Prompt:
        """Chat messages ``[{"role": "system"|"user"|"assistant", "content": str | parts}]``.

        The system message becomes a kept instruction, the last user message a kept question (the turn being
        answered), and earlier turns compressible context. ``content`` may be a list of parts
        ``{"type": "text", "text": ...}`` / ``{"type": "image", "image": ...}`` as in HF chat templates.
        :meth:`to_messages` rebuilds the message list from a (compressed) prompt.
        """
        if not isinstance(messages, Sequence) or not messages:
            raise InvalidPromptError("messages must be a non-empty list of {'role', 'content'} dicts")
        last_user = max((i for i, m in enumerate(messages) if _msg_role(m, i) == "user"), default=None)
        segments: list[Segment] = []
        for i, message in enumerate(messages):
            chat_role = _msg_role(message, i)
            if chat_role == "system":
                role = Role.INSTRUCTION
            elif chat_role == "user" and i == last_user and keep_last_user:
                role = Role.QUESTION
            else:
                role = Role.CONTEXT
            first = True
            for part in _message_parts(message, i):
                meta = {"message": i, "chat_role": chat_role}
                sep = None if first else ""  # parts of one message are contiguous
                first = False
                if part[0] == "image":
                    segments.append(ImageSegment(part[1], sep=sep, meta=meta))
                else:
                    segments.append(TextSegment(part[1], role=role, sep=sep, meta=meta))
        return cls(tuple(segments))

    @classmethod
    def from_interleaved(
        cls,
        text: str,
        images: Sequence[Any] = (),
        *,
        role: Role | str = Role.TEXT,
        image_token: str = IMAGE_TOKEN,
        question: str | None = None,
        instruction: str | None = None,
    ) -> Prompt:
        """A string with ``<image>`` markers plus the images, in order. Text around the markers stays exact."""
        _check_str(text, "interleaved text")
        pieces = text.split(image_token)
        if len(pieces) - 1 != len(images):
            raise InvalidPromptError(
                f"the text has {len(pieces) - 1} {image_token} marker(s) but {len(images)} image(s) were given"
            )
        segments: list[Segment] = []
        if instruction:
            segments.append(TextSegment(_check_str(instruction, "instruction"), role=Role.INSTRUCTION))
        for i, piece in enumerate(pieces):
            first = not segments
            if piece:
                segments.append(TextSegment(piece, role=role, sep=None if first else ""))
            if i < len(images):
                segments.append(ImageSegment(images[i], sep=None if not segments else "", meta={"image": i}))
        if question:
            segments.append(TextSegment(_check_str(question, "question"), role=Role.QUESTION))
        return cls(tuple(segments), image_token=image_token)

    @classmethod
    def coerce(
        cls,
        prompt: Prompt | str | Sequence[Any],
        *,
        question: str | None = None,
        instruction: str | None = None,
        images: Sequence[Any] | None = None,
    ) -> Prompt:
        """Build a prompt from whatever a user passes: a Prompt, a string (with ``<image>`` markers if
        ``images`` is given), a list of documents, a list of chat messages, or a list of segments."""
        if isinstance(prompt, Prompt):
            out = prompt
        elif isinstance(prompt, str):
            if images is not None:
                return cls.from_interleaved(prompt, images or (), question=question, instruction=instruction)
            out = cls.from_text(prompt)
        elif isinstance(prompt, Sequence) and prompt and all(isinstance(x, dict) for x in prompt):
            out = cls.from_messages(prompt)
        elif isinstance(prompt, Sequence) and prompt and all(isinstance(x, (TextSegment, ImageSegment)) for x in prompt):
            out = cls(tuple(prompt))
        elif isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
            if not prompt:
                raise InvalidPromptError("the prompt is empty: pass a non-empty string or list of documents")
            return cls.from_documents(list(prompt), instruction=instruction, question=question)
        else:
            raise InvalidPromptError(
                f"cannot build a prompt from {type(prompt).__name__}; pass a str, a list of documents, "
                "chat messages, or a Prompt"
            )
        if images:
            raise InvalidPromptError("images= is only accepted with a string prompt containing <image> markers")
        return out.with_instruction(instruction).with_question(question)

    # --------------------------------------------------------------------------------------------- accessors
    @property
    def text(self) -> str:
        return self.render()

    def render(self, image_token: str | None = None) -> str:
        token = self.image_token if image_token is None else image_token
        parts: list[str] = []
        for i, seg in enumerate(self.segments):
            if i:
                parts.append(self.separator if seg.sep is None else seg.sep)
            parts.append(seg.text if isinstance(seg, TextSegment) else token)
        return "".join(parts)

    def __str__(self) -> str:
        return self.render()

    def __len__(self) -> int:
        return len(self.segments)

    def __iter__(self):
        return iter(self.segments)

    @property
    def text_segments(self) -> list[TextSegment]:
        return [s for s in self.segments if isinstance(s, TextSegment)]

    @property
    def images(self) -> list[Any]:
        return [s.image for s in self.segments if isinstance(s, ImageSegment)]

    @property
    def has_images(self) -> bool:
        return any(isinstance(s, ImageSegment) for s in self.segments)

    @property
    def question(self) -> str | None:
        qs = [s.text for s in self.text_segments if s.role is Role.QUESTION]
        return "\n".join(qs) if qs else None

    @property
    def instruction(self) -> str | None:
        ins = [s.text for s in self.text_segments if s.role is Role.INSTRUCTION]
        return "\n".join(ins) if ins else None

    def is_empty(self) -> bool:
        return not self.has_images and not any(s.text.strip() for s in self.text_segments)

    # ------------------------------------------------------------------------------------------- transforms
    def replace_segments(self, segments: Iterable[Segment]) -> Prompt:
        return dataclasses.replace(self, segments=tuple(segments))

    def with_question(self, question: str | None) -> Prompt:
        if not question:
            return self
        return self.replace_segments((*self.segments, TextSegment(_check_str(question, "question"), role=Role.QUESTION)))

    def with_instruction(self, instruction: str | None) -> Prompt:
        if not instruction:
            return self
        seg = TextSegment(_check_str(instruction, "instruction"), role=Role.INSTRUCTION)
        return self.replace_segments((seg, *self.segments))

    def to_messages(self) -> list[dict[str, Any]]:
        """Rebuild chat messages (for prompts made by :meth:`from_messages`): text parts joined, images as parts."""
        messages: list[dict[str, Any]] = []
        index: dict[Any, dict[str, Any]] = {}
        for seg in self.segments:
            key = seg.meta.get("message")
            if key not in index:
                role = seg.meta.get("chat_role") or ("system" if getattr(seg, "role", None) is Role.INSTRUCTION else "user")
                index[key] = {"role": role, "content": []}
                messages.append(index[key])
            parts = index[key]["content"]
            if isinstance(seg, ImageSegment):
                parts.append({"type": "image", "image": seg.image})
            elif parts and parts[-1]["type"] == "text":
                parts[-1]["text"] += seg.text
            else:
                parts.append({"type": "text", "text": seg.text})
        for m in messages:  # plain string content where a message is text only
            if all(p["type"] == "text" for p in m["content"]):
                m["content"] = "".join(p["text"] for p in m["content"])
        return messages


def _check_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidPromptError(f"{what} must be a str, got {type(value).__name__}")
    return value


def _msg_role(message: Any, i: int) -> str:
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        raise InvalidPromptError(f"message {i} must be a dict with 'role' and 'content'")
    role = str(message["role"]).lower()
    if role not in {"system", "user", "assistant", "tool", "developer"}:
        raise InvalidPromptError(f"message {i} has unknown role {role!r}")
    return "system" if role == "developer" else role


def _message_parts(message: dict[str, Any], i: int) -> list[tuple[str, Any]]:
    content = message["content"]
    if isinstance(content, str):
        return [("text", content)]
    if not isinstance(content, Sequence):
        raise InvalidPromptError(f"message {i} content must be a str or a list of parts")
    parts: list[tuple[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            parts.append(("text", _check_str(part.get("text"), f"message {i} text part")))
        elif kind in {"image", "image_url"}:
            image = part.get("image", part.get("path", part.get("url", part.get("image_url"))))
            if isinstance(image, dict):
                image = image.get("url")
            if image is None:
                raise InvalidPromptError(f"message {i} has an image part without an image")
            parts.append(("image", image))
        else:
            raise InvalidPromptError(f"message {i} has a part of unknown type {kind!r}")
    return parts

