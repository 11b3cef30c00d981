"""textclassify.serve: fusion-serve, the HTTP server over loaded bundles (imports only textclassify.runtime).

`create_app(models, settings, predictor_factory=None)` builds the Starlette app; `ServeSettings` holds its
limits; `DynamicBatcher` is the default batching and `Predictor` the interface another batching implements.
Imported lazily so that `import textclassify.serve.<module>` needs only what that module uses.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Answer": "batcher", "DynamicBatcher": "batcher", "Predictor": "batcher", "QueueFullError": "batcher",
    "RequestTimeoutError": "batcher", "RowAnswer": "batcher", "ServeMetrics": "metrics", "ServeSettings": "settings",
    "create_app": "app",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"textclassify.serve.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'textclassify.serve' has no attribute {name!r}")
