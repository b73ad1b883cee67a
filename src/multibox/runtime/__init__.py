"""How a detector's network runs, and process-level settings for fast CPU work.

* Runtimes (:mod:`multibox.runtime.base`): a :class:`~multibox.runtime.base.Runtime` turns ``(model, example
  input)`` into a network callable ``x [B, 3, H, W] -> (cls_logits [B, P, C], box_deltas [B, P, 4])``. They are
  registered by name (:func:`register_runtime`, :func:`list_runtimes`, :func:`get_runtime`); the built-in ones are
  ``eager``, ``jit``, ``jit+channels_last``, ``channels_last`` (:mod:`multibox.runtime.pytorch`) and
  ``onnxruntime`` (:mod:`multibox.runtime.ort`). Every module of this package registers its own runtimes when it
  is imported, and the registry imports them all on first use: a new runtime is one new module.
* Memory (:mod:`multibox.runtime.memory`): :func:`keep_freed_memory` (``$MULTIBOX_MALLOC``).

Importing this package imports neither torch nor any runtime: the names load on first use.
"""

from __future__ import annotations

from .._lazy import lazy_exports
from .memory import ALLOCATOR_ENV, keep_freed_memory

__all__ = ["keep_freed_memory", "ALLOCATOR_ENV", "Runtime", "register_runtime", "list_runtimes", "get_runtime",
           "auto_runtimes"]

_EXPORTS = {name: "base" for name in ("Runtime", "register_runtime", "list_runtimes", "get_runtime",
                                      "auto_runtimes")}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
