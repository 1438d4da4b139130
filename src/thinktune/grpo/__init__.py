"""The GRPO engine: group-relative advantages, the policy loss registry and the training loop."""
