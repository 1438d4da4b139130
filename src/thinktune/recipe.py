"""Loading a recipe: a YAML file, a dict of sections or the defaults, ``key.sub=value`` overrides, and the checks
that need the registries (losses, data sources, rewards). Every recipe thinktune runs comes through here.

    recipe = load_recipe("recipes/demo.yaml", overrides=["grpo.group_size=4", "train.steps=10"])
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from thinktune.config import ConfigError, Recipe


def validate_recipe(recipe: Recipe) -> list[str]:
    """What is wrong with ``recipe`` against the registries: an unknown loss, a data section its source cannot use,
    a reward that cannot be found or that needs another data source; one line each, naming the key."""
    from thinktune.data.sources import source_errors
    from thinktune.grpo.losses import LOSSES
    from thinktune.rewards.registry import NEEDS_SOURCE, RewardError, resolve_reward

    errors = [] if recipe.grpo.loss in LOSSES else [LOSSES.unknown(recipe.grpo.loss)]
    errors += source_errors(recipe.data)
    for index, reward in enumerate(recipe.rewards):
        try:
            resolve_reward(reward.name)
        except RewardError as err:
            reason = str(err).removeprefix("rewards: ").removeprefix("rewards[].name: ")
            errors.append(f"rewards[{index}].name: {reason}")
        if recipe.eval.worker and reward.name.startswith("python:"):
            errors.append(
                f"rewards[{index}].name: {reward.name} lives in this process alone, and eval.worker's process cannot "
                "load it; give it as pkg.module:function or set eval.worker: false"
            )
        needed = NEEDS_SOURCE.get(reward.name)
        if needed and recipe.data.source != needed:
            errors.append(
                f"rewards[{index}].name: {reward.name} needs data.source={needed}, this recipe's is "
                f"{recipe.data.source}; choose another reward (e.g. accuracy)"
            )
    return errors


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for i, key in enumerate(parents):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {'.'.join(parents[: i + 1])} is not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"grpo.beta=0.04"`` -> ``("grpo.beta", 0.04)``; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    try:
        return key.strip(), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value is not YAML ({problem}); quote it, e.g. key='text'") from None


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        if not e["loc"]:  # a check across sections: its message starts with the key at fault
            lines.append(f"  {msg}")
            continue
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}" + (f" (got {e['input']!r})" if e["type"] != "extra_forbidden" else ""))
    return "\n".join(lines)


def recipe_from_dict(tree: dict, source: str = "recipe") -> Recipe:
    """The recipe ``tree`` describes, checked field by field and then against the registries."""
    try:
        recipe = Recipe.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(f"{source} is invalid:\n{_format_errors(err)}") from None
    errors = validate_recipe(recipe)
    if errors:
        raise ConfigError(f"{source} is invalid:\n" + "\n".join(f"  {error}" for error in errors))
    return recipe


def load_recipe(path: str | Path | dict | None = None, overrides: list[str] = ()) -> Recipe:
    """Read a YAML recipe (a dict of sections, or the defaults when path is None) and apply ``key.sub=value``
    overrides."""
    tree: dict = {}
    source = "defaults"
    if isinstance(path, dict):
        tree, source = copy.deepcopy(path), "the recipe dict"
    elif path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{path}:{where} is not valid YAML: {getattr(err, 'problem', None) or err}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: a recipe is a mapping of sections, got {type(tree).__name__}")
        source = str(path)
    source_before = _data_source(tree)
    parsed = [parse_override(text) for text in overrides]
    for key, value in parsed:
        _set_dotted(tree, key, value)
    if _data_source(tree) != source_before and "data.source" in dict(parsed):
        _drop_fields_of_the_old_source(tree["data"], source_before, {key for key, _ in parsed})
    return recipe_from_dict(tree, source)


def _data_source(tree: dict) -> Any:
    data = tree.get("data")
    return data.get("source", "reasoning_gym") if isinstance(data, dict) else "reasoning_gym"


def _drop_fields_of_the_old_source(data: dict, old: str, overridden: set[str]) -> None:
    """An override switched ``data.source``: the recipe's fields of the old source that the new one does not read
    go (said in one line), unless an override set them too."""
    from thinktune.console import console
    from thinktune.data.sources import SOURCES, SPECIFIC_FIELDS

    if data["source"] not in SOURCES:
        return  # the unknown source is the error to report
    uses = SOURCES[data["source"]].uses
    dropped = [k for k in SPECIFIC_FIELDS if k in data and k not in uses and f"data.{k}" not in overridden]
    for key in dropped:
        del data[key]
    if dropped:
        console.print(
            f"data.source={data['source']} (was {old}): dropped the recipe's "
            + ", ".join(f"data.{key}" for key in dropped)
        )


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
