"""A scope in which Hugging Face libraries never reach the network: offline environment variables and flags.

``huggingface_hub`` and ``datasets`` read ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` once, at import, into module
constants; setting the environment alone is too late once they are imported. Inside :func:`offline` both the
variables and those constants say "offline"; on exit every one is restored to what it was.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

# the offline switches, and tqdm's: lm-eval's per-request bars would otherwise interleave with romer's progress
ENV_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "TQDM_DISABLE")
# (module, attribute) pairs holding the import-time copy of the offline switch; patched only if already imported
# (a module imported inside the scope reads the environment variables, which are set).
_FLAGS = (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
          ("datasets.config", "HF_DATASETS_OFFLINE"))


@contextlib.contextmanager
def offline():
    """Run the body with every Hugging Face offline switch on; restore environment and flags afterwards."""
    saved_env = {name: os.environ.get(name) for name in ENV_VARS}
    saved_flags = []
    try:
        for name in ENV_VARS:
            os.environ[name] = "1"
        for module_name, attribute in _FLAGS:
            module = sys.modules.get(module_name)
            if module is not None and hasattr(module, attribute):
                saved_flags.append((module, attribute, getattr(module, attribute)))
                setattr(module, attribute, True)
        yield
    finally:
        for module, attribute, value in reversed(saved_flags):
            setattr(module, attribute, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def require(module: str, purpose: str):
    """Import an optional dependency or raise a one-line UserError naming the extra that installs it."""
    from romer.errors import UserError

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{purpose} needs the {module!r} package: pip install 'romer[eval]'") from None
