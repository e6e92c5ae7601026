"""The prompt model: builders, roles and policies, rendering, images, chat round trips, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mmcompress import ImageSegment, InvalidPromptError, Policy, Prompt, Role, TextSegment
from mmcompress.errors import ImageError


def test_plain_string_is_one_compressible_segment():
    p = Prompt.coerce("hello world")
    assert len(p) == 1 and p.segments[0].role is Role.TEXT and p.segments[0].policy is Policy.GLOBAL
    assert p.text == "hello world"


def test_documents_with_instruction_and_question_keep_order_and_defaults():
    p = Prompt.from_documents(["d1", "d2"], instruction="Be brief.", question="Which?")
    assert [s.role for s in p.segments] == [Role.INSTRUCTION, Role.CONTEXT, Role.CONTEXT, Role.QUESTION]
    assert [s.policy for s in p.segments] == [Policy.KEEP, Policy.GLOBAL, Policy.GLOBAL, Policy.KEEP]
    assert p.text == "Be brief.\n\nd1\n\nd2\n\nWhich?"
    assert p.question == "Which?" and p.instruction == "Be brief."
    assert Prompt.coerce(["d1", "d2"], instruction="Be brief.", question="Which?") == p


def test_policies_own_rate_keep_and_overrides():
    assert TextSegment("x", role="document", rate=0.3).policy is Policy.OWN_RATE
    assert TextSegment("x", keep=True).policy is Policy.KEEP
    assert TextSegment("x", role="question", keep=False).policy is Policy.GLOBAL
    with pytest.raises(InvalidPromptError, match="rate"):
        TextSegment("x", rate=1.5)
    with pytest.raises(InvalidPromptError, match="role"):
        TextSegment("x", role="narrator")


def test_chat_messages_roles_and_round_trip():
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Tell me about Paris."},
        {"role": "assistant", "content": "Paris is the capital of France."},
        {"role": "user", "content": "And Berlin?"},
    ]
    p = Prompt.coerce(messages)
    assert [s.role for s in p.segments] == [Role.INSTRUCTION, Role.CONTEXT, Role.CONTEXT, Role.QUESTION]
    assert p.to_messages() == messages
    shorter = p.replace_segments([p.segments[0], p.segments[2].replace(text="Paris: capital."), p.segments[3]])
    assert shorter.to_messages()[1] == {"role": "assistant", "content": "Paris: capital."}


def test_chat_parts_with_images(tmp_path):
    path = tmp_path / "img.png"
    Image.new("RGB", (4, 4), "red").save(path)
    messages = [{"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image", "image": str(path)},
                                             {"type": "text", "text": " what colour?"}]}]
    p = Prompt.from_messages(messages)
    assert isinstance(p.segments[1], ImageSegment)
    assert p.text == "Look: <image> what colour?"
    rebuilt = p.to_messages()[0]["content"]
    assert [part["type"] for part in rebuilt] == ["text", "image", "text"]


def test_interleaved_markers_place_images_in_order():
    red, blue = Image.new("RGB", (2, 2), "red"), np.zeros((3, 3, 3), dtype=np.uint8)
    p = Prompt.from_interleaved("Photo A: <image> Photo B: <image> Which one?", [red, blue])
    kinds = [type(s).__name__ for s in p.segments]
    assert kinds == ["TextSegment", "ImageSegment", "TextSegment", "ImageSegment", "TextSegment"]
    assert p.images[0] is red and p.images[1] is blue
    assert p.text == "Photo A: <image> Photo B: <image> Which one?"


def test_marker_count_must_match_images():
    with pytest.raises(InvalidPromptError, match="2 <image> marker"):
        Prompt.from_interleaved("<image> and <image>", [Image.new("RGB", (2, 2))])
    with pytest.raises(InvalidPromptError, match="0 <image>"):
        Prompt.coerce("no markers here", images=[Image.new("RGB", (2, 2))])


def test_image_forms_convert_to_rgb(tmp_path):
    gray = Image.new("L", (5, 4), 128)
    rgba = Image.new("RGBA", (5, 4), (255, 0, 0, 0))  # fully transparent red -> white
    chw = torch.rand(3, 4, 5)
    for image in (gray, rgba, chw, np.zeros((4, 5)), np.zeros((4, 5, 4), dtype=np.uint8)):
        pil = ImageSegment(image).to_pil()
        assert pil.mode == "RGB" and pil.size == (5, 4)
    assert ImageSegment(rgba).to_pil().getpixel((0, 0)) == (255, 255, 255)


def test_bad_images_are_image_errors(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        ImageSegment(tmp_path / "missing.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="cannot read"):
        ImageSegment(broken).to_pil()
    with pytest.raises(ImageError, match="shape"):
        ImageSegment(np.zeros((2, 3, 7))).to_pil()
    with pytest.raises(ImageError, match="cannot use"):
        ImageSegment(object()).to_pil()


@pytest.mark.parametrize("bad", [None, 3, b"bytes", []])
def test_unusable_prompts_are_prompt_errors(bad):
    with pytest.raises(InvalidPromptError):
        Prompt.coerce(bad)


def test_bad_chat_messages():
    with pytest.raises(InvalidPromptError, match="role"):
        Prompt.from_messages([{"content": "x"}])
    with pytest.raises(InvalidPromptError, match="unknown role"):
        Prompt.from_messages([{"role": "wizard", "content": "x"}])
