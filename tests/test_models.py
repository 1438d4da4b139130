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
