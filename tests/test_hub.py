"""The hub both ways, offline: a compressor saved in hub layout loads back with identical outputs (from a folder and
through ``create_compressor("org/name")`` with the download answered by a local folder), peft reads its adapter,
``push_to_hub`` uploads that folder, and an uncached hub id with ``HF_HUB_OFFLINE`` set is a clear error."""
from __future__ import annotations

import json

import pytest
import torch

import mmcompress
from mmcompress import ConfigError, UnknownCompressorError
from test_published_icae_500x import ICAE, ICAE_GOLDEN, load_icae

CARD = {"training_data": "tiny fixture (random weights)", "metrics": {"reconstruction_bleu4": 0.125, "steps": 3}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    compressor = load_icae()
    folder = compressor.save_pretrained(tmp_path_factory.mktemp("hub") / "tiny-icae", hub_layout=True, card=CARD)
    return compressor, folder


def outputs(compressor):
    soft = compressor.compress(ICAE_GOLDEN["text"])
    return soft.items[0][0].embeddings, compressor.next_token_logits(soft, ICAE_GOLDEN["prompt"])


def test_hub_layout_has_card_and_peft_adapter(saved):
    compressor, folder = saved
    files = {p.name for p in folder.iterdir()}
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "trainable.safetensors",
            "mmcompress_config.json"} <= files
    card = (folder / "README.md").read_text()
    for expected in ("library_name: peft", "method | `icae`", f"base_model: {compressor.config.model}",
                     "ratio | 4x (4 soft tokens per 16 input tokens)", CARD["training_data"],
                     "reconstruction_bleu4 | 0.125", "steps | 3"):
        assert expected in card
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["r"] == ICAE_GOLDEN["lora_r"] and sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]


def test_peft_reads_the_saved_adapter(saved):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    compressor, folder = saved
    base = AutoModelForCausalLM.from_pretrained(ICAE / ICAE_GOLDEN["base"], dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
    ids = torch.tensor([ICAE_GOLDEN["input_ids"][:12]])
    with torch.no_grad():
        want = compressor.module.encoder.peft(input_ids=ids).logits  # the encoder: base + the ICAE LoRA
        got = peft_model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    with torch.no_grad(), peft_model.disable_adapter():
        assert not torch.allclose(peft_model(input_ids=ids).logits, want, atol=1e-3)  # the adapter is really there


def test_saved_folder_and_hub_id_load_back_identical(saved, monkeypatch):
    import huggingface_hub

    compressor, folder = saved
    slots, logits = outputs(compressor)
    again = mmcompress.create_compressor(folder)
    assert again.config.decoder_prefix_ids == compressor.config.decoder_prefix_ids
    slots2, logits2 = outputs(again)
    assert torch.equal(slots, slots2) and torch.equal(logits, logits2)

    calls = []

    def snapshot_download(repo_id, local_files_only=False, **kw):
        calls.append((repo_id, local_files_only))
        return str(folder)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    from_hub = mmcompress.create_compressor("someone/tiny-icae")
    assert calls == [("someone/tiny-icae", False)]
    slots3, logits3 = outputs(from_hub)
    assert torch.equal(slots, slots3) and torch.equal(logits, logits3)
    assert from_hub.generate(from_hub.compress(ICAE_GOLDEN["text"]), task="ae", max_new_tokens=4) == \
        compressor.generate(compressor.compress(ICAE_GOLDEN["text"]), task="ae", max_new_tokens=4)


def test_offline_hub_id_names_the_repository(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownCompressorError, match="nobody-here/no-such-compressor.*HF_HUB_OFFLINE"):
        mmcompress.create_compressor("nobody-here/no-such-compressor")
    with pytest.raises(ConfigError, match="no-such-repo.*HF_HUB_OFFLINE"):
        mmcompress.create_compressor("icae", checkpoint="nobody-here/no-such-repo/model.safetensors")


def test_push_to_hub_uploads_the_hub_layout(saved, tmp_path, monkeypatch):
    import huggingface_hub

    compressor, _ = saved
    uploads = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: repo_id)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, folder_path, repo_id, **kw: uploads.append((folder_path, repo_id)) or "url")
    with pytest.raises(ConfigError, match="repo_id"):
        compressor.save_pretrained(tmp_path / "x", push_to_hub=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE"):
        compressor.save_pretrained(tmp_path / "x", push_to_hub=True, repo_id="me/tiny")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    folder = compressor.save_pretrained(tmp_path / "y", push_to_hub=True, repo_id="me/tiny", card=CARD)
    assert uploads == [(str(folder), "me/tiny")]
    assert (folder / "README.md").is_file() and (folder / "adapter_model.safetensors").is_file()
