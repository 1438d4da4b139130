"""Would torch's compiler speed up the sampler? `python benchmarks/compiled_decode.py` (a few minutes: compiling).

Times one bfloat16 decode step of SmolLM2-135M with LoRA (``LlamaDecoder``, 100 prompt columns) at 32 rows and at 1
row (the tail of a rollout, when most completions have ended): the step as the sampler runs it (weights packed for
oneDNN), with plain bfloat16 weights, and that one compiled by ``torch.compile`` (inductor, dynamic shapes: rows
leave and columns grow during a rollout). It prints how long compiling took, and what compiling the packed step
does. The step at 1 row shows the per-operation cost a decode step pays on top of reading the weights.
"""

from __future__ import annotations

import time
from unittest import mock

import torch
from op_timings import median_ms

PROMPT, ROWS = 100, 32


def step_ms(decoder, forward, rows: int) -> tuple[float, torch.Tensor]:
    """Median ms of ``forward`` as one decode step after a prompt's prefill, and its logits at the first step."""
    from thinktune.modeling import positions

    prompt = torch.randint(1000, 2000, (rows, PROMPT), generator=torch.Generator().manual_seed(0))
    mask, token = torch.ones_like(prompt), prompt[:, -1]
    decoder.prefill(prompt, mask, positions(mask), 1)
    columns = [mask]

    def step():
        columns[0] = torch.cat([columns[0], torch.ones_like(mask[:, :1])], -1)
        return forward(token[:, None], columns[0], torch.full((rows, 1), columns[0].shape[1] - 1))

    first = step()
    return median_ms(step, 10), first


def main() -> None:
    from thinktune.config import ModelConfig
    from thinktune.models import load_policy
    from thinktune.rollout import decoders
    from thinktune.rollout.decoders import LlamaDecoder

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    model, _ = load_policy(ModelConfig(name="smollm2-135m-instruct", finetune="lora"))
    model.eval()
    columns = PROMPT + 40  # each step_ms call prefills anew, then decodes 14 steps (the first, 3 warm-up, 10 timed)
    with torch.no_grad():
        packed = LlamaDecoder(model, columns, torch.bfloat16, ROWS)
        with mock.patch.object(decoders, "_onednn_packed", lambda *_: None):
            plain = LlamaDecoder(model, columns, torch.bfloat16, ROWS)
        start = time.perf_counter()
        compiled = torch.compile(plain._forward, dynamic=True)
        step_ms(plain, compiled, 2)  # the first call compiles
        print(f"compiling the plain-weights step: {time.perf_counter() - start:.0f} s")
        for rows in (ROWS, 1):
            packed_ms, _ = step_ms(packed, packed._forward, rows)
            plain_ms, eager = step_ms(plain, plain._forward, rows)
            compiled_ms, fused = step_ms(plain, compiled, rows)
            gap = (fused.float() - eager.float()).abs().max().item()
            print(
                f"{rows:2} rows: packed (the sampler) {packed_ms:6.1f} ms, plain weights {plain_ms:6.1f} ms, "
                f"plain compiled {compiled_ms:6.1f} ms (largest logit gap to plain {gap:.3g})"
            )
        try:
            step_ms(packed, torch.compile(packed._forward, dynamic=True), 2)
            print("the packed step compiled")
        except Exception as err:  # noqa: BLE001 - the report is the point
            print(f"the packed step does not compile: {type(err).__name__}: {str(err).splitlines()[0][:160]}")


if __name__ == "__main__":
    main()
