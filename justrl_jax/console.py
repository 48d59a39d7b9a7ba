"""What a command prints before its own first line: two advisories that are false for us, held back.

* JAX tries every backend it knows, TPU included, and logs ``Unable to initialize backend 'tpu' ...
  libtpu.so`` at INFO (which our commands show) on any machine without a TPU library. That line is
  dropped only when no TPU library is installed; where one is installed and fails, it still shows.
  A backend that was asked for explicitly (``JAX_PLATFORMS``) and fails still raises, as before.
* transformers warns ``PyTorch was not found. Models won't be available`` on import without
  PyTorch: we use its tokenizers and configs only (the models are ours), so that exact line is
  dropped; every other transformers message passes.
"""

from __future__ import annotations

import importlib.util
import logging
import os

_JAX_LOGGER = "jax._src.xla_bridge"
_TPU_ADVISORY = "Unable to initialize backend 'tpu'"
_TORCH_ADVISORY = "PyTorch was not found. Models won't be available"


def tpu_library_installed() -> bool:
    """True when JAX could load a TPU runtime (the libtpu package or an explicit TPU_LIBRARY_PATH)."""
    return importlib.util.find_spec("libtpu") is not None or bool(os.environ.get("TPU_LIBRARY_PATH"))


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def quiet_start() -> None:
    """Installs the two filters; call before JAX picks a backend and before transformers is imported."""
    filters = [(_JAX_LOGGER, _TPU_ADVISORY)] if not tpu_library_installed() else []
    filters.append(("transformers", _TORCH_ADVISORY))
    for name, prefix in filters:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropMessage(prefix))
