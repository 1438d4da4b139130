"""The memory savers change what is kept, not what is computed: with activation checkpointing the update's loss and
gradients are those without it, on the shared-prompt path and the plain one, for LoRA and full fine-tuning."""

import pytest
import torch

from tests.helpers import tiny_recipe
from thinktune.data import load_examples
from thinktune.grpo.trainer import GRPOTrainer
from thinktune.logprobs import completion_logprobs
from thinktune.modeling import left_pad
from thinktune.run_dir import RunDir
from thinktune.savers import checkpointed_layers
from thinktune.tracking import make_tracker


def update_with(tmp_path, tiny_model_dir, *overrides):
    """One update of the tiny model on its first rollout: the loss, the gradient, how often layer 0's attention ran."""
    recipe = tiny_recipe(tmp_path, tiny_model_dir, *overrides)
    torch.manual_seed(0)  # the same LoRA initialisation each time
    train_set, _, scorer = load_examples(recipe.data)
    run = RunDir(recipe)
    trainer = GRPOTrainer.from_recipe(recipe, train_set, scorer, run, make_tracker([], run))
    groups = trainer.rollout_round(2)
    grads, calls = {}, []
    trainer.optimizer.step = lambda: grads.setdefault("all", torch.cat([p.grad.flatten() for p in trainer.params]))
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    base.model.layers[0].self_attn.register_forward_hook(lambda *_: calls.append(1))  # seen in a replay too
    calls.clear()
    stats = trainer.learn(groups.rollout, torch.tensor([1.0, -1.0] * 8))
    return stats.loss, grads["all"], len(calls)


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_checkpointing_replays_each_layer_and_gives_the_same_loss_and_gradient(tmp_path, tiny_model_dir, finetune):
    (tmp_path / "plain").mkdir(), (tmp_path / "saver").mkdir()
    common = (f"model.finetune={finetune}", "train.learning_rate=1e-5")
    loss, grad, calls = update_with(tmp_path / "plain", tiny_model_dir, *common)
    loss_gc, grad_gc, calls_gc = update_with(
        tmp_path / "saver", tiny_model_dir, *common, "train.gradient_checkpointing=true"
    )
    assert calls_gc > calls  # the completions' passes ran layer 0 again in the backward (the prompts' pass did not)
    assert loss_gc == pytest.approx(loss, rel=1e-6)
    assert torch.allclose(grad_gc, grad, rtol=1e-6, atol=1e-9) and grad.abs().sum() > 0


def test_checkpointing_on_the_plain_forward_gives_the_same_gradient(tiny):
    model, tokenizer = tiny
    prompt_ids, prompt_mask = left_pad([[5, 6, 7], [8, 9]], tokenizer.pad_token_id)
    completion = torch.tensor([[10, 11, 12], [13, 14, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    grads = []
    for enabled in (False, True):
        model.zero_grad(set_to_none=True)
        model.train()
        with checkpointed_layers(model, enabled):
            logprobs, _ = completion_logprobs(model, prompt_ids, prompt_mask, *completion, temperature=0.7)
        (logprobs * completion[1]).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    model.zero_grad(set_to_none=True)
    model.eval()
    assert torch.allclose(grads[1], grads[0], rtol=1e-6, atol=1e-9) and grads[0].abs().sum() > 0
    assert not any("forward" in vars(m) for m in model.modules())  # the layers' own forward again


def test_checkpointing_the_reward_models_forward_gives_the_same_gradient(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from thinktune.rewards.reward_model import sequence_scores

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).train()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model.config.pad_token_id = tokenizer.pad_token_id
    grads = []
    for enabled in (False, True):
        model.zero_grad(set_to_none=True)
        with checkpointed_layers(model, enabled):
            sequence_scores(model, tokenizer, ["yes yes", "no"], max_length=16).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[1], grads[0], rtol=1e-6, atol=1e-9) and grads[0].abs().sum() > 0


def test_8bit_optimizer_state_is_8bit_and_a_resumed_run_equals_the_uninterrupted_one(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from tests.helpers import rewards
    from thinktune.pipeline import train

    length = "rewards=[{name: 'tests.user_rewards:length'}]"  # completions differ in length: every group trains
    saver = ("train.optimizer=adamw_8bit", "run.save_every=2", length)
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=4", *saver))
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=2", "run.name=resumed", *saver))
    state = torch.load(tmp_path / "resumed" / "checkpoint" / "state.pt", weights_only=True)

    def tensors(tree):
        return [t for v in tree.values() for t in (tensors(v) if isinstance(v, dict) else [v]) if torch.is_tensor(t)]

    assert any(t.dtype == torch.uint8 for t in tensors(state["parts"]["optimizer"]))  # the moments, quantized
    train(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=4", "run.name=resumed", *saver), resume=True)
    assert rewards(tmp_path / "resumed") == rewards(tmp_path / "tiny")
    whole, resumed = (load_file(tmp_path / name / "final" / "model.safetensors") for name in ("tiny", "resumed"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_saver_without_its_library_is_one_line_naming_the_field_and_the_install(monkeypatch):
    import sys

    from thinktune.config import ConfigError, TrainConfig
    from thinktune.training import make_optimizer

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    with pytest.raises(
        ConfigError, match=r"train.optimizer: adamw_8bit needs bitsandbytes: pip install 'thinktune\[savers\]'"
    ):
        make_optimizer([torch.nn.Parameter(torch.zeros(2))], 1e-3, TrainConfig(optimizer="adamw_8bit"))


def test_an_nf4_base_answers_as_its_dequantized_twin_and_through_our_decoder(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from thinktune.config import ModelConfig
    from thinktune.modeling import plain_weight
    from thinktune.models import load_policy
    from thinktune.rollout import generate
    from thinktune.rollout.decoders import supports_fast_decode

    quantized, tokenizer = load_policy(ModelConfig(name=tiny_model_dir, finetune="lora", quantize="nf4", device="cpu"))
    assert "Linear4bit" in type(quantized.get_base_model().model.layers[0].self_attn.q_proj.base_layer).__name__
    twin = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    for name, module in quantized.get_base_model().named_modules():  # the twin: every 4-bit weight dequantized
        if hasattr(getattr(module, "weight", None), "quant_state"):
            twin.get_submodule(name.replace(".base_layer", "")).weight.data = plain_weight(module)
    prompts = [[5, 6, 7, 8], [9, 10]]
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    settings = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    theirs, twins = (
        m.generate(input_ids=ids, attention_mask=mask, **settings)[:, ids.shape[1] :] for m in (quantized.eval(), twin)
    )
    assert torch.equal(theirs, twins)  # bitsandbytes' 4-bit matmuls and the dequantized weights agree
    ours = generate(quantized, prompts, eos_ids=[-1], pad_id=tokenizer.pad_token_id, max_new_tokens=8, greedy=True)
    assert not supports_fast_decode(quantized)  # bitsandbytes' CPU kernels repack the weights: only they read them
    assert torch.equal(ours.completion_ids, theirs)


def test_a_qlora_run_learns_and_its_adapter_loads_and_merges_on_the_plain_base(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.helpers import rewards
    from thinktune.export import merge_adapter
    from thinktune.pipeline import train

    train(tiny_recipe(tmp_path, tiny_model_dir, "model.finetune=lora", "model.quantize=nf4", "train.steps=12",
                      "train.learning_rate=0.02"))  # fmt: skip
    curve = rewards(tmp_path / "tiny")
    assert sum(curve[-4:]) > sum(curve[:4])  # the reward rose
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, tmp_path / "tiny" / "final")  # plain peft, plain float32 base
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in adapted.named_parameters())
    merged = merge_adapter(tmp_path / "tiny" / "final", tmp_path / "merged")
    assert (merged / "model.safetensors").is_file()
