"""Prompts: the chat template, system prompt and few-shot turns, and the prompt budget (skip or truncate)."""

from thinktune.data import PromptBuilder


def test_prompt_budget_skip_and_truncate(tiny):
    _, tokenizer = tiny
    long_question = " ".join(["one"] * 100)
    skip = PromptBuilder(tokenizer, max_tokens=40, overlong="skip", system_prompt="")
    assert skip.ids(long_question) is None and skip.stats.skipped == 1
    cut = PromptBuilder(tokenizer, max_tokens=40, overlong="truncate", system_prompt="")
    ids = cut.ids(long_question)
    assert len(ids) == 40 and cut.stats.truncated == 1
    assert tokenizer.decode(ids).endswith("assistant")  # the left is cut, the generation prompt stays


def test_fewshot_and_system_prompt_go_through_chat_template(tiny):
    _, tokenizer = tiny
    builder = PromptBuilder(tokenizer, system_prompt="think", fewshot=[("one plus one", "two")])
    text = builder.text("two plus two")
    assert text.index("system think") < text.index("user one plus one") < text.index("assistant two")
    assert text.endswith("<|im_start|>assistant ")
