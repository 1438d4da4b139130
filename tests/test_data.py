"""Data sources and splits: reasoning-gym sets from three seeds with no question in two splits, files with a
column mapping, and bad files named with the row and column at fault."""

import json

import pytest

from thinktune.config import DataConfig
from thinktune.data import DataError, load_examples


def test_reasoning_gym_splits_are_disjoint():
    cfg = DataConfig(task="basic_arithmetic", train_size=300, eval_size=100, task_config={"max_digits": 1})
    train, held_out, scorer = load_examples(cfg)
    assert len(held_out) == 100 and 0 < len(train) <= 300
    assert not {e.question for e in train} & {e.question for e in held_out}
    assert scorer.score_answer(held_out[0].answer, held_out[0].columns()) == 1.0


def test_validation_split_is_its_own_and_evaluation_sets_hold_distinct_questions():
    # One-digit sums repeat often: 2 x 10 x 10 questions at most.
    one_digit = {"max_digits": 1, "min_terms": 2, "max_terms": 2, "operators": ["+", "-"]}
    cfg = DataConfig(task="basic_arithmetic", train_size=300, eval_size=60, validation_size=60, task_config=one_digit)
    train, held_out, _ = load_examples(cfg)
    train_again, validation, _ = load_examples(cfg, "validation")
    assert [e.question for e in train] == [e.question for e in train_again]  # the same training set either way
    held, valid, trained = ({e.question for e in s} for s in (held_out, validation, train))
    assert len(held) == len(held_out) == 60 and len(valid) == len(validation) == 60
    assert not held & valid and not trained & (held | valid)
    without, _, _ = load_examples(cfg.model_copy(update={"validation_size": 0}))
    assert {e.question for e in without} >= trained  # validation only takes questions out of training


def test_files_carve_validation_from_training(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}", "answer": str(i)}) for i in range(10)))
    cfg = DataConfig(source="file", path=str(path), eval_size=2, validation_size=3)
    train, held_out, _ = load_examples(cfg)
    _, validation, _ = load_examples(cfg, "validation")
    assert [e.question for e in train] == [f"q{i}" for i in range(5)]
    assert [e.question for e in validation] == ["q5", "q6", "q7"]
    assert [e.question for e in held_out] == ["q8", "q9"]
    with pytest.raises(DataError, match="cannot give data.validation_size=8"):
        load_examples(cfg.model_copy(update={"validation_size": 8}))


def test_unknown_task_and_bad_task_config():
    with pytest.raises(DataError, match="unknown reasoning-gym task 'basic_arithmetics'"):
        load_examples(DataConfig(task="basic_arithmetics"))
    with pytest.raises(DataError, match="task_config for 'basic_arithmetic' is invalid"):
        load_examples(DataConfig(task="basic_arithmetic", task_config={"no_such_option": 1}))


def test_files_with_column_mapping(tmp_path):
    rows = [{"q": f"What is {i} + 1?", "a": str(i + 1), "source": "t"} for i in range(10)]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    csv = tmp_path / "d.csv"
    csv.write_text("q,a,source\n" + "\n".join(f"{r['q']},{r['a']},t" for r in rows))
    for path in (jsonl, csv):
        cfg = DataConfig(source="file", path=str(path), columns={"question": "q", "answer": "a"}, eval_size=3)
        train, held_out, _ = load_examples(cfg)
        assert len(train) == 7 and len(held_out) == 3
        assert held_out[0].question == "What is 7 + 1?" and held_out[0].answer == "8"
        assert held_out[0].columns()["source"] == "t"  # other columns reach reward functions


def test_parquet(tmp_path):
    import datasets

    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list([{"question": f"{i}+1", "answer": str(i + 1)} for i in range(4)]).to_parquet(str(path))
    train, held_out, _ = load_examples(DataConfig(source="file", path=str(path), eval_size=1))
    assert (len(train), len(held_out)) == (3, 1)


def test_bad_files_name_the_problem(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n{"question": "b", "solution": "2"}\n')
    with pytest.raises(DataError, match="row 1 has no column 'answer'"):
        load_examples(DataConfig(source="file", path=str(path), eval_size=0))
    with pytest.raises(DataError, match="row 0 has no column 'problem' \\(mapped to question\\)"):
        load_examples(
            DataConfig(source="file", path=str(path), eval_size=0, columns={"question": "problem", "answer": "answer"})
        )
    with pytest.raises(DataError, match="data file not found"):
        load_examples(DataConfig(source="file", path=str(tmp_path / "missing.jsonl")))
    empty = tmp_path / "e.csv"
    empty.write_text("question,answer\n")
    with pytest.raises(DataError, match="empty"):
        load_examples(DataConfig(source="file", path=str(empty), eval_size=0))
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        text = tmp_path / "d.txt"
        text.write_text("hello")
        load_examples(DataConfig(source="file", path=str(text)))


def test_json_lines_fail_in_one_line_naming_the_file_line_and_byte(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"question": "a", "answer": "1"}\n{"question": "b\xff", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"d.jsonl: line 2 is not UTF-8 text \(byte 48 of the file\)"):
        load_examples(DataConfig(source="file", path=str(path), eval_size=0))
    path.write_text('{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": 2\n')
    with pytest.raises(DataError, match=r"d.jsonl: line 3 is not JSON \(Expecting ',' delimiter, column 30\)"):
        load_examples(DataConfig(source="file", path=str(path), eval_size=0))
    path.write_text("")
    with pytest.raises(DataError, match=r"d.jsonl: the file is empty"):
        load_examples(DataConfig(source="file", path=str(path), eval_size=0))
    path.write_text('{"question": "a", "answer": "1"}\n{"question": "  ", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"row 1 has an empty 'question'"):
        load_examples(DataConfig(source="file", path=str(path), eval_size=0))


def test_answers_keep_the_type_they_have_in_the_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": a}) + "\n" for i, a in enumerate([9, 9.5, "9"])))
    train, _, _ = load_examples(DataConfig(source="file", path=str(path), eval_size=0))
    assert [e.answer for e in train] == ["9", "9.5", "9"]  # not "9.0": the int stays an int


def test_a_huge_row_is_read_in_bounded_memory(tmp_path):
    import tracemalloc

    path = tmp_path / "d.jsonl"
    with path.open("w") as f:
        f.write(json.dumps({"question": "x" * 50_000_000, "answer": "1"}) + "\n")
        f.writelines(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(100))
    tracemalloc.start()
    train, _, _ = load_examples(DataConfig(source="file", path=str(path), eval_size=0))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(train) == 101 and peak < 300e6  # the 50 MB row about three times over, not gigabytes


def test_held_out_questions_that_also_occur_in_training_are_dropped_and_counted(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    questions = ["a", "b", "c", "d", "e", "a", "f", "b"]  # the last three are held out; "a" and "b" repeat
    path.write_text("".join(json.dumps({"question": q, "answer": "1"}) + "\n" for q in questions))
    train, held_out, _ = load_examples(DataConfig(source="file", path=str(path), eval_size=3))
    assert [e.question for e in held_out] == ["f"] and len(train) == 5
    assert "held-out: 2 of 3 questions also occur in training" in capsys.readouterr().err
