"""The per-operation measurements behind the rollout and log-prob choices: `python benchmarks/op_timings.py`.

Prints median milliseconds on this machine for: sampling 32 rows from a 49k vocabulary (``torch.multinomial``
vs inverting the cumulative sum in two levels, and what one level's cumulative sum alone takes), ``exp``/``logsumexp``
over real-looking logits (denormals vs the clamped normaliser), and one decode step of SmolLM2-135M with LoRA at 32
rows (Hugging Face forward with a ``DynamicCache`` vs thinktune's ``LlamaDecoder``, in float32, in bfloat16 and in
bfloat16 with its weights not packed for oneDNN; the packed bfloat16 step at 24, 16 and 8 rows too), plus the matmul
time inside that step, the weight snapshot the decoder builds once a rollout, and one layer's decode attention
(torch's fused kernel vs ``one_query_attention``); and for training, the LM head's chunked log-probs forward and
backward (1400 tokens, the forward's logits kept for the backward or recomputed there), and one layer's attention
forward and backward (transformers' repeated key/value heads vs thinktune's grouped heads); and what rows that end cost
the decode cache.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from unittest import mock

import torch

ROWS, VOCAB = 32, 49152


def median_ms(fn, repeats: int = 15) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def sampling_and_softmax() -> None:
    from thinktune.logits import log_normalizer, sampling_weights
    from thinktune.rollout.engine import sample_categorical

    torch.manual_seed(0)
    logits = torch.randn(ROWS, VOCAB) * 30  # a spread of well over 87 nats, like a trained model's logits
    probs = sampling_weights(logits)[0]  # what the sampler draws from: no denormal weights (see logits.py)
    generator = torch.Generator().manual_seed(0)
    multinomial = median_ms(lambda: torch.multinomial(probs, 1, generator=generator))
    print(f"sample 32 x 49k   torch.multinomial        {multinomial:8.2f} ms")
    print(
        f"                  inverse CDF, two levels  {median_ms(lambda: sample_categorical(probs, generator)):8.2f} ms"
    )
    print(f"                  one level's cumulative sum alone {median_ms(lambda: probs.cumsum(-1)):8.2f} ms")
    shifted = logits - logits.amax(-1, keepdim=True)
    print(f"exp 32 x 49k      with denormal results    {median_ms(lambda: shifted.exp()):8.2f} ms")
    print(f"                  clamped at -80           {median_ms(lambda: shifted.clamp(min=-80).exp()):8.2f} ms")
    print(f"log-normaliser    torch.logsumexp          {median_ms(lambda: logits.logsumexp(-1)):8.2f} ms")
    print(f"                  thinktune log_normalizer {median_ms(lambda: log_normalizer(logits)):8.2f} ms")


def decode_step() -> None:
    from transformers import DynamicCache

    from thinktune.config import ModelConfig
    from thinktune.modeling import positions
    from thinktune.models import load_policy
    from thinktune.rollout import decoders
    from thinktune.rollout.decoders import LlamaDecoder

    model, _ = load_policy(ModelConfig(name="smollm2-135m-instruct", finetune="lora"))
    model.eval()
    prompt = torch.randint(1000, 2000, (ROWS, 100))
    mask = torch.ones_like(prompt)
    token = torch.randint(1000, 2000, (ROWS,))
    with torch.no_grad():
        cache = DynamicCache()
        model(input_ids=prompt, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
        columns = [mask]

        def hf_step():
            columns[0] = torch.cat([columns[0], torch.ones_like(mask[:, :1])], -1)
            width = columns[0].shape[1]
            model(
                input_ids=token[:, None],
                attention_mask=columns[0],
                position_ids=torch.full((ROWS, 1), width - 1),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )

        print(f"decode step 32 rows, SmolLM2 + LoRA  HF forward + DynamicCache {median_ms(hf_step, 10):8.1f} ms")

        def fast_step_ms(decoder, rows: int = ROWS) -> float:
            decoder.prefill(prompt[:rows], mask[:rows], positions(mask[:rows]), 1)
            columns = [mask[:rows]]

            def fast_step():
                columns[0] = torch.cat([columns[0], torch.ones_like(mask[:rows, :1])], -1)
                width = columns[0].shape[1]
                decoder.decode(token[:rows], columns[0], torch.full((rows, 1), width - 1))

            return median_ms(fast_step, 10)

        unpacked = mock.patch.object(decoders, "_onednn_packed", lambda *_: None)  # every matmul through F.linear
        for name, dtype, packing, fewer_rows in (  # fewer rows: as completions end during a rollout
            ("thinktune LlamaDecoder", torch.float32, contextlib.nullcontext(), ()),
            ("  in bfloat16", torch.bfloat16, contextlib.nullcontext(), (24, 16, 8)),
            ("  in bfloat16, not packed", torch.bfloat16, unpacked, ()),
        ):
            with packing:
                decoder = LlamaDecoder(model, 100 + 40, None if dtype == torch.float32 else dtype, ROWS)
            print(f"                                     {name:26}{fast_step_ms(decoder):8.1f} ms")
            hidden = torch.randn(ROWS, 1, model.config.hidden_size, dtype=dtype)
            inner = torch.randn(ROWS, 1, model.config.intermediate_size, dtype=dtype)

            def matmuls(decoder=decoder, hidden=hidden, inner=inner):
                for layer in decoder.layers:
                    layer["qkv"](hidden), layer["o"](hidden), layer["gate_up"](hidden), layer["down"](inner)

            print(f"                                       of which layer matmuls  {median_ms(matmuls, 10):8.1f} ms")
            head = median_ms(lambda decoder=decoder, hidden=hidden: decoder.lm_head(hidden), 10)
            print(f"                                       of which LM head        {head:8.1f} ms")
            for rows in fewer_rows:
                step = fast_step_ms(decoder, rows)
                print(f"                                       the step at {rows:2} rows     {step:8.1f} ms")
        for name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):  # merge, cast, fuse, pack: once a rollout
            built = median_ms(lambda dtype=dtype: LlamaDecoder(model, 100 + 40, dtype, ROWS), 5)
            print(f"the sampler's weight snapshot, {name:9}                {built:8.1f} ms")


def decode_attention() -> None:
    """One layer's attention in a decode step of SmolLM2's shape (32 rows, 9 query heads over 3 key/value heads,
    160 columns): torch's fused kernel against thinktune's two small matmuls, in float32 and bfloat16."""
    from thinktune.rollout.decoders import grouped_mask, one_query_attention, sdpa

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(ROWS, 9, 1, 64, generator=generator)
    # As the decoder caches them: keys transposed, room for 200 columns, 160 written.
    keys_t, v = torch.randn(ROWS, 3, 64, 200, generator=generator), torch.randn(ROWS, 3, 200, 64, generator=generator)
    visible = torch.ones(ROWS, 1, 1, 160, dtype=torch.bool)
    visible[:5, ..., :20] = False  # left padding on a few rows
    for dtype in (torch.float32, torch.bfloat16):
        args = (q.to(dtype), keys_t.to(dtype)[..., :160], v.to(dtype)[:, :, :160], visible, 64**-0.5)
        ours_args = (*args[:3], grouped_mask(visible, 3, dtype), args[4])
        fused = median_ms(lambda a=args: sdpa(*a), 50)
        ours = median_ms(lambda a=ours_args: one_query_attention(*a), 50)
        print(f"decode attention {str(dtype)[6:]:9} torch fused {fused:6.3f} ms  one_query_attention {ours:6.3f} ms")


def cache_keep() -> None:
    """What a decode step pays when 2 of 32 rows end (the bfloat16 cache of SmolLM2's 30 layers, 120 of 200 columns
    written): every live row copied into a new cache, against ``LlamaDecoder.keep``'s moving the last live rows into
    the ended rows' places."""
    from thinktune.rollout.decoders import LlamaDecoder
    from thinktune.rollout.engine import tail_into_gaps

    decoder = LlamaDecoder.__new__(LlamaDecoder)
    decoder.filled = 120
    decoder.keys = [torch.zeros(ROWS, 3, 64, 200, dtype=torch.bfloat16) for _ in range(30)]
    decoder.values = [torch.zeros(ROWS, 3, 200, 64, dtype=torch.bfloat16) for _ in range(30)]
    live = torch.ones(ROWS, dtype=torch.bool)
    live[[3, 17]] = False
    kept = live.nonzero()[:, 0]

    def copy_all():
        for cache, dim in [(k, 3) for k in decoder.keys] + [(v, 2) for v in decoder.values]:
            fresh = torch.empty((len(kept), *cache.shape[1:]), dtype=cache.dtype)
            torch.index_select(cache.narrow(dim, 0, 120), 0, kept, out=fresh.narrow(dim, 0, 120))

    moved, whole = median_ms(lambda: decoder.keep(tail_into_gaps(live)), 20), median_ms(copy_all, 20)
    print(f"2 of 32 rows end: every live row copied {whole:6.2f} ms, the last 2 moved {moved:6.2f} ms")


def head_logprobs() -> None:
    """Forward and backward of the LM head's chunked log-probs (``head_token_logprobs``) for 1400 completion tokens
    over SmolLM2's 49k vocabulary, under bfloat16 autocast and in float32; with the forward's logits kept for the
    backward (the default within ``KEEP_LOGITS_BYTES``), and recomputed there."""
    from thinktune import logits
    from thinktune.logits import head_token_logprobs

    generator = torch.Generator().manual_seed(0)
    head = torch.randn(VOCAB, 576, generator=generator) * 0.05
    hidden = torch.randn(1400, 576, generator=generator, requires_grad=True)
    tokens = torch.randint(0, VOCAB, (1400,), generator=generator)

    def step(autocast: bool) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logp, _ = head_token_logprobs(hidden, head, tokens, 0.7)
        logp.sum().backward()

    budget = logits.KEEP_LOGITS_BYTES
    for name, keep in (("logits kept", budget), ("recomputed", 0)):
        with mock.patch.object(logits, "KEEP_LOGITS_BYTES", keep):
            bf16, f32 = (median_ms(lambda a=autocast: step(a), 5) for autocast in (True, False))
        line = f"bf16 autocast {bf16:7.1f} ms  float32 {f32:7.1f} ms"
        print(f"LM-head log-probs fwd + bwd, 1400 tokens, {name:11}  {line}")


def training_attention() -> None:
    """Forward and backward of one training layer's attention at SmolLM2's shape (8 rows of 200 positions, 9 query
    heads over 3 key/value heads, a padding mask, float32) with transformers' repeated key/value copies against
    thinktune's in-place grouped heads."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from thinktune.cpu_attention import float32_sdpa

    class Layer(torch.nn.Module):
        is_causal, num_key_value_groups = True, 3

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(8, 9, 200, 64, generator=generator, requires_grad=True)
    k, v = (torch.randn(8, 3, 200, 64, generator=generator, requires_grad=True) for _ in range(2))
    mask = torch.ones(8, 1, 200, 200, dtype=torch.bool).tril()
    mask[0, :, :, :5] = False
    mask[0, :, range(5), range(5)] = True
    upstream = torch.randn(8, 200, 9, 64, generator=generator)

    def attention(fn):
        out, _ = fn(Layer(), q, k, v, mask)
        (out * upstream).sum().backward()

    copies = median_ms(lambda: attention(sdpa_attention_forward))
    grouped = median_ms(lambda: attention(float32_sdpa))
    print(
        f"training attention, forward + backward   repeated copies {copies:6.2f} ms  grouped in place {grouped:6.2f} ms"
    )


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    sampling_and_softmax()
    decode_attention()
    cache_keep()
    head_logprobs()
    training_attention()
    decode_step()
