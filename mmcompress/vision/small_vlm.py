"""A small VLM the toolkit builds without a pretrained VLM: an image encoder (open_clip ViT), an adapter into the
LLM's embedding space (Perceiver resampler, Q-Former, MLP, pooling) and a frozen text LLM (SmolLM2 by default).

The prompt is ``prefix + [K image tokens] + suffix``, e.g. ``"Question: What is in the image?\\nImage:" + tokens +
"\\nAnswer:"``; the prefix's keys and values are computed once and reused for every image (they do not depend on
it). Training objectives (``objective``):

- ``"qa"``: next-token loss on the answer through the frozen LLM (the LLaVA-style recipe; GPU-sized).
- ``"embedding"``: each image token is pulled toward the LLM's input embedding of the answer word (contrastive over
  the answer vocabulary + cosine), which needs no LLM forward pass: the shortened CPU recipe.

A training-free reduction (``reduction=``) can be applied to the patch tokens before the adapter, to compare
learned compression (an adapter with K outputs) with pruning/merging at the same K. ``token_dropout: [lo, hi]``
(off by default) trains on random subsets of the patches, so that such reduced images are in distribution.
"""
from __future__ import annotations

import copy
import inspect
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config_base import Config
from ..errors import ConfigError
from ..models.compat import cache_kwargs, output_cache
from .adapters import VisionAdapter
from .encoders import VisionEncoder


def _accepts(fn: Any, name: str) -> bool:
    return name in inspect.signature(fn).parameters


@dataclass
class SmallVLMConfig(Config):
    prefix: str = "Question: What is in the image?\nImage:"
    suffix: str = "\nAnswer:"
    objective: str = "qa"  # qa | embedding
    train_encoder: bool = True
    temperature: float = 0.05  # embedding objective: softmax temperature over the answer vocabulary
    # embedding objective: weight of a squared error to the class word's embedding (relative to its mean square), so
    # the tokens also get the embedding's scale: a start from which the frozen LLM already reads the class
    mse_weight: float = 0.0
    # training only, like nn.Dropout: each step keeps K patch tokens per image, K uniform in [lo, hi] (one K per
    # step, so the LLM pass needs no padding), a random subset per image in patch order. An adapter trained on
    # whole images only sees reduced images (K of N) out of distribution; this puts them in. None: off.
    token_dropout: list[int] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        drop = self.token_dropout
        if drop is not None and (len(drop) != 2 or not 1 <= drop[0] <= drop[1]):
            raise ConfigError(f"token_dropout must be [lo, hi] with 1 <= lo <= hi (patch tokens kept), got {drop!r}")


class SmallVLM(nn.Module):
    """``encoder -> (optional reduction) -> adapter -> frozen LLM``. ``answers`` lists the answer words (e.g. the
    CIFAR-10 class names); each must be one token of the LLM's tokenizer (with a leading space)."""

    def __init__(self, encoder: VisionEncoder, adapter: VisionAdapter, lm: Any, tokenizer: Any,
                 answers: list[str], config: SmallVLMConfig | None = None):
        super().__init__()
        self.config = config or SmallVLMConfig()
        if self.config.objective not in ("qa", "embedding"):
            raise ConfigError(f"objective must be qa or embedding, got {self.config.objective!r}")
        self.encoder, self.adapter = encoder, adapter
        self.lm = [lm]  # a list: keep the frozen LLM out of this module's parameters and state_dict
        self.tokenizer = tokenizer
        for p in lm.parameters():
            p.requires_grad_(False)
        for p in encoder.parameters():
            p.requires_grad_(self.config.train_encoder)
        if adapter.config.out_dim != lm.config.hidden_size:
            raise ConfigError(f"adapter out_dim {adapter.config.out_dim} != LLM hidden size {lm.config.hidden_size}")
        self.answers = list(answers)
        ids = [tokenizer(" " + a, add_special_tokens=False)["input_ids"] for a in self.answers]
        if any(len(i) != 1 for i in ids):
            raise ConfigError("every answer must be a single token of the LLM (with a leading space): "
                              + ", ".join(a for a, i in zip(self.answers, ids) if len(i) != 1))
        self.register_buffer("answer_ids", torch.tensor([i[0] for i in ids]), persistent=False)
        self._prefix_ids = tokenizer(self.config.prefix, return_tensors="pt")["input_ids"]
        self._suffix_ids = tokenizer(self.config.suffix, add_special_tokens=False, return_tensors="pt")["input_ids"]
        self._prefix_cache: dict[int, Any] = {}

    @property
    def llm(self):
        return self.lm[0]

    # ------------------------------------------------------------------------------------------ image tokens
    def image_tokens(self, pixels: torch.Tensor, tokens: int | None = None, reduction: Any = None) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, K, D_llm]``: encode, optionally reduce the patches to ``tokens`` without training,
        and adapt (``tokens`` also selects the first K latents of a nested resampler)."""
        features = self.encoder(pixels, output_attentions=bool(getattr(reduction, "needs_attention", False)))
        if reduction is not None:
            k = reduction.budget(features.num_patches, tokens=tokens)
            return self.adapter(reduction.reduce(features, k).tokens)
        if tokens is not None and hasattr(self.adapter, "latents"):
            return self.adapter(features.patch_tokens, tokens=tokens)
        return self.adapter(self.drop_tokens(features.patch_tokens))

    def drop_tokens(self, patches: torch.Tensor) -> torch.Tensor:
        """``[B, N, D] -> [B, K, D]`` in training mode with ``token_dropout`` set (see the config); else unchanged."""
        if not (self.training and self.config.token_dropout):
            return patches
        lo, hi = self.config.token_dropout
        n = patches.shape[1]
        if lo > n:
            raise ConfigError(f"token_dropout keeps at least {lo} patch tokens, but the image has {n}")
        k = int(torch.randint(lo, min(hi, n) + 1, ()))
        keep = torch.rand(patches.shape[:2], device=patches.device).argsort(-1)[:, :k].sort(-1).values
        return patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))

    # ------------------------------------------------------------------------------------------- LLM side
    def _cache_for(self, batch: int, device) -> Any:
        if batch not in self._prefix_cache:
            ids = self._prefix_ids.to(device).expand(batch, -1)
            with torch.no_grad():
                out = self.llm(input_ids=ids, use_cache=True)
            self._prefix_cache[batch] = output_cache(out)
        return copy.deepcopy(self._prefix_cache[batch])  # forward passes extend a cache in place

    def _run(self, image_tokens: torch.Tensor, extra_ids: torch.Tensor | None = None, last_only: bool = True):
        """LLM over ``[cached prefix] + image tokens + suffix (+ extra_ids)``; returns the logits of the new part
        (``last_only``: of its last position only, ``[B, 1, V]``; skips the LM head elsewhere, a large saving with
        SmolLM2's 49k vocabulary)."""
        b, device = image_tokens.shape[0], image_tokens.device
        embed = self.llm.get_input_embeddings()
        parts = [image_tokens.to(embed.weight.dtype), embed(self._suffix_ids.to(device)).expand(b, -1, -1)]
        if extra_ids is not None:
            parts.append(embed(extra_ids))
        x = torch.cat(parts, dim=1)
        cache = self._cache_for(b, device)
        prefix_len = self._prefix_ids.shape[1]
        mask = torch.ones(b, prefix_len + x.shape[1], dtype=torch.long, device=device)
        keep = {"logits_to_keep": 1} if last_only and _accepts(self.llm.forward, "logits_to_keep") else {}
        out = self.llm(inputs_embeds=x, attention_mask=mask, use_cache=True, **cache_kwargs(self.llm, cache), **keep)
        return out.logits[:, -1:] if last_only else out.logits

    def answer_logits(self, pixels: torch.Tensor, tokens: int | None = None, reduction: Any = None) -> torch.Tensor:
        """``[B, V]``: the LLM's next-token logits where the answer starts."""
        return self._run(self.image_tokens(pixels, tokens, reduction))[:, -1]

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor, tokens: int | None = None, reduction: Any = None) -> dict[str, torch.Tensor]:
        """Greedy answer token (open vocabulary) and the best answer word among ``answers`` (closed set)."""
        logits = self.answer_logits(pixels, tokens, reduction)
        return {"greedy": logits.argmax(-1), "closed": logits[:, self.answer_ids].argmax(-1)}

    @torch.no_grad()
    def generate(self, pixels: torch.Tensor, max_new_tokens: int = 5, tokens: int | None = None,
                 reduction: Any = None) -> list[str]:
        """Greedy decoding of the answer text (prefix recomputed: the plain ``generate()`` path)."""
        b, device = pixels.shape[0], pixels.device
        embed = self.llm.get_input_embeddings()
        x = torch.cat([embed(self._prefix_ids.to(device)).expand(b, -1, -1),
                       self.image_tokens(pixels, tokens, reduction),
                       embed(self._suffix_ids.to(device)).expand(b, -1, -1)], dim=1)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        out = self.llm.generate(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long, device=device),
                                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    # ---------------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``batch``: ``pixels [B, 3, H, W]``, ``label [B]`` (index into ``answers``); optional ``tokens``."""
        pixels, label = batch["pixels"], batch["label"]
        tokens = batch.get("tokens")
        tokens = int(tokens[0]) if isinstance(tokens, torch.Tensor) else tokens
        return self.loss_on(self.image_tokens(pixels, tokens), label)

    def loss_on(self, img: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """The training objective for image tokens ``img [B, K, D]`` whose answer is ``answers[label]``."""
        if self.config.objective == "embedding":
            table = self.llm.get_input_embeddings().weight[self.answer_ids].detach()  # [C, D]
            cos = nn.functional.normalize(img.float(), dim=-1) @ nn.functional.normalize(table.float(), dim=-1).T
            ce = nn.functional.cross_entropy((cos / self.config.temperature).flatten(0, 1),
                                             label.repeat_interleave(img.shape[1]))
            align = 1 - cos.gather(2, label.view(-1, 1, 1).expand(-1, img.shape[1], 1)).mean()
            acc = (cos.mean(1).argmax(-1) == label).float().mean()
            loss = ce + align
            if self.config.mse_weight:
                target = table[label].unsqueeze(1).float()  # [B, 1, D]
                loss = loss + self.config.mse_weight * (img.float() - target).pow(2).mean() / table.float().pow(2).mean()
            return {"loss": loss, "acc": acc}
        answer = self.answer_ids[label].unsqueeze(1)  # [B, 1]
        logits = self._run(img)[:, -1]
        loss = nn.functional.cross_entropy(logits.float(), answer.squeeze(1))
        return {"loss": loss, "acc": (logits.argmax(-1) == answer.squeeze(1)).float().mean()}

    def evaluation_step(self, batch: dict[str, Any]) -> dict[str, float]:
        pred = self.predict(batch["pixels"])
        label = batch["label"]
        return {"closed_acc": float((pred["closed"] == label).float().mean()),
                "greedy_acc": float((pred["greedy"] == self.answer_ids[label]).float().mean())}

    # ------------------------------------------------------------------------------------------- save / load
    def save_pretrained(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.adapter.save_pretrained(path / "adapter")
        save_file({k: v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()},
                  str(path / "encoder.safetensors"))
        meta = {"config": asdict(self.config), "answers": self.answers,
                "encoder": {"kind": self.encoder.kind, "name": getattr(self.encoder, "name", None),
                            "layer": getattr(self.encoder, "layer", None)}}
        (path / "small_vlm.json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, lm: Any, tokenizer: Any) -> SmallVLM:
        from safetensors.torch import load_file

        from .encoders import OpenCLIPEncoder

        path = Path(path)
        if not (path / "small_vlm.json").is_file():
            raise ConfigError(f"{path} is not a saved SmallVLM (no small_vlm.json)")
        meta = json.loads((path / "small_vlm.json").read_text())
        enc = meta["encoder"]
        if enc["kind"] != "open_clip":
            raise ConfigError("only open_clip encoders can be restored by from_pretrained")
        encoder = OpenCLIPEncoder(enc["name"], layer=enc["layer"])
        encoder.load_state_dict(load_file(str(path / "encoder.safetensors")))
        adapter = VisionAdapter.from_pretrained(path / "adapter")
        return cls(encoder, adapter, lm, tokenizer, meta["answers"], SmallVLMConfig(**meta["config"]))
