"""Preference pairs: chosen from the dataset, rejected generated directly; resumable, with provenance."""

import json

from thinktune.pipeline import train
from thinktune.preference import read_pairs
from thinktune.recipe import load_recipe


def pairs_recipe(tmp_path, tiny_model_dir, *overrides):
    data = tmp_path / "worked.jsonl"
    words = "one two three four five six seven eight nine zero".split()
    data.write_text("\n".join(json.dumps({"question": f"say {w}", "answer": w, "why": "yes yes"}) for w in words))
    return load_recipe(
        None,
        [
            "stages=[pairs]",
            f"model.name={tiny_model_dir}",
            "data.source=file",
            f"data.path={data}",
            "data.eval_size=2",
            "sft.completion='<reasoning> {why} </reasoning> <answer> {answer} </answer>'",
            "pairs.batch_size=3",
            "pairs.max_new_tokens=4",
            f"run.output_dir={tmp_path}",
            "run.name=pairs",
            *overrides,
        ],
    )


def test_pairs_are_written_with_provenance_and_a_rerun_continues(tmp_path, tiny_model_dir):
    summary = train(pairs_recipe(tmp_path, tiny_model_dir, "pairs.limit=4"))
    out = tmp_path / "pairs" / "pairs.jsonl"
    assert summary["pairs"]["path"] == str(out) and (tmp_path / "pairs" / "recipe.yaml").is_file()
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(first) == 4
    assert first[1]["chosen"] == "<reasoning> yes yes </reasoning> <answer> two </answer>"
    assert first[1]["prompt"].startswith("<|im_start|>system Respond in the following format")  # GRPO's prompt
    assert first[1]["prompt"].rstrip().endswith("user say two<|im_end|> <|im_start|>assistant")
    assert first[1]["example_index"] == 1 and first[1]["reference"] == "two"
    assert first[1]["rejected_by"]["greedy"] and first[1]["source"] == "file"

    train(pairs_recipe(tmp_path, tiny_model_dir), resume=True)  # all 8 training examples now: continues after 4
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 8 and lines[:4] == first
    assert [row["example_index"] for row in lines] == list(range(8))
    pairs = read_pairs(str(out))  # what `thinktune reward-model` reads
    assert len(pairs) + pairs.skipped_empty + pairs.skipped_identical == 8


def test_pairs_then_reward_model_as_stages_refuse_a_rerun_and_resume_past_finished_work(tmp_path, tiny_model_dir):
    import pytest

    from thinktune.run_dir import RunError

    stages = ["stages=[pairs, reward_model]", "reward_model.eval_pairs=2", "reward_model.steps=2"]
    summary = train(pairs_recipe(tmp_path, tiny_model_dir, *stages))
    run = tmp_path / "pairs"
    assert len((run / "pairs.jsonl").read_text().splitlines()) == 8  # read by the reward model by default
    assert summary["reward_model"]["pairs"]["held_out"] == 2 and (run / "reward_model").is_dir()
    with pytest.raises(RunError, match="already holds a run; pass --resume"):
        train(pairs_recipe(tmp_path, tiny_model_dir, *stages))
    trained = (run / "reward_model_metrics.jsonl").read_text()
    resumed = train(pairs_recipe(tmp_path, tiny_model_dir, *stages), resume=True)
    assert resumed["reward_model"] == summary["reward_model"]  # not trained again
    assert (run / "reward_model_metrics.jsonl").read_text() == trained
    assert len((run / "pairs.jsonl").read_text().splitlines()) == 8
