"""The Hugging Face hub, both ways.

- ``create_compressor("org/name")`` downloads the repository (``huggingface_hub.snapshot_download``) and loads it like
  a local folder: a saved mmcompress compressor or a published checkpoint layout. With ``HF_HUB_OFFLINE`` set only
  the local Hugging Face cache is read, and a repository that is not there is a clear error naming it.
- ``create_compressor("icae", checkpoint="org/name/file.safetensors")`` downloads one file of a repository.
- ``save_pretrained(path, push_to_hub=True, repo_id=...)`` writes the hub layout (:func:`write_hub_files`: a model
  card and the LoRA in peft's own format, so ``PeftModel.from_pretrained`` and the hub's widgets read it) next to the
  compressor's own files, then uploads the folder.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnknownCompressorError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
CARD_FILE = "README.md"


def is_hub_id(text: str) -> bool:
    """``org/name`` that is not a local path."""
    return bool(HUB_ID.match(text)) and not Path(text).exists()


def _offline() -> bool:
    from .models.loading import hub_offline

    return hub_offline()


def snapshot(repo_id: str) -> Path:
    """The local folder of hub repository ``repo_id`` (downloaded, or from the cache when offline)."""
    from huggingface_hub import snapshot_download

    offline = _offline()
    try:
        return Path(snapshot_download(repo_id, local_files_only=offline))
    except Exception as e:  # unknown repo, no network, gated, not cached ... all end here with the repo named
        if offline:
            raise UnknownCompressorError(
                f"{repo_id!r} is not a registered compressor, config or local folder, and the hub repository "
                f"{repo_id} is not in the local Hugging Face cache; HF_HUB_OFFLINE is set, so it cannot be downloaded"
            ) from None
        raise ConfigError(f"cannot download {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e})") from None


def resolve_checkpoint(checkpoint: Any) -> Path:
    """A local checkpoint path as given, or ``org/name`` / ``org/name/file`` fetched from the hub."""
    path = Path(str(checkpoint)).expanduser()
    if path.exists():
        return path
    text = str(checkpoint)
    parts = text.split("/")
    local_looking = path.is_absolute() or text.startswith((".", "~")) or Path(parts[0]).exists()
    if local_looking:
        raise ConfigError(f"checkpoint not found: {checkpoint}")
    if len(parts) >= 3 and is_hub_id("/".join(parts[:2])):
        from huggingface_hub import hf_hub_download

        repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
        try:
            return Path(hf_hub_download(repo_id, filename, local_files_only=_offline()))
        except Exception as e:
            where = (f"{type(e).__name__}: {e}" if not _offline()
                     else "it is not in the local cache and HF_HUB_OFFLINE is set")
            raise ConfigError(f"checkpoint {filename!r} of hub repository {repo_id} cannot be read ({where})") from None
    if len(parts) == 2 and is_hub_id(str(checkpoint)):
        return snapshot(str(checkpoint))
    raise ConfigError(f"checkpoint not found: {checkpoint} (a local file or folder, or org/name[/file] on the hub)")


# ------------------------------------------------------------------------------------------------------ upload
def find_peft(module: Any):
    """The first ``peft.PeftModel`` inside ``module`` (the soft encoder's LoRA), or None."""
    from peft import PeftModel

    return next((m for m in module.modules() if isinstance(m, PeftModel)), None)


def base_model_id(name: str) -> str:
    """The hub id behind an mmcompress model alias (``smollm2-135m`` -> ``HuggingFaceTB/SmolLM2-135M-Instruct``)."""
    from .models.loading import ALIASES

    alias = ALIASES.get(str(name).lower())
    return alias.hf_id if alias else str(name)


def write_hub_files(compressor: Any, path: Path, card: dict[str, Any] | None = None) -> None:
    """The LoRA as peft saves it (``adapter_config.json`` + ``adapter_model.safetensors``) and ``README.md``."""
    path = Path(path)
    base = base_model_id(compressor.config.model)
    peft_model = find_peft(compressor.module)
    if peft_model is not None:
        peft_model.save_pretrained(str(path))
        for config_file in path.rglob("adapter_config.json"):  # name the base model as the hub knows it
            data = json.loads(config_file.read_text())
            data["base_model_name_or_path"] = base
            config_file.write_text(json.dumps(data, indent=2) + "\n")
    (path / CARD_FILE).write_text(model_card(compressor, base, card or {}, peft_model is not None))


def model_card(compressor: Any, base: str, card: dict[str, Any], has_adapter: bool) -> str:
    """A model card: method, base model, ratio, training data and measured numbers (``card`` supplies the last two:
    ``training_data``, ``metrics`` {name: number}, ``command``)."""
    config = compressor.config
    ratio = getattr(config, "nominal_ratio", None)
    tags = ["mmcompress", "prompt-compression", compressor.name]
    front = ["---", f"base_model: {base}", f"library_name: {'peft' if has_adapter else 'mmcompress'}",
             "tags:", *[f"- {t}" for t in tags], "---", ""]
    rows = [("method", f"`{compressor.name}` ({compressor.family})"), ("base model", f"`{base}`"),
            ("ratio", f"{ratio:g}x ({config.num_slots} soft tokens per {config.chunk_tokens} input tokens)"
             if ratio else "see the config"),
            ("training data", str(card.get("training_data") or "not recorded"))]
    if card.get("command"):
        rows.append(("trained with", f"`{card['command']}`"))
    lines = front + [f"# {card.get('title') or compressor.name + ' compressor'}", "",
                     "A prompt compressor saved by mmcompress: load it with "
                     "`mmcompress.create_compressor(\"<this repo id>\")`.", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    metrics = card.get("metrics") or {}
    lines += ["", "## Measured", ""]
    if metrics:
        lines += ["| metric | value |", "| --- | --- |"] + [f"| {k} | {v:.4g} |" if isinstance(v, float) else
                                                            f"| {k} | {v} |" for k, v in metrics.items()]
    else:
        lines.append("No numbers were recorded when this compressor was saved.")
    if has_adapter:
        lines += ["", "The encoder's LoRA is also saved in peft's format (`adapter_config.json`, "
                  "`adapter_model.safetensors`): `PeftModel.from_pretrained(base_model, <this repo>)` reads it."]
    return "\n".join(lines) + "\n"


def push_folder(path: Path, repo_id: str, private: bool | None = None) -> str:
    """Upload ``path`` to the hub repository ``repo_id`` (created when missing); returns the commit URL."""
    if _offline():
        raise ConfigError(f"cannot push to {repo_id}: HF_HUB_OFFLINE is set")
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True, private=private)
    return str(api.upload_folder(folder_path=str(path), repo_id=repo_id, commit_message="mmcompress save_pretrained"))
