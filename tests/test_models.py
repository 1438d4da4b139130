import pytest

from thinktune.config import ModelConfig
from thinktune.models import ModelError, load_policy, reference_policy, resolve_model


def test_missing_folder_and_not_an_hf_folder(tmp_path):
    with pytest.raises(ModelError, match="no such folder"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_hub_id_offline_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="cannot be reached"):
        resolve_model("SomeOrg/some-model-that-is-not-cached")


def test_lora_policy_and_reference_share_weights(tiny_model_dir):
    import torch

    model, tokenizer = load_policy(ModelConfig(name=tiny_model_dir, device="cpu"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.tensor([tokenizer("one plus two")["input_ids"]])
    for p in model.parameters():  # move the adapters away from their zero init
        if p.requires_grad:
            p.data.normal_(0, 0.5)
    policy = model(input_ids=ids).logits
    with reference_policy(model):
        reference = model(input_ids=ids).logits
    assert not torch.allclose(policy, reference)


def test_kl_needs_lora(tiny_model_dir):
    model, _ = load_policy(ModelConfig(name=tiny_model_dir, device="cpu", finetune="full"))
    with pytest.raises(ModelError, match="needs model.finetune=lora"):
        reference_policy(model)


def test_adapter_refuses_a_base_that_changed_or_does_not_fit(tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from tests.conftest import build_tiny_model
    from thinktune.models import BASE_RECORD, load_for_inference, save_model

    base = build_tiny_model(tmp_path / "base")
    model, tokenizer = load_policy(ModelConfig(name=str(base), device="cpu"))
    save_model(model, tokenizer, tmp_path / "adapter")
    record = json.loads((tmp_path / "adapter" / BASE_RECORD).read_text())
    assert len(record["sha256"]) == 64
    load_for_inference(str(tmp_path / "adapter"), device="cpu")  # the base it was trained on: loads

    weights = load_file(base / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3  # the same shapes, other numbers: a different model
    save_file(weights, base / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelError, match="replaced or changed since"):
        load_for_inference(str(tmp_path / "adapter"), device="cpu")

    # An adapter from elsewhere (no record) pointed at a base of another width: one line, not a traceback.
    other = build_tiny_model(tmp_path / "other", hidden=32)
    (tmp_path / "adapter" / BASE_RECORD).unlink()
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(other)
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="does not fit the base model .*size mismatch"):
        load_for_inference(str(tmp_path / "adapter"), device="cpu")
