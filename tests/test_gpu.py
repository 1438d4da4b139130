"""What only a GPU can show (`make test-gpu`; skipped, saying why, where there is no CUDA device): sampling with a
generator on the device, rollouts equal to Hugging Face `generate` there, and training in bfloat16 with resume."""

import pytest
import torch

from tests.helpers import build_trainer, read_lines, tiny_recipe
from thinktune.modeling import left_pad
from thinktune.models import load_for_inference
from thinktune.pipeline import train
from thinktune.rollout import generate

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def test_greedy_and_sampled_rollouts_on_the_gpu(tiny_model_dir):
    model, tokenizer = load_for_inference(tiny_model_dir, device="cuda")
    prompts = [tokenizer(t)["input_ids"] for t in ("what is one plus two", "calculate three")]
    ours = generate(model, prompts, eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
                    max_new_tokens=10, greedy=True)  # fmt: skip
    ids, mask = (t.cuda() for t in left_pad(prompts, tokenizer.pad_token_id))
    hf = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                        pad_token_id=tokenizer.pad_token_id)[:, ids.shape[1] :]  # fmt: skip
    for row in range(len(prompts)):
        n = int(ours.completion_mask[row].sum())
        assert ours.completion_ids[row, :n].tolist() == hf[row, :n].tolist()
    on_gpu = torch.Generator(device="cuda").manual_seed(0)
    sampled = generate(model, prompts, eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
                       max_new_tokens=10, group_size=4, generator=on_gpu)  # fmt: skip
    assert sampled.completion_ids.device.type == "cuda" and sampled.completion_ids.shape[0] == 8


def test_a_bfloat16_run_on_the_gpu_trains_and_resumes_exactly(tmp_path, tiny_model_dir, monkeypatch):
    from thinktune.grpo.trainer import GRPOTrainer

    gpu = ["model.device=cuda", "model.dtype=bfloat16", "train.steps=4", "run.save_every=2"]
    train(tiny_recipe(tmp_path, tiny_model_dir, *gpu, "run.name=whole"))
    original = GRPOTrainer.step

    def crash_in_step_3(self, step):
        if step == 2:
            raise RuntimeError("the machine went away")
        return original(self, step)

    monkeypatch.setattr(GRPOTrainer, "step", crash_in_step_3)
    with pytest.raises(RuntimeError, match="went away"):
        train(tiny_recipe(tmp_path, tiny_model_dir, *gpu, "run.name=resumed"))
    monkeypatch.undo()
    train(tiny_recipe(tmp_path, tiny_model_dir, *gpu, "run.name=resumed"), resume=True)
    whole, resumed = (read_lines(tmp_path / name / "metrics.jsonl") for name in ("whole", "resumed"))
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["reward"] for r in resumed] == [r["reward"] for r in whole]  # the CUDA generator state came back


@pytest.mark.parametrize("overrides", [["model.finetune=full"], ["model.finetune=lora", "grpo.beta=0.04"]])
def test_an_update_on_the_gpu_equals_the_same_update_on_the_cpu(tmp_path, tiny_model_dir, overrides):
    """Every row trains (advantages ±1), so the micro-batch plan's indices (kept on the CPU), the shared-prompt
    pass, the reference log-probs and the loss all meet tensors on the model's device. One rollout, sampled on the
    CPU, is learned from on both devices in float32; their gradients agree."""
    grads, rollout, weights = {}, None, None
    for device in ("cpu", "cuda"):
        (tmp_path / device).mkdir()
        trainer = build_trainer(tmp_path / device, tiny_model_dir, f"model.device={device}", *overrides)
        weights = weights or [p.detach().clone() for p in trainer.params]  # the same adapter initialisation
        with torch.no_grad():
            for param, weight in zip(trainer.params, weights, strict=True):
                param.copy_(weight)
        rollout = rollout or trainer.rollout_round(2).rollout
        on_device = rollout.to(device)
        params = trainer.params
        trainer.optimizer.step = lambda device=device, params=params: grads.__setitem__(
            device, torch.cat([p.grad.flatten().cpu() for p in params])
        )
        stats = trainer.learn(on_device, torch.tensor([1.0, -1.0] * 8))
        assert stats.trained_rows == 1.0
    torch.testing.assert_close(grads["cuda"], grads["cpu"], atol=1e-5, rtol=1e-3)
