"""Task sources and prompt formatting."""

from thinktune.data.prompts import FORMATS, PromptBuilder
from thinktune.data.sources import SOURCES, load_examples
from thinktune.data.types import DataError, Example

__all__ = ["FORMATS", "SOURCES", "DataError", "Example", "PromptBuilder", "load_examples"]
