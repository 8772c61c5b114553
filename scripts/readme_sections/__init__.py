"""Renderers of the generated sections of README.md and docs/*.md, one module per source of numbers.

Each renderer is ``render(root) -> str``: it reads what the project wrote (``root/results/...`` or the zoo's
cards) and returns the markdown that goes between the section's ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``
markers. ``scripts/update_readme.py`` maps each section name to its page and renderer and rewrites the page.
"""


class SectionError(ValueError):
    """A section cannot be rendered (its inputs are missing); the message is one line naming the fix."""
