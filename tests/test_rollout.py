import pytest
import torch

from thinktune.logprobs import completion_logprobs
from thinktune.modeling import MIN_SHARED_POSITIONS, left_pad, positions
from thinktune.rollout import generate
from thinktune.rollout.decoders import LlamaDecoder, supports_fast_decode
from thinktune.rollout.engine import filter_logits, pick_tokens, sample_categorical

BOTH_DECODERS = pytest.mark.parametrize("fast", [True, False], ids=["llama-decoder", "hf-decoder"])


def prompts_of(tokenizer):
    texts = ["what is one plus two", "calculate three", "the cat is a dog and the dog is a cat"]
    return [tokenizer(t)["input_ids"] for t in texts]


def assert_greedy_matches_hf_generate(model, tokenizer, fast):
    prompts = prompts_of(tokenizer)
    eos = tokenizer.eos_token_id
    ours = generate(
        model, prompts, eos_ids=[eos], pad_id=tokenizer.pad_token_id, max_new_tokens=12, greedy=True, fast=fast
    )
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    hf = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )[:, ids.shape[1] :]
    for row in range(len(prompts)):
        n = int(ours.completion_mask[row].sum())
        assert ours.completion_ids[row, :n].tolist() == hf[row, :n].tolist()


@BOTH_DECODERS
def test_greedy_matches_hf_generate(tiny, fast):
    model, tokenizer = tiny
    assert supports_fast_decode(model)
    assert_greedy_matches_hf_generate(model, tokenizer, fast)


def test_llama_decoder_merges_lora_and_leaves_the_model_alone(tiny_model_dir):
    from thinktune.config import ModelConfig
    from thinktune.models import load_policy

    model, tokenizer = load_policy(ModelConfig(name=tiny_model_dir, finetune="lora", device="cpu"))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)  # adapters that change the output
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert supports_fast_decode(model)
    assert_greedy_matches_hf_generate(model, tokenizer, fast=True)
    with model.disable_adapter():
        adapted = generate(model, prompts_of(tokenizer), eos_ids=[0], pad_id=0, max_new_tokens=6, greedy=True)
    plain = generate(model, prompts_of(tokenizer), eos_ids=[0], pad_id=0, max_new_tokens=6, greedy=True)
    assert not torch.equal(adapted.completion_ids, plain.completion_ids)  # the adapters are really merged in
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_bfloat16_base_with_float32_adapters_samples_from_peft_s_own_merge(tiny_model_dir):
    """The decoder's merged weights are what peft's merge_adapter writes, in the base's dtype (bfloat16 here, with
    peft's float32 adapters): found by the plan of a bfloat16 3B run, which stopped on mixed dtypes."""
    import copy

    from thinktune.config import ModelConfig
    from thinktune.models import load_policy

    model, tokenizer = load_policy(ModelConfig(name=tiny_model_dir, finetune="lora", dtype="bfloat16", device="cpu"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    decoder = LlamaDecoder(model, max_columns=16)
    merged = copy.deepcopy(model)
    merged.merge_adapter()
    layer = merged.base_model.model.model.layers[0]
    peft_qkv = torch.cat([getattr(layer.self_attn, f"{x}_proj").base_layer.weight for x in "qkv"])
    qkv = decoder.layers[0]["qkv"]
    assert qkv.dtype == torch.bfloat16
    identity = torch.eye(peft_qkv.shape[1], dtype=torch.bfloat16)
    assert torch.equal(qkv(identity).T, peft_qkv)  # each output one weight times 1: exact, packed or not
    out = generate(model, prompts_of(tokenizer), eos_ids=[0], pad_id=0, max_new_tokens=4, greedy=True)
    assert out.completion_ids.shape == (len(prompts_of(tokenizer)), 4)


def test_a_snapshot_serves_a_second_batch_as_a_fresh_one_would(tiny):
    model, tokenizer = tiny
    first, second = prompts_of(tokenizer)[:2], prompts_of(tokenizer)[2:]

    def prefill(decoder, prompts):
        ids, mask = left_pad(prompts, tokenizer.pad_token_id)
        return decoder.prefill(ids, mask, positions(mask), group_size=2), mask.repeat_interleave(2, dim=0)

    with torch.no_grad():
        used = LlamaDecoder(model, max_columns=32)
        _, mask = prefill(used, first)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        used.decode(torch.full((4,), 5), mask, positions(mask)[:, -1:])
        assert torch.equal(prefill(used, second)[0], prefill(LlamaDecoder(model, max_columns=32), second)[0])


def test_float32_adapters_merge_in_one_addmm_to_peft_s_merge_up_to_rounding(tiny_model_dir):
    import copy

    from thinktune.config import ModelConfig
    from thinktune.modeling import effective_weight
    from thinktune.models import load_policy

    model, _ = load_policy(ModelConfig(name=tiny_model_dir, finetune="lora", device="cpu"))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.5)
    merged = copy.deepcopy(model)
    merged.merge_adapter()
    ours = model.base_model.model.model.layers[0].mlp.down_proj
    peft = merged.base_model.model.model.layers[0].mlp.down_proj.base_layer.weight
    weight, _ = effective_weight(ours)
    assert weight.dtype == torch.float32 and not torch.equal(weight, ours.base_layer.weight)
    torch.testing.assert_close(weight, peft, rtol=0, atol=1e-6)


def test_llama_decoder_runs_qwen2_with_qkv_bias(tiny):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _, tokenizer = tiny
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.1,
    )
    model = Qwen2ForCausalLM(config).eval()
    for layer in model.model.layers:  # Qwen2's q/k/v biases start at zero; make them count
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            proj.bias.data.normal_(0, 0.5)
    assert supports_fast_decode(model)
    assert_greedy_matches_hf_generate(model, tokenizer, fast=True)


@BOTH_DECODERS
def test_sampled_logprobs_equal_a_fresh_forward(tiny, fast):
    model, tokenizer = tiny
    r = sample(model, tokenizer, fast, [tokenizer.eos_token_id], max_new_tokens=10, group_size=4, temperature=0.7)
    assert r.completion_ids.shape[0] == 12
    assert_logprobs_of_a_fresh_forward(model, r)


def sample(model, tokenizer, fast, eos_ids, **settings):
    """The test prompts' completions, sampled with a seeded generator."""
    generator = torch.Generator().manual_seed(0)
    return generate(model, prompts_of(tokenizer), eos_ids=eos_ids, pad_id=tokenizer.pad_token_id, fast=fast,
                    generator=generator, **settings)  # fmt: skip


def assert_logprobs_of_a_fresh_forward(model, r):
    """Every sampled token's log-prob is what a forward over the whole sequence gives, at the sampling temperature."""
    with torch.no_grad():
        fresh, _ = completion_logprobs(
            model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, temperature=r.temperature
        )
    mask = r.completion_mask.bool()
    assert torch.allclose(fresh[mask], r.logprobs[mask], atol=1e-4)


@BOTH_DECODERS
def test_rows_that_end_at_different_steps_leave_the_cache_without_disturbing_the_others(tiny, fast):
    """A third of the vocabulary ends a completion, so rows leave the batch at many steps and the last live rows move
    into their places in the cache: every kept token's log-prob is still the one a fresh forward gives."""
    model, tokenizer = tiny
    r = sample(model, tokenizer, fast, list(range(0, len(tokenizer), 3)), max_new_tokens=12, group_size=6)
    lengths = r.completion_mask.sum(-1)
    assert len(set(lengths.tolist())) >= 4 and (lengths < 12).sum() >= 9  # rows ended at several steps
    assert_logprobs_of_a_fresh_forward(model, r)


def test_completion_mask_stops_after_eos_and_ended_rows_leave_the_batch():
    class Scripted(torch.nn.Module):
        """Row 0 emits 5 then end-of-sequence (7); row 1 emits 5, 6, 6 and never ends."""

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.batch_sizes = []

        def forward(self, input_ids, **_):
            script = [[5, 5], [7, 6], [6]]  # step 2 only sees row 1: row 0 has left the batch
            self.batch_sizes.append(input_ids.shape[0])
            logits = torch.full((input_ids.shape[0], 1, 10), -10.0)
            for row, token in enumerate(script[len(self.batch_sizes) - 1]):
                logits[row, 0, token] = 10.0
            return type("Out", (), {"logits": logits})

    model = Scripted()
    r = generate(model, [[1, 2], [3]], eos_ids=[7], pad_id=0, max_new_tokens=3, greedy=True)
    assert model.batch_sizes == [2, 2, 1]
    assert r.completion_ids.tolist() == [[5, 7, 0], [5, 6, 6]]
    assert r.completion_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert r.truncated.tolist() == [False, True]


@BOTH_DECODERS
def test_group_rows_share_the_prompt_prefill(tiny, fast, monkeypatch):
    model, tokenizer = tiny
    calls = []
    if fast:
        forward = LlamaDecoder._forward
        monkeypatch.setattr(
            LlamaDecoder, "_forward", lambda self, ids, *a: calls.append(ids.shape) or forward(self, ids, *a)
        )
    hook = model.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        r = generate(
            model,
            prompts_of(tokenizer)[:2],
            eos_ids=[tokenizer.eos_token_id],
            pad_id=tokenizer.pad_token_id,
            max_new_tokens=3,
            group_size=4,
            generator=torch.Generator().manual_seed(0),
            fast=fast,
        )
    finally:
        hook.remove()
    assert calls[0][0] == 2  # two prompts prefilled once each ...
    assert r.completion_ids.shape[0] == 8 and calls[1] == (8, 1)  # ... then decoded as 2 x 4 rows
    assert torch.equal(r.prompt_ids[0], r.prompt_ids[3]) and not torch.equal(r.prompt_ids[3], r.prompt_ids[4])


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # top_p 0.7: 0.5 alone is not enough, 0.5 + 0.3 crosses it -> keep two
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]


def test_sample_categorical_follows_the_distribution_and_never_picks_zero_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0]]).repeat(20_000, 1)
    draws = sample_categorical(probs, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(draws, minlength=5).float() / len(draws)
    assert frequencies[4] == 0
    # 20 000 draws: the standard error of a 0.5 frequency is 0.0035
    assert torch.allclose(frequencies[:4], probs[0, :4], atol=0.015)


def test_sample_categorical_in_two_levels_follows_the_distribution_across_blocks():
    """A vocabulary of 3000 in blocks of 1024 (the last one short): mass in three blocks, none elsewhere."""
    probs = torch.zeros(3000)
    probs[[5, 1500, 2999]] = torch.tensor([0.2, 0.5, 0.3])
    draws = sample_categorical(probs.repeat(20_000, 1), torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {5, 1500, 2999}
    frequencies = torch.bincount(draws, minlength=3000)[[5, 1500, 2999]].float() / len(draws)
    assert torch.allclose(frequencies, torch.tensor([0.2, 0.5, 0.3]), atol=0.015)


def test_a_draw_rounded_past_the_total_takes_the_last_token_with_mass():
    from thinktune.rollout.engine import _invert_cdf

    cdf = torch.tensor([[1.0, 2.0, 2.0, 2.0]])  # tokens 2 and 3 carry no mass
    assert _invert_cdf(cdf, torch.tensor([[2.0]])).item() == 1
    assert _invert_cdf(cdf, torch.tensor([[0.5]])).item() == 0


def test_pick_tokens_samples_inside_top_k_and_reports_the_unfiltered_log_prob():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).repeat(2000, 1)
    token, logp = pick_tokens(logits, False, 1.0, top_k=2, top_p=1.0, generator=torch.Generator().manual_seed(0))
    assert set(token.tolist()) == {0, 1}
    assert torch.allclose(logp, torch.log(torch.tensor([0.5, 0.3]))[token], atol=1e-6)


def test_the_vllm_backend_without_vllm_is_one_clear_error(tiny, monkeypatch):
    import importlib.util

    from thinktune.rollout import make_backend
    from thinktune.rollout.vllm_backend import VllmMissing

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(VllmMissing, match=r"rollout.backend: vllm needs vLLM: pip install 'thinktune\[vllm\]'"):
        make_backend("vllm", *tiny)


@BOTH_DECODERS
def test_a_bfloat16_sampler_computes_in_bfloat16_close_to_float32(tiny, fast):
    model, tokenizer = tiny
    sample = dict(eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id, max_new_tokens=10, group_size=4,
                  temperature=0.7, fast=fast)  # fmt: skip
    r = generate(model, prompts_of(tokenizer), generator=torch.Generator().manual_seed(0), dtype=torch.bfloat16,
                 **sample)  # fmt: skip
    with torch.no_grad():
        fresh, _ = completion_logprobs(
            model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask, temperature=0.7
        )
    mask = r.completion_mask.bool()
    gap = (fresh[mask] - r.logprobs[mask]).abs()
    assert 0 < gap.mean() < 0.02 and gap.max() < 0.2  # bfloat16's rounding: close to float32, never equal
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the model itself is left as it was


def test_rollout_dtype_auto_takes_bfloat16_only_where_the_machine_runs_it_faster(monkeypatch):
    import thinktune.environment as environment
    import thinktune.rollout.backend as backend

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(environment, "bf16_matmul_speedup", lambda: 0.6)  # bf16 instructions slower than float32
    assert backend.sampling_dtype("auto", cpu, torch.float32) is None
    assert backend.sampling_dtype("auto", cuda, torch.float32) is torch.bfloat16
    monkeypatch.setattr(environment, "bf16_matmul_speedup", lambda: 1.2)  # within the margin: not worth the gap
    assert backend.sampling_dtype("auto", cpu, torch.float32) is None
    monkeypatch.setattr(environment, "bf16_matmul_speedup", lambda: 2.0)
    assert backend.sampling_dtype("auto", cpu, torch.float32) is torch.bfloat16
    assert backend.sampling_dtype("bfloat16", cpu, torch.bfloat16) is None  # a bfloat16 model already is
    assert backend.sampling_dtype("model", cpu, torch.float32) is None


def test_every_run_records_the_matmul_probe_whose_ratio_decides_bfloat16(monkeypatch):
    import thinktune.environment as environment

    measured = environment.matmul_probe.__wrapped__()  # this machine, timed now (not the process's cached figures)
    monkeypatch.setattr(environment, "matmul_probe", lambda: {"float32": 3.0, "bfloat16": 1.2})
    described = environment.describe("cpu")
    assert described["cpu_matmul_probe_ms"] == {"float32": 3.0, "bfloat16": 1.2}
    assert described["cpu_bf16_matmul_speedup"] == 2.5
    assert set(measured) == {"float32", "bfloat16"} and all(ms > 0 for ms in measured.values())


def test_a_prefix_common_to_every_prompt_is_prefilled_once_and_changes_no_token(tiny, monkeypatch):
    model, tokenizer = tiny
    preamble = "you are a careful assistant: think step by step, check every step twice, then answer. " * 3
    prompts = [tokenizer(preamble + q)["input_ids"] for q in ("one plus two", "calculate three", "a cat or a dog?")]
    shared = len(tokenizer(preamble.rstrip())["input_ids"]) - 1  # the tokens every prompt starts with, at least
    assert shared * 2 >= MIN_SHARED_POSITIONS  # enough to be worth a pass of its own
    calls = []
    forward = LlamaDecoder._forward
    monkeypatch.setattr(
        LlamaDecoder, "_forward", lambda self, ids, *a: calls.append(ids.shape) or forward(self, ids, *a)
    )

    def run(**kwargs):
        calls.clear()
        return generate(model, prompts, eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
                        max_new_tokens=12, **kwargs)  # fmt: skip

    greedy = run(greedy=True)
    width = greedy.prompt_ids.shape[1]
    assert calls[0][0] == 1 and calls[0][1] >= shared  # the common prefix, once
    assert calls[1] == (3, width - calls[0][1])  # then what follows it in each prompt
    sampled = run(group_size=4, temperature=0.7, generator=torch.Generator().manual_seed(0))
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    assert torch.equal(greedy.prompt_ids, ids) and torch.equal(greedy.prompt_mask, mask)  # recorded left-padded
    hf = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )[:, width:]
    for row in range(len(prompts)):
        n = int(greedy.completion_mask[row].sum())
        assert greedy.completion_ids[row, :n].tolist() == hf[row, :n].tolist()

    monkeypatch.setattr(LlamaDecoder, "shares_prefix", False)  # every prompt prefilled whole, as before
    whole = run(group_size=4, temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert calls[0] == (3, width)
    assert torch.equal(sampled.completion_ids, whole.completion_ids)
    torch.testing.assert_close(sampled.logprobs, whole.logprobs, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "greedy, temperature, top_k, top_p", [(True, 1.0, 0, 1.0), (False, 0.7, 0, 1.0), (False, 0.9, 20, 0.8)]
)
def test_bfloat16_logits_pick_what_their_float32_copy_picks_to_the_bit(greedy, temperature, top_k, top_p):
    logits = (torch.randn(32, 49152, generator=torch.Generator().manual_seed(0)) * 6).bfloat16()
    picks = [
        pick_tokens(x, greedy, temperature, top_k, top_p, torch.Generator().manual_seed(1))
        for x in (logits, logits.float())
    ]
    assert picks[0][1].dtype == torch.float32
    assert torch.equal(picks[0][0], picks[1][0]) and torch.equal(picks[0][1], picks[1][1])
