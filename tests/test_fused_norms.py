"""Training models' RMSNorms through torch's fused kernel: the module's loss to the bit, its gradients within float32
rounding, only on Llama-family models in float32 on a CPU."""

import torch

from thinktune.config import ModelConfig
from thinktune.fused_norms import fused_rms_norm, use_fused_norms
from thinktune.models import load_policy
from thinktune.sft import completion_loss


def loss_and_grads(model):
    loss = completion_loss(model, [[2, 5, 9, 11], [2, 7]], [[12, 13, 3], [14, 15, 16, 17, 3]], pad_id=0)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def norms(model):
    return [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]


def test_a_policy_trains_through_fused_norms_with_the_modules_answer(tiny_model_dir):
    fused, _ = load_policy(ModelConfig(name=tiny_model_dir, device="cpu", finetune="full"))
    plain, _ = load_policy(ModelConfig(name=tiny_model_dir, device="cpu", finetune="full"))
    for module in norms(plain):
        del module.forward  # back to transformers' own
    assert len(norms(fused)) == 2 * 2 + 1 and all(m.forward.__func__ is fused_rms_norm for m in norms(fused))
    for module in norms(fused) + norms(plain):  # non-trivial weights, the same in both
        torch.manual_seed(0)
        module.weight.data.normal_(1, 0.2)
    fused_loss, fused_grads = loss_and_grads(fused)
    plain_loss, plain_grads = loss_and_grads(plain)
    assert torch.equal(fused_loss, plain_loss)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.allclose(fused_grads[name], grad, rtol=1e-5, atol=1e-6), name


def test_other_dtypes_keep_the_modules_forward(tiny_model_dir):
    model, _ = load_policy(ModelConfig(name=tiny_model_dir, device="cpu", finetune="full"))
    norm = norms(model)[0]
    x = torch.randn(2, 3, norm.weight.shape[0]).bfloat16()
    assert torch.equal(norm(x), type(norm).forward(norm, x))  # widened before the weight, rounded after


def test_other_architectures_are_left_alone():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    use_fused_norms(model)
    assert not any("forward" in vars(m) for m in model.modules())
