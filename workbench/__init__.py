"""Core library of the workbench (no UI imports).

Importing it changes nothing process-wide: the Hugging Face offline switches are set only around the
calls that read local files through ``datasets`` (:func:`hf_offline`), and models load with
``local_files_only=True``.
"""
from __future__ import annotations

import contextlib
import os
import sys

__version__ = "0.1.0"

_OFFLINE = {"HF_HUB_OFFLINE": (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")),
            "HF_DATASETS_OFFLINE": (("datasets.config", "HF_DATASETS_OFFLINE"),)}


@contextlib.contextmanager
def hf_offline():
    """Run the calls inside with ``HF_HUB_OFFLINE=1`` and ``HF_DATASETS_OFFLINE=1`` (and the flags
    ``huggingface_hub`` / ``datasets`` read at import), restoring everything after. A variable the
    user set already is left as it is.

    >>> import os
    >>> before = os.environ.get("HF_DATASETS_OFFLINE")
    >>> with hf_offline():
    ...     inside = os.environ["HF_DATASETS_OFFLINE"]
    >>> inside == (before or "1"), os.environ.get("HF_DATASETS_OFFLINE") == before
    (True, True)
    """
    saved_env = {k: os.environ.get(k) for k in _OFFLINE}
    patched = []
    try:
        for var, flags in _OFFLINE.items():
            if saved_env[var] is not None:
                continue
            os.environ[var] = "1"
            for modname, attr in flags:
                mod = sys.modules.get(modname)
                if mod is not None and hasattr(mod, attr):
                    patched.append((mod, attr, getattr(mod, attr)))
                    setattr(mod, attr, True)
        yield
    finally:
        for mod, attr, value in reversed(patched):
            setattr(mod, attr, value)
        for var, value in saved_env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
