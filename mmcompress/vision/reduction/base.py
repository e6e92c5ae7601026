"""Training-free visual-token reduction: the shared base of VisionZip, PruMerge, ToMe and the baselines.

A reduction maps an encoder's output (patch tokens, plus CLS attention and keys where the method needs them) to
exactly ``K`` tokens per image. Selection goes through the same budget code as the text methods
(:func:`mmcompress.budget.topk_indices`); merging methods fold the dropped tokens into the kept ones.

Every reduction is a registered compressor of family ``"vision"``::

    zip = create_compressor("visionzip", tokens=64)            # encoder: open_clip ViT-B-16 (random init offline)
    out = zip.compress(["cat.png", pil_image])                  # VisualTokens: [2, 64, D] + accounting
    out = zip.reduce(encoder_output, k=64)                      # on features you computed yourself

Inside a VLM (:mod:`mmcompress.vision.vlm`) the same ``reduce`` runs on the VLM's own tower output, before its
projector, as VisionZip and PruMerge do.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ...budget import check_rate
from ...compressor import Compressor, CompressorConfig, Timings
from ...errors import BudgetError, ConfigError, RandomWeightsWarning
from ..encoders.base import EncoderOutput


@dataclass
class ReductionConfig(CompressorConfig):
    """``tokens``: visual tokens kept per image (K). Without it, ``rate`` (fraction of patches) sets K. (No
    ``target_tokens``: the budget of an image is ``tokens``.)

    ``encoder`` is used when :meth:`VisualReduction.compress` gets raw images (a spec for
    :func:`~mmcompress.vision.encoders.create_encoder`); ``pretrained`` an open_clip tag (None: random init).
    """

    tokens: int | None = 64
    rate: float = 0.5
    encoder: str = "open_clip:ViT-B-16"
    pretrained: str | None = None
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rate(self.rate)
        if self.tokens is not None and (isinstance(self.tokens, bool) or not isinstance(self.tokens, int)
                                        or self.tokens < 1):
            raise BudgetError(f"tokens must be a positive integer (visual tokens kept per image), got {self.tokens!r}")


@dataclass
class ReductionResult:
    """``tokens [B, K, D]``; ``indices [B, K]`` the patch each output token is anchored at (kept tokens; the
    destination of a merge; ``-1`` for a token that stands at no patch: VisionZip's CLS token, PruMerge's extra
    token); ``sizes [B, K]`` how many original patches each output token stands for (0 for the CLS token)."""

    tokens: torch.Tensor
    indices: torch.Tensor
    sizes: torch.Tensor
    num_patches: int
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.tokens.shape[1]


@dataclass
class VisualTokens:
    """The result of compressing images: the reduced tokens of every image plus the token accounting."""

    tokens: torch.Tensor  # [B, K, D]
    indices: torch.Tensor  # [B, K]
    sizes: torch.Tensor  # [B, K]
    num_patches: int
    method: str
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return self.tokens.shape[0]

    @property
    def origin_tokens(self) -> int:
        return self.num_images * self.num_patches

    @property
    def compressed_tokens(self) -> int:
        return self.num_images * self.tokens.shape[1]

    @property
    def saved_tokens(self) -> int:
        return self.origin_tokens - self.compressed_tokens

    @property
    def rate(self) -> float:
        return self.compressed_tokens / self.origin_tokens

    @property
    def ratio(self) -> float:
        return self.origin_tokens / self.compressed_tokens

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "images": self.num_images, "patches_per_image": self.num_patches,
                "tokens_per_image": int(self.tokens.shape[1]), "origin_tokens": self.origin_tokens,
                "compressed_tokens": self.compressed_tokens, "saved_tokens": self.saved_tokens,
                "rate": round(self.rate, 6), "ratio": round(self.ratio, 6),
                "timings": {k: round(v, 6) for k, v in self.timings.items()},
                "kept_indices": self.indices.tolist()}


class VisualReduction(Compressor):
    """Base of training-free reductions. Subclasses implement :meth:`reduce_to` (``features``, ``k``)."""

    family = "vision"
    config_class: ClassVar[type[ReductionConfig]] = ReductionConfig
    needs_attention: ClassVar[bool] = False  # does reduce() read the CLS attention / keys?
    ranks_patches: ClassVar[bool] = True  # does the choice depend on what the encoder learned (not pool / stride)?

    def __init__(self, config: ReductionConfig | None = None, *, encoder: Any = None, **overrides: Any):
        if isinstance(encoder, str):  # a spec is a config field; an encoder object is used as is
            overrides["encoder"], encoder = encoder, None
        super().__init__(config, **overrides)
        self._encoder = encoder

    # ------------------------------------------------------------------------------------------- budget
    def budget(self, num_patches: int, tokens: int | None = None, rate: float | None = None) -> int:
        """K for an image of ``num_patches`` patches; a clear error when K exceeds the patch count."""
        if tokens is None and rate is None:
            tokens, rate = self.config.tokens, self.config.rate
        if tokens is not None:
            if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
                raise BudgetError(f"tokens must be a positive integer, got {tokens!r}")
            k = tokens
        else:
            k = max(1, int(round(check_rate(rate) * num_patches)))
        if k > num_patches:
            raise BudgetError(f"cannot keep {k} visual tokens: the image has only {num_patches} patch tokens; "
                              f"use tokens <= {num_patches}")
        return k

    # --------------------------------------------------------------------------------------------- core
    def reduce(self, features: EncoderOutput | torch.Tensor, k: int | None = None) -> ReductionResult:
        """Reduce ``features`` (an :class:`EncoderOutput`, or bare patch tokens ``[B, N, D]`` for methods that need
        no attention) to exactly ``k`` tokens per image."""
        if isinstance(features, torch.Tensor):
            if features.ndim != 3:
                raise ConfigError(f"patch tokens must be [B, N, D], got {tuple(features.shape)}")
            features = EncoderOutput(patch_tokens=features)
        k = self.budget(features.num_patches) if k is None else self.budget(features.num_patches, tokens=k)
        if self.needs_attention and features.attentions is None:
            raise ConfigError(f"{self.name} needs attention maps: encode with output_attentions=True")
        result = self.reduce_to(features, k)
        if not result.extras.get("adaptive"):  # an adaptive method (PruMerge adaptive=True) picks its own count
            assert result.tokens.shape[1] == k, f"{self.name} returned {result.tokens.shape[1]} tokens, not {k}"
        return result

    def reduce_to(self, features: EncoderOutput, k: int) -> ReductionResult:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------- from images
    @property
    def encoder(self):
        if self._encoder is None:
            from ..encoders import create_encoder

            kw = {"device": self.config.device}
            if self.config.pretrained:
                kw["pretrained"] = self.config.pretrained
            self._encoder = create_encoder(self.config.encoder, **kw).eval()
        return self._encoder

    def compress(self, prompt: Any, *, tokens: int | None = None, rate: float | None = None,
                 images: Any = None, **_: Any) -> VisualTokens:
        """Encode and reduce images: ``prompt`` is one image, a list of images, or a text with ``<image>`` markers
        (then ``images=`` gives them; their count must match the markers)."""
        from ...prompt import Prompt

        timings = Timings()
        with timings("prepare"):
            if isinstance(prompt, (str, Prompt)) and (images is not None or isinstance(prompt, Prompt)):
                pics = Prompt.coerce(prompt, images=images).images if not isinstance(prompt, Prompt) else prompt.images
                if not pics:
                    raise ConfigError("the prompt has no images to compress")
            else:
                pics = prompt if images is None else images
        t0 = time.perf_counter()
        encoder = self.encoder
        timings["load"] = time.perf_counter() - t0
        self._warn_if_random(encoder)
        with timings("encode"), torch.no_grad():
            features = encoder.encode(pics, output_attentions=self.needs_attention)
        k = self.budget(features.num_patches, tokens=tokens, rate=rate)
        with timings("compress"), torch.no_grad():
            result = self.reduce(features, k)
        timings["total"] = timings["prepare"] + timings["encode"] + timings["compress"]
        return VisualTokens(result.tokens, result.indices, result.sizes, result.num_patches, self.name,
                            dict(timings), result.extras)


    def _warn_if_random(self, encoder: Any) -> None:
        if not self.ranks_patches or not getattr(encoder, "randomly_initialised", False):
            return
        if getattr(self, "_warned_random", False):
            return
        self._warned_random = True
        warnings.warn(RandomWeightsWarning(
            f"{self.name} ranks patches with a randomly initialised encoder ({self.config.encoder}, no pretrained "
            "weights): the tokens it keeps carry no learned saliency, no better than vision_random. Set pretrained= "
            "(an open_clip tag or checkpoint file), encoder='hf_clip:<model id or folder>', or pass your VLM's own "
            "tower as encoder="), stacklevel=3)


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``tokens [B, N, D]``, ``index [B, K]`` -> ``[B, K, D]``."""
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def unit_sizes(index: torch.Tensor) -> torch.Tensor:
    return torch.ones(index.shape, dtype=torch.long, device=index.device)


def key_metric(features: EncoderOutput, head_mean: bool) -> torch.Tensor:
    """The similarity metric of merging methods: the layer's attention keys when available, averaged over heads
    (ToMe's ``k.mean(1)``, VisionZip) or with heads concatenated (PruMerge's ``k_proj`` output); else the tokens."""
    if features.keys is None:
        return features.patch_tokens.float()
    return (features.patch_keys_head_mean() if head_mean else features.patch_keys).float()


def normalized_metric(features: EncoderOutput, head_mean: bool = False) -> torch.Tensor:
    """:func:`key_metric`, L2-normalised."""
    return torch.nn.functional.normalize(key_metric(features, head_mean), dim=-1)
