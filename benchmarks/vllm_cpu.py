"""Rollout speed of the native engine against vLLM's CPU build and Hugging Face ``generate`` on one batch:
`python benchmarks/vllm_cpu.py --engine native|native-bf16|hf-generate|vllm|vllm-lora` (the same 4 prompts x 8
samples, temperature 0.7, up to 64 tokens, SmolLM2-135M float32). native-bf16 samples with ``rollout.dtype:
bfloat16`` and also prints the mean gap of its log-probs to float32's on the same tokens. vllm pushes the LoRA
policy's weights merged (``rollout.vllm_weights: merged``), vllm-lora hands vLLM the adapter (``lora``).

`rollout.backend: vllm` samples with such an engine in training; this measures the engines alone. vllm-cpu pins
transformers below 5.20, so it lives in its own environment, which `make test-vllm` builds:

    make test-vllm                                           # builds .venv-vllm, runs the vLLM tests
    .venv-vllm/bin/python benchmarks/vllm_cpu.py --engine vllm
    .venv-vllm/bin/python benchmarks/vllm_cpu.py --engine vllm-lora
    .venv/bin/python benchmarks/vllm_cpu.py --engine native
"""

from __future__ import annotations

import argparse
import time

PROMPTS = [f"Calculate {a} + {b}." for a, b in ((12, 5), (7, 3), (40, 2), (9, 9))]
GROUP, TEMPERATURE, MAX_TOKENS, REPEATS = 8, 0.7, 64, 3


def native(path: str, dtype=None) -> None:
    import torch

    from thinktune.logprobs import rollout_logprobs
    from thinktune.models import load_for_inference
    from thinktune.rollout import generate
    from thinktune.tokens import eos_token_ids

    model, tokenizer = load_for_inference(path, device="cpu")
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    generator = torch.Generator().manual_seed(0)

    sampling = dict(max_new_tokens=MAX_TOKENS, group_size=GROUP, temperature=TEMPERATURE, generator=generator)
    engine = "native" if dtype is None else "native-bf16"

    def run():
        return generate(model, prompts, eos_ids=eos_token_ids(tokenizer), pad_id=tokenizer.pad_token_id,
                        dtype=dtype, **sampling)  # fmt: skip

    run()  # warm-up
    for _ in range(REPEATS):
        began = time.perf_counter()
        rollout = run()
        report(engine, int(rollout.completion_mask.sum()), time.perf_counter() - began)
        if dtype is not None:  # what the update's recomputed old log-probs will differ by
            with torch.no_grad():
                exact = rollout_logprobs(model, rollout, 16)
            valid = rollout.completion_mask.bool()
            print(f"{engine}: log-prob gap to float32 {(exact - rollout.logprobs)[valid].abs().mean():.4f} (mean)")


def hf_generate(path: str) -> None:
    """Hugging Face's own ``generate`` on the same model and batch (float32, sampling at the same temperature)."""
    import torch

    from thinktune.modeling import left_pad
    from thinktune.models import load_for_inference
    from thinktune.tokens import eos_token_ids

    model, tokenizer = load_for_inference(path, device="cpu")
    model.eval()
    ids, mask = left_pad([tokenizer(p)["input_ids"] for p in PROMPTS for _ in range(GROUP)], tokenizer.pad_token_id)
    eos = eos_token_ids(tokenizer)

    def run() -> int:
        sampling = dict(do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0, max_new_tokens=MAX_TOKENS)
        out = model.generate(input_ids=ids, attention_mask=mask, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                             **sampling)  # fmt: skip
        completions = out[:, ids.shape[1] :]
        ended = torch.isin(completions, torch.tensor(eos))
        after_end = (ended.long().cumsum(-1) - ended.long()) > 0  # tokens after a row's end are padding
        return int((~after_end).sum())

    with torch.no_grad():
        run()  # warm-up
        for _ in range(REPEATS):
            began = time.perf_counter()
            tokens = run()
            report("hf-generate", tokens, time.perf_counter() - began)


def vllm(path: str, weights: str = "merged") -> None:
    """Through thinktune's vLLM backend, on a LoRA policy: the engine's start, a weight push, then sampling."""
    import torch

    from thinktune.config import ModelConfig, RolloutConfig
    from thinktune.models import load_policy
    from thinktune.rollout import SamplingParams, make_backend

    model, tokenizer = load_policy(ModelConfig(name=path, device="cpu"))
    engine = "vllm" if weights == "merged" else "vllm-lora"
    began = time.perf_counter()
    backend = make_backend(RolloutConfig(backend="vllm", vllm_weights=weights), model, tokenizer)
    print(f"{engine}: engine up in {time.perf_counter() - began:.1f} s")
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    params = SamplingParams(max_new_tokens=MAX_TOKENS, group_size=GROUP, temperature=TEMPERATURE)
    generator = torch.Generator().manual_seed(0)
    backend.generate(prompts, params, generator)  # warm-up
    how = "LoRA merged, layers packed again" if weights == "merged" else "adapter saved, handed to vLLM"
    for _ in range(REPEATS):  # as in training: new weights, then a batch sampled with them
        began = time.perf_counter()
        backend.weights_changed()
        pushed = time.perf_counter()
        tokens = int(backend.generate(prompts, params, generator).completion_mask.sum())
        print(f"{engine}: weights pushed ({how}) in {pushed - began:.2f} s")
        report(engine, tokens, time.perf_counter() - pushed)


def report(engine: str, tokens: int, seconds: float) -> None:
    print(f"{engine}: {len(PROMPTS)} prompts x {GROUP} samples: {tokens} tokens in {seconds:.2f} s = "
          f"{tokens / seconds:.0f} tokens/s")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--engine", choices=["native", "native-bf16", "hf-generate", "vllm", "vllm-lora"], default="native"
    )
    args = parser.parse_args()
    import torch

    from thinktune.allocator import keep_freed_memory
    from thinktune.models import resolve_model

    keep_freed_memory()  # as the CLI runs every engine: glibc keeps freed blocks instead of unmapping them

    path = resolve_model("smollm2-135m-instruct")
    if args.engine.startswith("native"):
        native(path, torch.bfloat16 if args.engine == "native-bf16" else None)
    elif args.engine == "hf-generate":
        hf_generate(path)
    else:
        vllm(path, "merged" if args.engine == "vllm" else "lora")
