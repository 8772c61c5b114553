"""Renderers of README.md's generated sections, one module per source of numbers.

Each renderer is ``render(root) -> str``: it reads what the project wrote (``root/results/...`` or the zoo's
cards) and returns the markdown that goes between the section's ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``
markers. ``scripts/update_readme.py`` maps section names to renderers and rewrites README.md.
"""


class SectionError(ValueError):
    """A section cannot be rendered (its inputs are missing); the message is one line naming the fix."""
