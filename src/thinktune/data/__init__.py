"""Task sources and prompt formatting."""

from thinktune.data.prompts import FORMATS, PromptBuilder
from thinktune.data.sources import DataError, Example, load_examples

__all__ = ["FORMATS", "DataError", "Example", "PromptBuilder", "load_examples"]
