"""Interleaved image-text QA built from real images: CIFAR-10 photos and easy-VQA shapes.

Each example is a prompt with two or three images at ``<image>`` markers and a question that needs one of them:

- ``cifar-which``  "Image 1: <image> Image 2: <image> ... Which image shows a cat?" -> "the second"
- ``cifar-what``   "... What is in the third image?" -> "cat"
- ``shape-colour`` "... What colour is the shape in the second image?" -> "blue"   (easy-VQA)
- ``shape-which``  "... Which image shows a red shape?" -> "the first"           (easy-VQA)
- ``shape-what``   "... What shape is in the first image?" -> "circle"           (easy-VQA)

plus single-image ``caption`` examples ("<image> What is this?" -> "a red circle" / "a cat") that train an adapter to
describe one image. Train, validation and test examples use disjoint images: CIFAR's 2,000 dev images are split
1,440 / 160 / 400; easy-VQA ships its own test images, and the last tenth of its train images are the validation
split. Training runs and design choices are scored on ``validation``; ``test`` is for the reported numbers only.
Everything is seeded, so a split is the same in every run.

    train = build_examples("shapes", "train", n=2000, seed=0)
    test = build_examples("shapes", "test", n=200, seed=1)
    train[0].prompt()     # Prompt with the images at their markers and the question as a kept segment
"""
from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..data_paths import resolve_data_path
from ..errors import ConfigError
from ..prompt import Prompt, Role, TextSegment

ORDINALS = ["first", "second", "third", "fourth", "fifth"]
CIFAR_FILE = "cifar10_dev.npz"
CIFAR_TEST_START = 1600  # images [0, 1440) train, [1440, 1600) validation, [1600, 2000) test
VALIDATION_FRACTION = 0.1  # of the train images (CIFAR dev and easy-VQA train alike)
SPLITS = ("train", "validation", "test")
SHAPES = ("circle", "rectangle", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "teal", "brown", "gray", "black")
CONTEXT_LINES = (
    "Here are some pictures.",
    "Look at the images below.",
    "The following images were sent by a user.",
    "Several pictures are shown in order.",
)
KINDS = {
    "cifar": ("cifar-which", "cifar-what"),
    "shapes": ("shape-colour", "shape-which", "shape-what"),
}


@dataclass
class InterleavedExample:
    """An interleaved prompt with its answer.

    ``context``: text with one ``<image>`` marker per image (the compressible part); ``question``: kept as text;
    ``labels``: what each image shows (for captioning); ``target_image``: the image the question needs.
    """

    context: str
    images: list[np.ndarray]
    question: str
    answer: str
    kind: str
    labels: list[str] = field(default_factory=list)
    target_image: int = 0

    def prompt(self) -> Prompt:
        base = Prompt.from_interleaved(self.context, self.images)
        question = TextSegment(self.question, role=Role.QUESTION, sep="")  # the context ends with a newline
        return base.replace_segments((*base.segments, question))

    @property
    def text(self) -> str:
        """The prompt with markers, as a user would type it."""
        return f"{self.context}{self.question}"


# --------------------------------------------------------------------------------------------------- sources
@functools.lru_cache(maxsize=4)
def load_cifar(split: str, path: str | None = None) -> tuple[np.ndarray, list[str]]:
    """CIFAR-10 dev images ``[n, 32, 32, 3]`` uint8 and class names, split train (1,440) / validation (160) /
    test (400)."""
    _check_split(split)
    try:
        file = resolve_data_path(path or f"../shared/data/{CIFAR_FILE}")
    except ConfigError:
        raise ConfigError(f"{path or CIFAR_FILE} not found; set the data path or MMCOMPRESS_SHARED to the folder "
                          f"holding data/{CIFAR_FILE}") from None
    data = np.load(file)
    images, labels = data["images"], [str(x) for x in data["labels"]]
    if split == "test":
        sl = slice(CIFAR_TEST_START, None)
    else:
        cut = _train_cut(CIFAR_TEST_START)
        sl = slice(0, cut) if split == "train" else slice(cut, CIFAR_TEST_START)
    return images[sl], labels[sl]


def _train_cut(n: int) -> int:
    """How many of ``n`` train-pool images train (the rest are the validation split)."""
    return n - max(1, int(round(n * VALIDATION_FRACTION)))


@functools.lru_cache(maxsize=4)
def load_shapes(split: str, max_images: int | None = None) -> tuple[np.ndarray, list[str], list[str]]:
    """easy-VQA images ``[n, 64, 64, 3]`` uint8 with the colour and shape of each (read off its questions)."""
    _check_split(split)
    try:
        import easy_vqa
    except ImportError:
        raise ConfigError("the shapes tasks need the easy-vqa package: pip install easy-vqa==1.0") from None
    from PIL import Image

    pool = "test" if split == "test" else "train"  # validation: the last tenth of easy-VQA's train images
    questions, answers, image_ids = (easy_vqa.get_train_questions() if pool == "train" else easy_vqa.get_test_questions())
    paths = easy_vqa.get_train_image_paths() if pool == "train" else easy_vqa.get_test_image_paths()
    colour: dict[int, str] = {}
    shape: dict[int, str] = {}
    for q, a, i in zip(questions, answers, image_ids):
        if a in COLOURS and q.startswith("what color"):
            colour[i] = a
        elif a in SHAPES:
            shape[i] = a
            m = re.match(r"what is the (\w+) shape\?", q)
            if m and m.group(1) in COLOURS:
                colour.setdefault(i, m.group(1))
    ids = sorted(i for i in paths if i in colour and i in shape)
    if pool == "train":
        ids = ids[: _train_cut(len(ids))] if split == "train" else ids[_train_cut(len(ids)):]
    if max_images:
        ids = ids[:max_images]
    images = np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in ids])
    return images, [colour[i] for i in ids], [shape[i] for i in ids]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


# ------------------------------------------------------------------------------------------------- examples
def _context(n: int, rng: random.Random, with_line: bool = True) -> str:
    line = rng.choice(CONTEXT_LINES) + "\n" if with_line else ""
    return line + "".join(f"Image {j + 1}: <image>\n" for j in range(n))


def _distinct(labels: Sequence[str], n: int, rng: random.Random, pool: Sequence[int]) -> list[int] | None:
    """``n`` indices (from ``pool``) whose labels are pairwise different, or None after a few tries."""
    for _ in range(50):
        picks = rng.sample(pool, n)
        if len({labels[i] for i in picks}) == n:
            return picks
    return None


def build_examples(source: str, split: str, n: int, *, seed: int = 0, num_images: Sequence[int] = (2, 3),
                   kinds: Sequence[str] | None = None, max_images: int | None = None,
                   context_line: bool = True) -> list[InterleavedExample]:
    """``n`` interleaved QA examples from ``source`` (``cifar``, ``shapes`` or ``mixed``), cycling over ``kinds``."""
    if source == "mixed":
        half = n // 2
        return build_examples("cifar", split, half, seed=seed, num_images=num_images, max_images=max_images,
                              context_line=context_line) + \
            build_examples("shapes", split, n - half, seed=seed + 1, num_images=num_images, max_images=max_images,
                           context_line=context_line)
    if source not in KINDS:
        raise ConfigError(f"unknown source {source!r}; use cifar, shapes or mixed")
    kinds = tuple(kinds or KINDS[source])
    bad = [k for k in kinds if k not in KINDS[source] and k != "caption"]
    if bad:
        raise ConfigError(f"unknown kinds {bad} for {source}; valid: {list(KINDS[source]) + ['caption']}")
    rng = random.Random(f"{source}-{split}-{seed}")
    if source == "cifar":
        images, labels = load_cifar(split)
        names = [f"{'an' if c[0] in 'aeiou' else 'a'} {c}" for c in labels]
        answers = {"which": labels, "what": labels}
    else:
        images, colours, shapes = load_shapes(split, max_images)
        labels = [f"{c} {s}" for c, s in zip(colours, shapes)]
        names = [f"a {c} {s}" for c, s in zip(colours, shapes)]
        answers = {"colour": colours, "which": colours, "what": shapes}
    pool = list(range(len(images)))
    out: list[InterleavedExample] = []
    while len(out) < n:
        kind = kinds[len(out) % len(kinds)]
        if kind == "caption":
            i = rng.choice(pool)
            out.append(InterleavedExample("<image>\n", [images[i]], "What is this?", names[i], kind, [labels[i]], 0))
            continue
        k = rng.choice(list(num_images))
        key = kind.split("-")[1]
        picks = _distinct(answers[key], k, rng, pool)
        if picks is None:
            continue
        target = rng.randrange(k)
        value = answers[key][picks[target]]
        if kind == "cifar-which":
            question, answer = f"Which image shows {names[picks[target]]}?", f"the {ORDINALS[target]}"
        elif kind == "cifar-what":
            question, answer = f"What is in the {ORDINALS[target]} image?", value
        elif kind == "shape-colour":
            question, answer = f"What colour is the shape in the {ORDINALS[target]} image?", value
        elif kind == "shape-which":
            question, answer = f"Which image shows a {value} shape?", f"the {ORDINALS[target]}"
        else:  # shape-what
            question, answer = f"What shape is in the {ORDINALS[target]} image?", value
        out.append(InterleavedExample(_context(k, rng, context_line), [images[i] for i in picks], question, answer,
                                      kind, [labels[i] for i in picks], target))
    return out


def answer_correct(prediction: str, answer: str) -> bool:
    """Normalised match: the answer's words appear at the start of the prediction (``"the second."`` counts)."""
    norm = lambda s: re.sub(r"[^a-z0-9 ]+", " ", s.lower()).split()  # noqa: E731
    pred, gold = norm(prediction), norm(answer)
    return bool(gold) and pred[: len(gold)] == gold


def accuracy(predictions: Sequence[str], examples: Sequence[InterleavedExample]) -> float:
    if not examples:
        return 0.0
    return float(np.mean([answer_correct(p, e.answer) for p, e in zip(predictions, examples)]))


def examples_to_rows(examples: Sequence[InterleavedExample]) -> list[dict[str, Any]]:
    """Plain dicts for logging (no pixels)."""
    return [{"text": e.text, "answer": e.answer, "kind": e.kind, "labels": e.labels} for e in examples]
