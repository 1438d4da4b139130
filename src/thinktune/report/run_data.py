"""What a report reads from a run directory, read once and tolerant of files a run did not write."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from thinktune.jsonl import read_jsonl


class ReportError(ValueError):
    """A folder that is not a thinktune run directory."""


@dataclass
class RunRecord:
    path: Path
    steps: list[dict]  # metrics.jsonl: one record per GRPO step
    curve: list[dict]  # eval_curve.jsonl: held-out (or validation) metrics by step
    before: dict | None  # eval_before.json: metrics and per-problem samples
    after: dict | None
    summary: dict | None
    environment: dict | None
    best: dict | None  # best.json: the step whose model is in best/
    recipe_text: str

    @property
    def name(self) -> str:
        return self.path.name if self.path.name not in ("", ".") else str(self.path)

    @classmethod
    def read(cls, path: str | Path) -> RunRecord:
        path = Path(path)
        if not (path / "recipe.yaml").is_file():
            raise ReportError(f"{path}: not a thinktune run directory (no recipe.yaml)")

        def json_file(name: str) -> dict | None:
            file = path / name
            return json.loads(file.read_text()) if file.is_file() else None

        before = json_file("eval_before.json")
        curve = read_jsonl(path / "eval_curve.jsonl")
        if before and curve and curve[0]["step"] != 0:  # runs of a sweep that shared one "before" evaluation
            curve.insert(0, {"step": 0, "label": "before", **before["metrics"]})
        return cls(
            path=path,
            steps=read_jsonl(path / "metrics.jsonl"),
            curve=curve,
            before=before,
            after=json_file("eval_after.json"),
            summary=json_file("summary.json"),
            environment=json_file("environment.json"),
            best=json_file("best.json"),
            recipe_text=(path / "recipe.yaml").read_text(),
        )

    @property
    def model(self) -> str:
        return str((yaml.safe_load(self.recipe_text) or {}).get("model", {}).get("name", ""))

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one training metric, leaving out steps that did not log it or logged null."""
        points = [(r["step"], r[key]) for r in self.steps if isinstance(r.get(key), int | float)]
        return [s for s, _ in points], [v for _, v in points]

    def alarms(self) -> list[str]:
        """The regression alarms raised at evaluations during training, as sentences."""
        return [
            f"Held-out accuracy fell between step {r['regression_since']} and step {r['step']} "
            f"({r['regression_fixed']} fixed, {r['regression_broken']} broken, sign test p = {r['regression_p']:.2g}) "
            f"while the training reward rose from {r['regression_reward_before']:.3f} to "
            f"{r['regression_reward_after']:.3f}: reward hacking or collapse."
            for r in self.curve
            if r.get("regression_alarm")
        ]

    def reward_functions(self) -> list[str]:
        """Names of the reward functions logged per step (``reward/<name>``)."""
        keys = self.steps[0] if self.steps else {}
        return [k.removeprefix("reward/") for k in keys if k.startswith("reward/") and not k.endswith("_std")]
