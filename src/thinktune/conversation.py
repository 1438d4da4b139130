"""``thinktune chat``: talk to a model in the terminal, its reply streamed token by token.

The conversation goes through the model's chat template, after the recipe's system prompt and few-shot examples
when a recipe is given, so the model is prompted the way it was trained. ``/reset`` starts over, ``/exit`` (or
Ctrl-D) quits. When the conversation outgrows the model's context, the oldest exchanges are dropped (and the chat
says so).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from thinktune.data import PromptBuilder
from thinktune.rollout.engine import generate
from thinktune.tokens import eos_token_ids

COMMANDS = "/reset starts over, /exit quits"


class Chat:
    """A multi-turn conversation with ``model``; :meth:`reply` streams each answer through ``stream``."""

    def __init__(self, model, tokenizer, prompts: PromptBuilder, max_new_tokens: int = 512,
                 temperature: float = 0.7, seed: int = 0):  # fmt: skip
        self.model, self.tokenizer, self.prompts = model, tokenizer, prompts
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        self.context = getattr(model.config, "max_position_embeddings", 2048)
        self.turns: list[dict] = []
        self.dropped = 0  # exchanges dropped to fit the context

    def reset(self) -> None:
        self.turns, self.dropped = [], 0

    def prompt_ids(self) -> list[int]:
        """The conversation's token ids, oldest exchanges dropped until a full reply fits the context."""
        while True:
            ids = self.tokenizer(self.prompts.render(self.turns), add_special_tokens=False)["input_ids"]
            if len(ids) + self.max_new_tokens <= self.context or len(self.turns) <= 1:
                return ids
            self.turns, self.dropped = self.turns[2:], self.dropped + 1

    def reply(self, text: str, stream: Callable[[str], None] = lambda piece: None) -> str:
        """The model's answer to ``text``, given the conversation so far; ``stream`` gets it piece by piece."""
        self.turns.append({"role": "user", "content": text})
        picked: list[int] = []
        shown = ""
        eos = eos_token_ids(self.tokenizer)

        def show(_rows, tokens):
            nonlocal shown
            picked.append(int(tokens[0]))
            text = self.tokenizer.decode(picked, skip_special_tokens=True)
            if not text.endswith("\ufffd") and text.startswith(shown):  # a whole character more, not half of one
                stream(text[len(shown) :])
                shown = text

        generate(self.model, [self.prompt_ids()], eos_ids=eos, pad_id=self.tokenizer.pad_token_id,
                 max_new_tokens=self.max_new_tokens, greedy=self.temperature == 0, temperature=self.temperature or 1.0,
                 generator=self.generator, on_tokens=show)  # fmt: skip
        answer = self.tokenizer.decode([t for t in picked if t not in eos], skip_special_tokens=True)
        if answer.startswith(shown) and answer != shown:
            stream(answer[len(shown) :])
        self.turns.append({"role": "assistant", "content": answer})
        return answer


def run(chat: Chat, read: Callable[[str], str] = input, write: Callable[..., None] = print) -> None:
    """The terminal loop: read a line, answer it streamed, until ``/exit`` or end of input."""

    def stream(piece: str) -> None:
        write(piece, end="", flush=True)

    write(f"({COMMANDS})")
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("")
            return
        if line == "/exit":
            return
        if line == "/reset":
            chat.reset()
            write("(conversation cleared)")
            continue
        if not line:
            continue
        if line.startswith("/"):
            write(f"(unknown command {line.split()[0]}: {COMMANDS})")
            continue
        write("model> ", end="", flush=True)
        dropped = chat.dropped
        chat.reply(line, stream)
        write("")
        if chat.dropped > dropped:
            write(f"(the oldest {chat.dropped - dropped} exchange(s) were dropped to fit the model's context)")
