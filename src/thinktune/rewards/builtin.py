"""Importing this registers every built-in reward (each module registers its own)."""

from thinktune.rewards import answers, formatting, gym, length, reward_model  # noqa: F401
