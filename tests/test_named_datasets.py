"""Named dataset loaders on fixture files in each dataset's real schema (no hub involved)."""

import json
from pathlib import Path

import pytest

from thinktune.config import DataConfig
from thinktune.data import DataError, load_examples

FIXTURES = Path(__file__).parent / "fixtures"


def load(source, path, **kw):
    return load_examples(DataConfig(source=source, path=str(path), eval_size=kw.pop("eval_size", 1), **kw))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_reference_is_the_number_after_the_marker():
    train, held_out, _ = load("gsm8k", FIXTURES / "gsm8k.jsonl")
    assert [e.answer for e in train + held_out] == ["72", "4800", "3"]  # "#### 4,800" loses its comma
    assert train[0].extra["solution"].endswith("72 clips altogether in April and May.")
    assert "####" not in train[0].extra["solution"]


def test_gsm8k_row_without_the_final_line_names_the_row(tmp_path):
    rows = [json.loads(line) for line in (FIXTURES / "gsm8k.jsonl").read_text().splitlines()]
    rows[1]["answer"] = "It is 4800."
    with pytest.raises(DataError, match=r"row 1 has an 'answer' without the final '#### N' line"):
        load("gsm8k", write_jsonl(tmp_path / "bad.jsonl", rows))


def test_cooking_keeps_the_reasoning_from_metadata_object_or_json_string():
    train, held_out, _ = load("cooking_cot", FIXTURES / "cooking_cot.jsonl")
    assert train[0].answer.startswith("Resting lets the juices")
    assert train[0].extra["reasoning"].startswith("Heat drives moisture")
    assert held_out[0].extra["reasoning"].startswith("Browning is enzymatic")  # metadata given as a JSON string


def test_cooking_without_reasoning_names_the_field_and_row(tmp_path):
    rows = [{"question": "q", "answer": "a", "metadata": {"reasoning": "r"}}, {"question": "q", "answer": "a"}]
    with pytest.raises(DataError, match=r"row 1 has no column 'metadata'"):
        load("cooking_cot", write_jsonl(tmp_path / "c.jsonl", rows))
    rows[1]["metadata"] = {"difficulty": 3}
    with pytest.raises(DataError, match=r"row 1 has no \(or an empty\) 'metadata.reasoning'"):
        load("cooking_cot", write_jsonl(tmp_path / "c.jsonl", rows))


def test_openr1_uses_the_answer_column_and_numina_the_last_box():
    train, held_out, _ = load("openr1_math", FIXTURES / "openr1_math.jsonl")
    assert (train[0].answer, held_out[0].answer) == ("\\frac{5}{6}", "4")
    train, held_out, _ = load("numina_tir", FIXTURES / "numina_tir.jsonl")
    assert (train[0].answer, held_out[0].answer) == ("6", "5\\sqrt{2}")
    assert "```python" in train[0].extra["solution"]


def test_math_row_without_any_answer_names_the_row(tmp_path):
    rows = [{"problem": "p", "solution": "\\boxed{1}"}, {"problem": "p", "solution": "no box here"}]
    with pytest.raises(DataError, match=r"row 1 has no 'answer' column and no \\boxed\{\} answer"):
        load("numina_tir", write_jsonl(tmp_path / "m.jsonl", rows))


def test_smoltldr_from_parquet_and_a_missing_column(tmp_path):
    from datasets import Dataset

    rows = [json.loads(line) for line in (FIXTURES / "smoltldr.jsonl").read_text().splitlines()]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "tldr.parquet"))
    train, held_out, _ = load("smoltldr", tmp_path / "tldr.parquet")
    assert train[0].question.startswith("SUBREDDIT: r/cooking")
    assert held_out[0].answer.startswith("Knees ache")
    with pytest.raises(DataError, match=r"row 0 has no column 'completion'; columns present: \['prompt'\]"):
        load("smoltldr", write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p"}]))


def test_an_explicit_eval_file_is_the_held_out_set(tmp_path):
    rows = FIXTURES.joinpath("gsm8k.jsonl").read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(rows[1:]) + "\n")
    (tmp_path / "test.jsonl").write_text(rows[0] + "\n")
    train, held_out, _ = load("gsm8k", tmp_path / "train.jsonl", eval_path=str(tmp_path / "test.jsonl"), eval_size=2)
    assert len(train) == 2 and [e.answer for e in held_out] == ["72"]


def test_a_held_out_file_that_repeats_the_training_file_is_refused():
    with pytest.raises(DataError, match="every one of the 2 held-out questions also occurs in training"):
        load("gsm8k", FIXTURES / "gsm8k.jsonl", eval_path=str(FIXTURES / "gsm8k.jsonl"), eval_size=2)


def test_named_dataset_offline_without_a_file_says_to_set_the_path(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # this machine has no hub: fail at once
    with pytest.raises(DataError, match=r"cannot load 'openai/gsm8k' split 'train'.*set data.path"):
        load_examples(DataConfig(source="gsm8k"))


def test_story_passages_are_distinct_bounded_and_split_by_part_of_the_story():
    from thinktune.data.passages import MAX_WORDS, story_paragraphs

    train, held_out, scorer = load_examples(DataConfig(source="passages", train_size=150, eval_size=40))
    assert (len(train), len(held_out), scorer) == (150, 40, None)
    assert len({e.question for e in train}) == 150 and all(e.answer == "" for e in train)
    assert all(0 < len(e.question.split()) <= MAX_WORDS for e in train + held_out)
    assert "Gutenberg" not in " ".join(e.question for e in train + held_out)
    paragraphs = story_paragraphs()
    position = {p: i for i, p in enumerate(paragraphs)}
    last_train = max(position[p] for e in train for p in e.question.split("\n\n"))
    first_held_out = min(position[p] for e in held_out for p in e.question.split("\n\n"))
    assert last_train < first_held_out  # no paragraph is in both sets
    again, _, _ = load_examples(DataConfig(source="passages", train_size=150, eval_size=40))
    assert [e.question for e in again] == [e.question for e in train]  # the seed fixes the sample


def test_asking_for_more_passages_than_the_story_has_is_a_clear_error():
    with pytest.raises(DataError, match=r"passages has \d+ distinct held-out passages, fewer than the 500 asked"):
        load_examples(DataConfig(source="passages", train_size=10, eval_size=500))
