"""What autograd keeps for the backward pass of one SmolLM2 + LoRA forward, per token, at two lengths:
`python benchmarks/saved_activations.py [--rows 4] [--lengths 166,358]`.

Each saved tensor's storage is counted once (saved-tensor hooks), the model's own parameters left out. A figure that
stays flat across lengths means the saved activations grow linearly, as `thinktune memory` models them; what a
measured peak has beyond that is transient memory of the backward pass.
"""

from __future__ import annotations

import argparse

import torch

from thinktune.config import ModelConfig
from thinktune.models import load_policy


def saved_bytes(model, rows: int, length: int) -> int:
    """Bytes of the distinct non-parameter storages autograd saves in one forward of ``rows`` x ``length`` tokens."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return tensor

    ids = torch.randint(0, 40000, (rows, length), generator=torch.Generator().manual_seed(0))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids, use_cache=False)
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--lengths", default="166,358")
    args = parser.parse_args()
    model, _ = load_policy(ModelConfig(name="smollm2-135m-instruct", finetune="lora"))
    model.train()
    for length in map(int, args.lengths.split(",")):
        total = saved_bytes(model, args.rows, length)
        per_token = total / (args.rows * length) / 1e6
        print(f"{args.rows} rows x {length} tokens: {total / 1e9:.2f} GB saved, {per_token:.2f} MB a token")


if __name__ == "__main__":
    main()
