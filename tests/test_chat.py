"""``thinktune chat``: replies streamed token by token, the conversation carried from turn to turn, /reset and
/exit, driven through a real pseudo-terminal."""

import os
import pty
import select
import subprocess
import sys
import time

from thinktune.conversation import Chat
from thinktune.data import PromptBuilder


def chat_with(tiny, **kwargs) -> Chat:
    model, tokenizer = tiny
    return Chat(model, tokenizer, PromptBuilder(tokenizer, system_prompt=""), max_new_tokens=6, temperature=0, **kwargs)


def test_a_reply_is_streamed_one_piece_per_token_and_joins_to_the_answer(tiny):
    pieces = []
    answer = chat_with(tiny).reply("say one", pieces.append)
    assert len(pieces) >= 3 and "".join(pieces) == answer  # word-level tokenizer: a piece per word


def test_the_conversation_carries_over_and_reset_clears_it(tiny):
    chat = chat_with(tiny)
    first = chat.reply("say one")
    chat.reply("say two")
    assert [t["role"] for t in chat.turns] == ["user", "assistant", "user", "assistant"]
    prompt = chat.prompts.render(chat.turns[:3])  # what the model saw for its second reply
    assert prompt.index("say one") < prompt.index(first) < prompt.index("say two")
    chat.reset()
    assert chat.turns == [] and chat.reply("say one") == first


def test_the_oldest_exchanges_are_dropped_to_fit_the_context(tiny):
    chat = chat_with(tiny)
    chat.context = 60  # tokens: room for about two exchanges of this size
    for _ in range(4):
        chat.reply("say one two three four five six")
    assert chat.dropped >= 1 and len(chat.tokenizer(chat.prompts.render(chat.turns))["input_ids"]) <= 60


def read_until(fd, marker: str, timeout: float = 60.0) -> str:
    seen, deadline = b"", time.monotonic() + timeout
    while marker.encode() not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} in {seen.decode(errors='replace')!r}"
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            seen += os.read(fd, 4096)
    return seen.decode(errors="replace").replace("\r", "")


def test_chat_in_a_terminal(tiny, tiny_model_dir):
    expected = chat_with(tiny)
    first, second = expected.reply("say one"), expected.reply("say two")
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "thinktune.cli", "chat", tiny_model_dir, "--temperature", "0", "--max-new-tokens", "6"],
        stdin=follower, stdout=follower, stderr=follower, close_fds=True,
    )  # fmt: skip
    os.close(follower)
    try:
        assert "/reset starts over, /exit quits" in read_until(leader, "you> ")
        os.write(leader, b"say one\n")
        assert f"model> {first}\n" in read_until(leader, "you> ")
        os.write(leader, b"say two\n")
        assert f"model> {second}\n" in read_until(leader, "you> ")  # with the first exchange in its prompt
        os.write(leader, b"/reset\n")
        assert "(conversation cleared)" in read_until(leader, "you> ")
        os.write(leader, b"say one\n")
        assert f"model> {first}\n" in read_until(leader, "you> ")  # as at the start: the history is gone
        os.write(leader, b"/exit\n")
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        os.close(leader)
