"""Prompt formatting: the answer format's instructions, the chat template and the prompt budget."""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

FORMATS = {
    "xml": ("Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"),
    "think": "First think step by step inside <think> </think> tags, then give only the final answer.",
}


@dataclass
class PromptStats:
    truncated: int = 0
    skipped: int = 0


class PromptBuilder:
    """Turn questions into token ids through the chat template, within the prompt budget.

    A prompt over ``max_tokens`` is cut from the left (``truncate``) or dropped (``skip``); either is counted
    in :attr:`stats`, never silent.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        answer_format: str = "xml",
        system_prompt: str | None = None,
        max_tokens: int = 256,
        overlong: str = "skip",
        fewshot: list[tuple[str, str]] = (),
    ):
        self.tokenizer = tokenizer
        self.system_prompt = FORMATS[answer_format] if system_prompt is None else system_prompt
        self.max_tokens = max_tokens
        self.overlong = overlong
        self.fewshot = list(fewshot)
        self.stats = PromptStats()

    @classmethod
    def from_config(cls, tokenizer: PreTrainedTokenizerBase, data) -> PromptBuilder:
        """Build from a recipe's ``data`` section."""
        return cls(
            tokenizer,
            data.answer_format,
            data.system_prompt,
            data.max_prompt_tokens,
            data.overlong_prompts,
            [(shot.question, shot.response) for shot in data.fewshot],
        )

    def messages(self, turns: list[dict]) -> list[dict]:
        """The conversation as the model sees it: system prompt, few-shot exchanges, then ``turns``."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for shot_question, shot_response in self.fewshot:
            messages += [{"role": "user", "content": shot_question}, {"role": "assistant", "content": shot_response}]
        return messages + turns

    def render(self, turns: list[dict]) -> str:
        """:meth:`messages` through the chat template, ending where the assistant's next reply begins."""
        messages = self.messages(turns)
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + "\n\n"

    def text(self, question: str) -> str:
        return self.render([{"role": "user", "content": question}])

    def fitting(self, examples: list) -> list[tuple]:
        """``(example, prompt ids)`` of each example whose prompt fits the budget (or is truncated to it)."""
        return [(e, ids) for e in examples if (ids := self.ids(e.question)) is not None]

    def ids(self, question: str) -> list[int] | None:
        """Token ids of the prompt, or None when it is over budget and the policy is to skip."""
        ids = self.tokenizer(self.text(question), add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_tokens:
            return ids
        if self.overlong == "skip":
            self.stats.skipped += 1
            return None
        self.stats.truncated += 1
        return ids[-self.max_tokens :]
