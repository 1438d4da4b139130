"""Several processes (torchrun, gloo on CPU): one update split over two processes equals one process on all the
groups, and a whole run under torchrun logs every step once, counts every process's prompts and resumes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from tests.helpers import read_lines, tiny_recipe
from tests.test_model_families import gemma_3
from tests.test_pairs import pairs_recipe
from thinktune.config import ConfigError
from thinktune.distributed import Ranks
from thinktune.parallel import parallel_engine
from thinktune.recipe import dump_recipe
from thinktune.rollout import generate

ROOT = Path(__file__).resolve().parents[1]


def torchrun(processes: int, *args, cwd=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def one_update(tmp_path, tiny, tiny_model_dir, processes: int, *overrides, idle_half=False) -> dict:
    """One update on a fixed rollout (4 prompts × 8 completions) by ``processes`` processes
    (tests/distributed_step.py): the whole weights after it, its statistics and the shares each process held.
    ``idle_half``: the last two groups have advantage 0, so on two processes the second has nothing to train."""
    model, tokenizer = tiny
    rollout_file = tmp_path / f"rollout{'-idle' if idle_half else ''}.pt"
    if not rollout_file.is_file():
        prompts = [tokenizer(f"say {w}")["input_ids"] for w in ("one", "two", "cat", "dog")]
        rollout = generate(model, prompts, eos_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id,
                           max_new_tokens=8, group_size=8, generator=torch.Generator().manual_seed(0))  # fmt: skip
        advantages = torch.randn(32, generator=torch.Generator().manual_seed(1))
        if idle_half:
            advantages[16:] = 0.0
        torch.save((rollout, advantages), rollout_file)
    name = f"{processes}-{'-'.join(overrides)}{'-idle' if idle_half else ''}"
    recipe = tmp_path / f"{name}.yaml"
    settings = ["grpo.prompts_per_step=4", "grpo.micro_batch_size=8", "run.threads=1", *overrides]
    recipe.write_text(dump_recipe(tiny_recipe(tmp_path, tiny_model_dir, *settings)))
    out = tmp_path / f"{name}.pt"
    done = torchrun(processes, str(ROOT / "tests" / "distributed_step.py"), str(recipe), str(rollout_file), str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out, weights_only=False)


def assert_same_update(one: dict, two: dict) -> None:
    """The same update, its sums taken in another order: the reduced gradients equal one process's to float32
    rounding. The weights after AdamW's first step can differ more where a gradient is within rounding of 0: the step
    is lr·g/(|g| + 1e-8), so a 1e-10 change in such a g moves its weight by up to 3e-5 (measured: at most 4 of 83k
    weights beyond 1e-6)."""
    for a, b in zip(one["gradients"], two["gradients"], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
    differences = torch.cat([(a - b).abs().flatten() for a, b in zip(one["params"], two["params"], strict=True)])
    assert (differences > 1e-6).float().mean() < 1e-3
    assert two["stats"]["loss"] == pytest.approx(one["stats"]["loss"], abs=1e-6)
    assert two["stats"]["grad_norm"] == pytest.approx(one["stats"]["grad_norm"], rel=1e-5)


def test_an_update_on_ddp_equals_one_process_on_everything(tmp_path, tiny, tiny_model_dir):
    # micro-batches of 8 rows: each process accumulates three (shared prompts), the fourth reduces
    one, two = (one_update(tmp_path, tiny, tiny_model_dir, n) for n in (1, 2))
    moved = [not torch.equal(a, b) for a, b in zip(one["params"], tiny[0].parameters(), strict=True)]
    assert any(moved)
    assert_same_update(one, two)
    assert two["held"] == {"grads": 1.0, "params": 1.0, "optimizer": 1.0}  # DDP: everything everywhere


def test_a_process_with_nothing_to_train_joins_the_reduction_with_a_zero_loss(tmp_path, tiny, tiny_model_dir):
    # process 1's groups all have advantage 0: it runs only the zero pass, and the update is still process 0's
    one, two = (one_update(tmp_path, tiny, tiny_model_dir, n, idle_half=True) for n in (1, 2))
    assert one["stats"]["trained_rows"] == two["stats"]["trained_rows"] == 0.5
    assert_same_update(one, two)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_an_update_on_fsdp_equals_one_process_and_each_holds_half(tmp_path, tiny, tiny_model_dir, finetune):
    one = one_update(tmp_path, tiny, tiny_model_dir, 1, f"model.finetune={finetune}")
    two = one_update(tmp_path, tiny, tiny_model_dir, 2, f"model.finetune={finetune}", "train.distributed=fsdp")
    assert_same_update(one, two)
    # FSDP2 splits each tensor's first dimension in two; rows that do not split evenly leave a little over
    for part, held in two["held"].items():
        assert 0.45 < held <= 0.55, (part, held)


def test_a_run_under_torchrun_logs_each_step_once_and_resumes(tmp_path, tiny_model_dir):
    # dynamic sampling and the curriculum: every process draws the same prompts and the rounds are agreed
    settings = ["train.steps=4", "run.save_every=2", "eval.every=2", "eval.after=true", "run.threads=1",
                "grpo.dynamic_sampling=true", "grpo.max_sampling_rounds=3", "grpo.curriculum=pass_rate"]  # fmt: skip
    recipe = tmp_path / "r.yaml"
    recipe.write_text(dump_recipe(tiny_recipe(tmp_path, tiny_model_dir, *settings)))
    done = torchrun(2, "-m", "thinktune.cli", "train", str(recipe))
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "tiny"
    records = read_lines(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:  # both processes' prompts, counted once; each round draws 2 or more for each process
        assert r["sampled_prompts"] >= 4 and r["sampled_prompts"] % 2 == 0 and 1 <= r["sampling_rounds"] <= 3
        assert r["kept_groups"] + r["sampling_shortfall"] == 4
    assert [r["step"] for r in read_lines(run / "eval_curve.jsonl")] == [2, 4]
    assert read_lines(run / "samples.jsonl") and (run / "final" / "config.json").is_file()

    recipe.write_text(dump_recipe(tiny_recipe(tmp_path, tiny_model_dir, *settings[1:], "train.steps=6")))
    done = torchrun(1, "-m", "thinktune.cli", "train", str(recipe), "--resume")  # ddp's whole weights: 2 -> 1
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in read_lines(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in read_lines(run / "resume_changes.jsonl")] == [4]  # recorded once, by process 0


def on_processes(processes: int, tmp_path, recipe_in) -> Path:
    """``thinktune train`` under torchrun on ``processes`` processes, of the recipe ``recipe_in(folder)`` makes in a
    folder of its own; the run folder."""
    folder = tmp_path / str(processes)
    folder.mkdir()
    recipe = recipe_in(folder)
    (folder / "r.yaml").write_text(dump_recipe(recipe))
    done = torchrun(processes, "-m", "thinktune.cli", "train", str(folder / "r.yaml"))
    assert done.returncode == 0, done.stderr[-3000:]
    return recipe.run.path


def test_sft_pairs_and_the_reward_model_on_two_processes_equal_one_and_grpo_follows(tmp_path, tiny_model_dir):
    # SFT: 4 examples a step, 2 each; pairs: 3 a batch each, written by process 0 in order; the reward model:
    # 8 pairs a step, 4 each in micro-batches of 2 (the first kept local, the second reduces)
    settings = ["stages=[sft, pairs, reward_model, grpo]", "sft.steps=3", "sft.batch_size=4", "reward_model.steps=2",
                "reward_model.eval_pairs=2", "reward_model.micro_batch_size=2", "eval.before=true",
                "eval.after=false", "run.threads=1", "train.steps=1", "grpo.prompts_per_step=2",
                "grpo.group_size=4", "grpo.max_new_tokens=4"]  # fmt: skip
    one, two = (on_processes(n, tmp_path, lambda f: pairs_recipe(f, tiny_model_dir, *settings)) for n in (1, 2))
    assert [r["step"] for r in read_lines(two / "metrics.jsonl")] == [1]  # GRPO after them, from sft/
    assert (two / "eval_before.json").is_file()  # the SFT stage's evaluation, which GRPO's every process reuses

    def pairs(run):  # the paths in their provenance differ
        return [
            {k: v for k, v in p.items() if k not in ("dataset", "rejected_by")} for p in read_lines(run / "pairs.jsonl")
        ]

    assert pairs(two) == pairs(one) and [p["example_index"] for p in pairs(two)] == list(range(8))
    for name in ("sft_metrics.jsonl", "reward_model_metrics.jsonl"):
        a, b = read_lines(one / name), read_lines(two / name)
        assert [r["step"] for r in b] == [r["step"] for r in a] and len(a) > 1
        for x, y in zip(a, b, strict=True):
            assert y["loss"] == pytest.approx(x["loss"], rel=1e-5) and y["grad_norm"] == pytest.approx(
                x["grad_norm"], rel=1e-4
            )
    for folder, weights in (("sft", "model.safetensors"), ("reward_model", "adapter_model.safetensors")):
        a, b = (load_file(run / folder / weights) for run in (one, two))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


def test_an_evaluation_and_batch_scaled_advantages_split_over_two_processes_equal_one_process(tmp_path, tiny_model_dir):
    from tests.distributed_parts import REWARDS, SCORABLE, evaluation
    from thinktune.grpo.advantages import group_advantages

    # 4 problems in chunks of 2 (greedy) and of 1 (2 samples each): each process generates every other chunk
    settings = ["eval.samples=2", "eval.batch_size=2", "run.threads=1"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(dump_recipe(tiny_recipe(tmp_path, tiny_model_dir, *settings)))
    done = torchrun(2, str(ROOT / "tests" / "distributed_parts.py"), str(recipe), str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process ran: the same kernels, to the bit
    try:
        whole = evaluation(str(recipe))
    finally:
        torch.set_num_threads(threads)
    split = torch.load(tmp_path / "out-evaluation.pt", weights_only=False)
    assert split.metrics == whole.metrics and split.samples == whole.samples
    assert whole.metrics["n"] == 4 and "mean@2" in whole.metrics

    advantages, flat = group_advantages(REWARDS, 4, "batch", SCORABLE)
    for rank in (0, 1):
        rows, mine, mine_flat = torch.load(tmp_path / f"out-advantages-{rank}.pt")
        assert torch.equal(mine, advantages[rows]) and torch.equal(mine_flat, flat[2 * rank : 2 * rank + 2])
    share, _ = group_advantages(REWARDS[:8], 4, "batch", SCORABLE[:8])
    assert not torch.allclose(share, advantages[:8])  # a share's own std would have given other advantages


def test_what_several_processes_cannot_run_is_refused_by_name(tmp_path, tiny_model_dir):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(dump_recipe(tiny_recipe(tmp_path, tiny_model_dir, "grpo.prompts_per_step=3")))
    done = torchrun(2, "-m", "thinktune.cli", "train", str(recipe))
    assert done.returncode != 0
    assert "2 processes: grpo.prompts_per_step: 3 does not split over 2" in done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(*args) -> list[subprocess.CompletedProcess]:
    """``torchrun --nnodes 2 --nproc_per_node 1`` launched twice on this machine, as two nodes would launch it
    (c10d rendezvous at one address); both launchers' results."""
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-id=test",
               "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outputs = [node.communicate(timeout=300) for node in nodes]
    return [subprocess.CompletedProcess(command, n.returncode, *out) for n, out in zip(nodes, outputs, strict=True)]


def test_two_nodes_train_on_fsdp_with_sharded_checkpoints_and_resume(tmp_path, tiny_model_dir):
    settings = ["train.distributed=fsdp", "run.save_every=2", "eval.every=2", "eval.after=true", "run.threads=1"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(dump_recipe(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=4", *settings)))
    for node in two_nodes("-m", "thinktune.cli", "train", str(recipe)):
        assert node.returncode == 0, node.stderr[-3000:]
    run = tmp_path / "tiny"
    assert [r["step"] for r in read_lines(run / "metrics.jsonl")] == [1, 2, 3, 4]
    assert all(r["seconds_weight_gather"] >= 0 for r in read_lines(run / "metrics.jsonl"))  # the gather's cost
    assert [r["step"] for r in read_lines(run / "eval_curve.jsonl")] == [2, 4]
    assert sorted(p.name for p in (run / "checkpoint").glob("shards-*")) == ["shards-2", "shards-4"]
    final = AutoModelForCausalLM.from_pretrained(run / "final")  # whole weights, plain transformers
    assert sum(p.numel() for p in final.parameters()) == sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters()
    )

    # one process cannot read the shards: one line says how to resume
    refused = subprocess.run([sys.executable, "-m", "thinktune.cli", "train", str(recipe), "--resume"],
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)  # fmt: skip
    assert refused.returncode != 0
    assert "holds FSDP shards written by 2 processes: resume it under torchrun with train.distributed=fsdp" in (
        refused.stdout + refused.stderr
    )

    recipe.write_text(dump_recipe(tiny_recipe(tmp_path, tiny_model_dir, "train.steps=6", *settings)))
    done = torchrun(2, "-m", "thinktune.cli", "train", str(recipe), "--resume")  # 2 nodes -> 2 local processes
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in read_lines(run / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (run / "checkpoint").glob("shards-*")) == ["shards-4", "shards-6"]


def test_a_lora_run_on_fsdp_saves_an_adapter_plain_peft_loads(tmp_path, tiny_model_dir):
    settings = ["model.finetune=lora", "train.distributed=fsdp", "train.steps=2", "run.threads=1"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(dump_recipe(tiny_recipe(tmp_path, tiny_model_dir, *settings)))
    done = torchrun(2, "-m", "thinktune.cli", "train", str(recipe))
    assert done.returncode == 0, done.stderr[-3000:]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "tiny" / "final")
    trained = [p for name, p in model.named_parameters() if "lora_B" in name]  # B starts at zero: moved = trained
    assert trained and all(p.abs().sum() > 0 for p in trained)


def test_several_processes_refuse_a_model_whose_head_neither_engine_would_see(tmp_path, tiny, tiny_model_dir):
    # Gemma-3 scales its logits: the trainer runs its own forward, outside DDP's wrapper (refused before any
    # process group is needed)
    gemma = gemma_3(len(tiny[1]), {"pad_token_id": tiny[1].pad_token_id})
    recipe = tiny_recipe(tmp_path, tiny_model_dir)
    with pytest.raises(ConfigError, match="train.distributed: several processes train Llama-family models .* gemma3"):
        parallel_engine(recipe, gemma, Ranks(0, 2))
