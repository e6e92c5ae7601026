"""One runner for the HF vision-language families: the model's own processor, tower and projector/merger, a visual
token reduction where the family allows it, FastV inside the LLM, and the model's own ``generate()``.

Every family follows the same route (:meth:`VLMRunner.prepare`):

1. the prompts go through the model's own processor, which expands each image marker into the image's full run of
   placeholder tokens (and computes ``pixel_values``, tile sizes or patch grids);
2. the family encodes every image (:meth:`VLMRunner.encode_images`) into the LLM-ready tokens of that image, reduced
   to K by the compressor when one is given;
3. each image's run of placeholders is cut to its K tokens (text untouched), rows are left-padded into a batch;
4. ``model.generate(input_ids=..., mm_encoder_outputs={"image": ...})`` runs: the model scatters the given image
   features into its own placeholders (its ``get_placeholder_mask``), so no embedding code is copied here. Families
   with multimodal positions (Qwen2-VL M-RoPE) also get ``position_ids``: each kept token keeps the position it
   had in the full layout, and text keeps its positions too (as FastV keeps original positions).

With no compressor, step 2 is the model's own ``get_image_features`` (or the same tower + projector calls), so the
output equals ``model.generate(**processor(...))`` exactly (tested per family).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import ConfigError, InvalidPromptError
from ...prompt import IMAGE_TOKEN, Prompt
from ..reduction.base import VisualReduction
from ..reduction.fastv import FastV


@dataclass
class ImageTokens:
    """LLM-ready tokens of one image: ``tokens [K, D]``, the image's full token count, and ``anchors [K]``: the
    place of each kept token in the image's full placeholder run (``None``: the first K places; positions matter
    only for families with multimodal positions)."""

    tokens: torch.Tensor
    full: int
    anchors: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class PreparedBatch:
    """What goes into ``generate()`` for a batch of prompts, plus the token accounting of every row."""

    input_ids: torch.Tensor  # [B, L], left-padded; image places hold the image token id
    attention_mask: torch.Tensor  # [B, L]
    images: list[ImageTokens]  # every image of the batch, row by row
    images_per_row: list[int]
    position_ids: torch.Tensor | None = None  # families with multimodal positions
    timings: dict[str, float] = field(default_factory=dict)

    def model_kwargs(self) -> dict[str, Any]:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        kwargs: dict[str, Any] = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.images:
            kwargs["mm_encoder_outputs"] = {
                "image": BaseModelOutputWithPooling(pooler_output=tuple(i.tokens for i in self.images))}
        if self.position_ids is not None:
            kwargs["position_ids"] = self.position_ids
        return kwargs

    def row_images(self, row: int) -> list[ImageTokens]:
        start = sum(self.images_per_row[:row])
        return self.images[start:start + self.images_per_row[row]]


class _PrefillClock:
    """A ``generate(streamer=...)`` hook: ``put`` is called with the prompt, then with each new token; the second
    call marks the end of the prefill (the first token is out)."""

    def __init__(self):
        self.start, self.calls, self.prefill = time.perf_counter(), 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.prefill = time.perf_counter() - self.start

    def end(self):
        pass


class VLMRunner:
    """Base of the family runners; :func:`mmcompress.vision.runners.create_vlm` picks the family."""

    family = ""
    model_types: tuple[str, ...] = ()

    def __init__(self, model: Any, processor: Any, template: str | None = None):
        import inspect

        if "mm_encoder_outputs" not in inspect.signature(model.forward).parameters:
            raise ConfigError(f"{type(model).__name__}.forward takes no mm_encoder_outputs: the runner needs a "
                              "transformers version whose VLMs accept precomputed image features (5.x)")
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.template = template  # e.g. "USER: {prompt} ASSISTANT:"; None: the prompt as given
        self.image_token_id = model.config.image_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------------------------------ family hooks
    def image_marker(self) -> str:
        """The text the processor expands into one image's placeholders."""
        return getattr(self.processor, "image_token", IMAGE_TOKEN)

    def encode_images(self, processed: dict, compressor: VisualReduction | None,
                      tokens: int | None) -> list[ImageTokens]:
        raise NotImplementedError

    def positions(self, processed: dict, columns: list[torch.Tensor], attention_mask: torch.Tensor):
        """Position ids of the cut rows (``columns[row]``: the full-layout column of each kept place), or None."""
        return None

    # ------------------------------------------------------------------------------------------------ inputs
    def render(self, prompt: str, images: list) -> str:
        if not isinstance(prompt, str):
            raise InvalidPromptError(f"the prompt must be a str with {IMAGE_TOKEN} markers, got {type(prompt).__name__}")
        if images and IMAGE_TOKEN not in prompt:
            prompt = (IMAGE_TOKEN + "\n") * len(images) + prompt  # images first, LLaVA's convention
        parsed = Prompt.from_interleaved(prompt, images)  # checks the marker count
        text = parsed.render(image_token=self.image_marker())
        return self.template.format(prompt=text) if self.template else text

    def process(self, texts: list[str], images: list[list]) -> dict:
        """The model's own processor on the batch (``images[row]``: the images of prompt ``row``), left-padded."""
        from ...image_io import load_images

        self.tokenizer.padding_side = "left"
        flat = [im for row in images for im in row]
        kwargs = {"images": self.nest(load_images(flat), images)} if flat else {}
        return dict(self.processor(text=texts, return_tensors="pt", padding=True, **kwargs))

    def nest(self, loaded: list, images: list[list]):
        """The images as the processor takes them: one flat list (most families)."""
        return loaded

    def prepare(self, prompts: list[str], images: list[list], compressor: Any = None,
                tokens: int | None = None) -> PreparedBatch:
        """Process, encode, reduce and cut a batch of prompts (``images[row]``: the images of prompt ``row``)."""
        if compressor is not None and not isinstance(compressor, VisualReduction):
            raise ConfigError(f"{type(compressor).__name__} is not a visual-token reduction")
        if len(prompts) != len(images):
            raise InvalidPromptError(f"{len(prompts)} prompts but {len(images)} image lists")
        texts = [self.render(p, list(im)) for p, im in zip(prompts, images)]
        flat = [im for row in images for im in row]
        t0 = time.perf_counter()
        processed = self.process(texts, [list(row) for row in images])
        t1 = time.perf_counter()
        reducer = None if isinstance(compressor, FastV) else compressor
        with torch.no_grad():
            encoded = self.encode_images(processed, reducer, tokens) if flat else []
        t2 = time.perf_counter()
        ids, mask, columns = self._cut(processed, encoded, [len(row) for row in images])
        positions = self.positions(processed, columns, mask) if flat else None
        return PreparedBatch(ids.to(self.device), mask.to(self.device), encoded, [len(r) for r in images],
                             None if positions is None else positions.to(self.device),
                             {"process": t1 - t0, "encode": t2 - t1})

    def _cut(self, processed: dict, encoded: list[ImageTokens], per_row: list[int]):
        """Cut every image's placeholders to its K places and left-pad the rows again. Text is untouched, also the
        markers between the tiles of one image (Idefics3); a kept token goes to the placeholder run of its anchor,
        in token order, so a tile's tokens stay next to its markers."""
        full_ids, full_mask = processed["input_ids"], processed["attention_mask"]
        rows, columns, start = [], [], 0
        for row, count in enumerate(per_row):
            valid = full_mask[row].bool().nonzero().squeeze(1)
            ids = full_ids[row, valid]
            is_place = ids == self.image_token_id
            places = is_place.nonzero().squeeze(1)
            mine = encoded[start:start + count]
            start += count
            if len(places) != sum(i.full for i in mine):
                raise InvalidPromptError(f"the processed prompt has {len(places)} image places, the images give "
                                         f"{sum(i.full for i in mine)}; does the text contain the image token itself?")
            first = torch.ones(len(places), dtype=torch.bool)
            first[1:] = places[1:] != places[:-1] + 1
            run_start = places[first][first.cumsum(0) - 1]  # the first column of each place's run
            order = [(int(c), -1, 0, int(c)) for c in (~is_place).nonzero().squeeze(1)]
            offset = 0
            for number, image in enumerate(mine):
                anchors = image.anchors if image.anchors is not None else torch.arange(image.k)
                chosen = offset + anchors.clamp(0, max(image.full - 1, 0))
                order += [(int(run_start[p]), number, j, int(places[p])) for j, p in enumerate(chosen.tolist())]
                offset += image.full
            cols = torch.tensor([o[3] for o in sorted(order)], dtype=torch.long)
            rows.append(ids[cols])
            columns.append(valid[cols])
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.full((len(rows), width), pad, dtype=full_ids.dtype)
        mask = torch.zeros((len(rows), width), dtype=full_mask.dtype)
        for i, r in enumerate(rows):
            ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
        return ids, mask, columns

    # ------------------------------------------------------------------------------------------------ running
    def forward(self, batch: PreparedBatch, compressor: Any = None):
        """One prefill forward pass (FastV applied when ``compressor`` is FastV)."""
        with torch.no_grad(), self._llm_hook(batch, compressor):
            return self.model(**batch.model_kwargs())

    def generate_batch(self, prompts: list[str], images: list[list], compressor: Any = None,
                       tokens: int | None = None, max_new_tokens: int = 32, **generate_kwargs: Any) -> list:
        """Greedy (by default) generation for a batch of prompts, each with its own images (any count)."""
        from ..vlm import VLMOutput

        t0 = time.perf_counter()
        batch = self.prepare(prompts, images, compressor, tokens)
        generate_kwargs.setdefault("do_sample", False)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        clock = _PrefillClock()
        t1 = time.perf_counter()
        with torch.no_grad(), self._llm_hook(batch, compressor) as state:
            out = self.model.generate(**batch.model_kwargs(), max_new_tokens=max_new_tokens, pad_token_id=pad,
                                      streamer=clock, **generate_kwargs)
        t2 = time.perf_counter()
        new = out[:, batch.input_ids.shape[1]:]
        results = []
        for row in range(len(prompts)):
            mine = batch.row_images(row)
            used = sum(i.k for i in mine)
            after = used
            if isinstance(compressor, FastV) and state is not None and state.get("keep_index") is not None:
                after = int(state["keep_index"].shape[1]) - int((batch.input_ids[row] != self.image_token_id).sum())
            ids = new[row].tolist()
            timings = {**batch.timings, "prefill": clock.prefill or 0.0, "generate": t2 - t1, "total": t2 - t0}
            results.append(VLMOutput(
                text=self.tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids,
                prompt_tokens=int(batch.attention_mask[row].sum()), visual_tokens_full=sum(i.full for i in mine),
                visual_tokens=used, visual_tokens_after_prune=after, method=getattr(compressor, "name", None),
                timings=timings))
        return results

    def generate(self, prompt: str, images: Any = None, compressor: Any = None, tokens: int | None = None,
                 max_new_tokens: int = 32, **generate_kwargs: Any):
        """One prompt with its images (one or a list): a :class:`~mmcompress.vision.vlm.VLMOutput`."""
        images = [] if images is None else list(images) if isinstance(images, (list, tuple)) else [images]
        return self.generate_batch([prompt], [images], compressor, tokens, max_new_tokens, **generate_kwargs)[0]

    def _llm_hook(self, batch: PreparedBatch, compressor: Any):
        from contextlib import nullcontext

        if isinstance(compressor, FastV):
            image_mask = batch.input_ids == self.image_token_id
            return compressor.apply(self.model, image_mask, images=max(batch.images_per_row))
        return nullcontext()


def split_budget_over_tiles(k: int, tiles: int) -> list[int]:
    """K tokens of one image shared by its tiles: equal shares, the remainder to the first tiles (the first is the
    any-resolution models' global view)."""
    return [k // tiles + (t < k % tiles) for t in range(tiles)]
