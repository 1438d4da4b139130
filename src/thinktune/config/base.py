"""What every recipe section shares: strict validation, the error type, path expansion and field tags.

A tag on a field states a fact other modules act on, so the fact lives beside the field:

- ``RESUME_SAFE``: a resumed run may change it (what is evaluated, where things go; not what is trained);
- ``EVALUATED``: an evaluation of the starting model depends on it (``evaluation_key``: equal in these, an
  evaluation on disk is reused, by a resume and across a sweep's variants).

A section's ``section_tags`` tag every field it has.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

RESUME_SAFE = "resume_safe"
EVALUATED = "evaluated"

STAGE_ORDER = ["sft", "pairs", "reward_model", "grpo"]
MAX_RUN_NAME = 200


class ConfigError(ValueError):
    """A recipe that cannot run, with a message naming the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
    section_tags: ClassVar[tuple[str, ...]] = ()  # tags of every field of the section


def tagged(*tags: str) -> dict[str, Any]:
    """A field's tags, as ``Field(..., json_schema_extra=tagged(RESUME_SAFE))`` takes them."""
    return {"tags": list(tags)}


def tags_of(section: type[BaseModel], name: str) -> set[str]:
    """The tags of field ``name`` of ``section``: its own and its section's."""
    extra = section.model_fields[name].json_schema_extra
    own = extra.get("tags", []) if isinstance(extra, dict) else []
    return {*own, *getattr(section, "section_tags", ())}


def expand_path(text: str) -> str:
    """``~`` and environment variables expanded, as a shell would have done had the path not been quoted.

    >>> os.environ["THINKTUNE_DOCTEST"] = "/data"
    >>> expand_path("$THINKTUNE_DOCTEST/runs"), expand_path("~/x") == os.path.expanduser("~") + "/x"
    ('/data/runs', True)
    """
    return os.path.expandvars(os.path.expanduser(text))


def _expanded(path: str | None) -> str | None:
    """A path field as a shell would have read it: ``~`` and ``$VARS`` expanded (never a folder named ``~``)."""
    return None if path is None else expand_path(path)
