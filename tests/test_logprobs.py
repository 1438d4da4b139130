"""The optimised log-prob paths give the straightforward answer: values, entropy and gradients."""

import pytest
import torch

import thinktune.logits as logits_module
from thinktune.config import ModelConfig
from thinktune.logits import head_token_logprobs
from thinktune.logprobs import SharedPrompts, completion_logprobs
from thinktune.modeling import positions
from thinktune.models import load_policy


def lora_policy_with_live_adapters(model_dir):
    """The LoRA policy with non-zero B matrices, so adapters change outputs and receive gradients."""
    model, _ = load_policy(ModelConfig(name=model_dir, finetune="lora", device="cpu"))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    return model


def test_chunked_head_equals_full_log_softmax_with_gradients(monkeypatch):
    monkeypatch.setattr(logits_module, "CHUNK_ELEMENTS", 3 * 50)  # 3 rows per chunk: 7 rows take 3 chunks
    torch.manual_seed(0)
    hidden = torch.randn(7, 16, dtype=torch.float64, requires_grad=True)
    head = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 50, (7,))
    upstream = torch.randn(7, dtype=torch.float64)

    logp, ent = head_token_logprobs(hidden, head, tokens, temperature=0.7, with_entropy=True)
    (logp * upstream).sum().backward()
    ours = logp.detach(), ent, hidden.grad.clone(), head.grad.clone()

    hidden.grad = head.grad = None
    full = ((hidden @ head.T) / 0.7).log_softmax(-1)
    reference = full.gather(-1, tokens[:, None])[:, 0]
    (reference * upstream).sum().backward()
    assert torch.allclose(ours[0].double(), reference.detach(), atol=1e-5)
    assert torch.allclose(ours[1].double(), -(full.exp() * full).sum(-1).detach(), atol=1e-5)
    assert torch.allclose(ours[2], hidden.grad, atol=1e-5)
    assert torch.allclose(ours[3], head.grad, atol=1e-5)


def test_chunked_head_under_autocast_uses_the_bf16_head_it_would_cast(monkeypatch):
    """The head is cast once for all chunks: the values and the hidden state's gradient are those autocast's own
    cast of each chunk's matmul gives (the same bf16 weights)."""
    monkeypatch.setattr(logits_module, "CHUNK_ELEMENTS", 3 * 50)
    torch.manual_seed(0)
    hidden = torch.randn(7, 16, requires_grad=True)
    head = torch.randn(50, 16)
    tokens = torch.randint(0, 50, (7,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, _ = head_token_logprobs(hidden, head, tokens)
    logp.sum().backward()
    rows = [slice(start, start + 3) for start in range(0, 7, 3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = torch.cat([(hidden[chunk] @ head.T).float() for chunk in rows])
    reference = logits.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
    assert torch.allclose(logp, reference, atol=1e-5)
    grad = (torch.nn.functional.one_hot(tokens, 50) - logits.softmax(-1)).bfloat16()
    assert torch.allclose(hidden.grad, (grad @ head.bfloat16()).float(), atol=1e-2)


@pytest.mark.parametrize("autocast", [False, True])
def test_logits_kept_for_the_backward_give_the_recomputed_gradients_to_the_bit(monkeypatch, autocast):
    """Within the budget the forward's logits serve the backward instead of a second head matmul; the gradients are
    the recomputing backward's exactly (3 chunks, float32 and under bfloat16 autocast)."""
    monkeypatch.setattr(logits_module, "CHUNK_ELEMENTS", 3 * 50)
    torch.manual_seed(0)
    hidden = torch.randn(7, 16, requires_grad=True)
    head = torch.randn(50, 16, requires_grad=True)
    tokens, upstream = torch.randint(0, 50, (7,)), torch.randn(7)

    def gradients(budget: int):
        monkeypatch.setattr(logits_module, "KEEP_LOGITS_BYTES", budget)
        hidden.grad = head.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logp, _ = head_token_logprobs(hidden, head, tokens, temperature=0.7, with_entropy=True)
        with torch.profiler.profile() as backward:
            (logp * upstream).sum().backward()
        matmuls = sum(event.name == "aten::mm" for event in backward.events())
        return (logp.detach(), hidden.grad.clone(), head.grad.clone()), matmuls

    (kept, kept_matmuls), (recomputed, recomputing_matmuls) = gradients(7 * 50 * 4), gradients(7 * 50 * 2 - 1)
    assert (kept_matmuls, recomputing_matmuls) == (6, 9)  # per chunk: both gradients' matmuls, and the logits'
    for ours, reference in zip(kept, recomputed, strict=True):
        assert torch.equal(ours, reference)


def test_update_loss_and_lora_gradients_equal_the_straightforward_forward(tiny_model_dir):
    model = lora_policy_with_live_adapters(tiny_model_dir)
    prompt_ids = torch.tensor([[0, 8, 9, 10], [11, 12, 13, 14]])
    prompt_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    completion_ids = torch.tensor([[15, 16, 3], [17, 18, 19]])
    completion_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    weights = torch.randn(2, 3)
    trainable = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(logprobs):
        model.zero_grad()
        loss = (logprobs * weights * completion_mask).sum()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in trainable]

    ours, _ = completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature=0.9)
    loss, grads = loss_and_grads(ours)

    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits[:, 3:-1] / 0.9
    straightforward = logits.log_softmax(-1).gather(-1, completion_ids[..., None])[..., 0]
    ref_loss, ref_grads = loss_and_grads(straightforward)

    assert torch.allclose(ours, straightforward, atol=1e-5)
    assert torch.allclose(loss, ref_loss, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads, ref_grads, strict=True))
    assert any(g.abs().sum() > 0 for g in grads)


PREAMBLE = torch.arange(3, 43).tolist()  # 40 tokens: shared by two prompts, it saves 40 positions; by three, 80


@pytest.mark.parametrize(
    "prompts, prompt_mask",
    [
        (torch.tensor([[0, 8, 9, 10], [11, 12, 13, 14]]), torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])),
        (torch.tensor([PREAMBLE + [8, 9], [0] + PREAMBLE + [50]]), None),  # too short a prefix to run once
    ],
)
def test_shared_prompts_give_the_same_loss_and_gradients_across_micro_batches(tiny_model_dir, prompts, prompt_mask):
    model = lora_policy_with_live_adapters(tiny_model_dir)
    prompt_mask = prompt_mask if prompt_mask is not None else (prompts > 0).long()
    owner = torch.tensor([0, 0, 0, 1, 1, 1])  # three completions per prompt
    completion_ids = torch.randint(3, 60, (6, 4))
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    weights = torch.randn(6, 4) * completion_mask
    trainable = [p for p in model.parameters() if p.requires_grad]

    model.zero_grad()
    shared = SharedPrompts.encode(model, prompts, prompt_mask)
    assert torch.equal(shared.mask, prompt_mask)  # every prompt ran whole
    ours = torch.zeros(6, 4)
    for rows in (torch.tensor([5, 0, 3]), torch.tensor([1, 4, 2])):  # micro-batches mixing the two prompts
        logprobs, _ = shared.completion_logprobs(model, owner[rows], completion_ids[rows], completion_mask[rows], 0.9)
        (logprobs * weights[rows]).sum().backward()
        ours[rows] = logprobs.detach()
    shared.backward()
    grads = [p.grad.clone() for p in trainable]

    model.zero_grad()
    reference, _ = completion_logprobs(model, prompts[owner], prompt_mask[owner], completion_ids, completion_mask, 0.9)
    (reference * weights).sum().backward()

    assert torch.allclose(ours * completion_mask, reference.detach() * completion_mask, atol=1e-5)
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(grads, trainable, strict=True))
    assert all(g.abs().sum() > 0 for g in grads)  # every adapter, down to the first layer's, got a gradient


def test_a_prefix_every_prompt_shares_runs_once_with_the_same_loss_and_gradients(tiny_model_dir):
    model = lora_policy_with_live_adapters(tiny_model_dir)
    prompts = torch.tensor([[0, 0] + PREAMBLE + [8], [0] + PREAMBLE + [50, 51], PREAMBLE + [7, 52, 53]])
    prompt_mask = (prompts > 0).long()
    owner = torch.tensor([0, 1, 2, 2, 1, 0])
    completion_ids = torch.randint(3, 60, (6, 4), generator=torch.Generator().manual_seed(1))
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    weights = torch.randn(6, 4, generator=torch.Generator().manual_seed(2)) * completion_mask
    trainable = [p for p in model.parameters() if p.requires_grad]

    model.zero_grad()
    shared = SharedPrompts.encode(model, prompts, prompt_mask)
    # the prefix's columns first, then each prompt's rest, left-padded: [prefix | 0 0 8], [prefix | 0 50 51], ...
    assert shared.mask[:, :40].all() and shared.mask[:, 40:].tolist() == [[0, 0, 1], [0, 1, 1], [1, 1, 1]]
    logprobs, _ = shared.completion_logprobs(model, owner, completion_ids, completion_mask, 0.9)
    (logprobs * weights).sum().backward()
    shared.backward()
    grads = [p.grad.clone() for p in trainable]

    model.zero_grad()
    reference, _ = completion_logprobs(model, prompts[owner], prompt_mask[owner], completion_ids, completion_mask, 0.9)
    (reference * weights).sum().backward()

    assert torch.allclose(logprobs.detach() * completion_mask, reference.detach() * completion_mask, atol=1e-5)
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(grads, trainable, strict=True))
    assert all(g.abs().sum() > 0 for g in grads)


def test_shared_prompt_gradients_are_bit_identical_from_run_to_run(tiny_model_dir):
    """Micro-batches list completions in length order, so their prompts come shuffled. With two threads the
    prompts' gradients once depended on thread timing (advanced indexing adds rows with parallel atomic adds);
    at this size (16 rows x 2 heads x 400 positions x 16) nearly every rerun differed somewhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = lora_policy_with_live_adapters(tiny_model_dir)
        generator = torch.Generator().manual_seed(0)
        prompts = torch.randint(3, 60, (4, 400), generator=generator)
        prompt_mask = torch.ones_like(prompts)
        owner = torch.arange(4).repeat(4)[torch.randperm(16, generator=generator)]
        completion_ids = torch.randint(3, 60, (16, 6), generator=generator)
        trainable = [p for p in model.parameters() if p.requires_grad]

        def gradients():
            model.zero_grad()
            shared = SharedPrompts.encode(model, prompts, prompt_mask)
            logprobs, _ = shared.completion_logprobs(model, owner, completion_ids, torch.ones_like(completion_ids))
            logprobs.sum().backward()
            leaves = [leaf.grad.clone() for leaf in shared.leaves]
            shared.backward()
            return leaves + [p.grad.clone() for p in trainable]

        first = gradients()
        for _ in range(5):
            assert all(torch.equal(a, b) for a, b in zip(first, gradients(), strict=True))
    finally:
        torch.set_num_threads(threads)
