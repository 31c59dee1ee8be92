"""One CPU memory arena for every session, where each would otherwise keep its own.

ONNX Runtime gives each session an arena for the tensors a run makes (activations, outputs)
and never shrinks it: a session keeps what its largest batch needed. A 10.56 MB model of the
benchmark fleet (a 125,000-wide hidden layer) kept 7.9 MB after one run of 8 rows, so 60
resident models held 473 MB beyond their files, none of it in the ledger (sizes are measured
at load, before any run). One shared arena holds only what the runs in flight at once need:
the same 60 held 8 MB (``benchmarks/bench_arena.py``). Sessions opt in with
``session.use_env_allocators``. The arena keeps its largest size too: a single huge batch
leaves its memory there (charged as process overhead), where before it left it in one
session until that was evicted.
"""

from __future__ import annotations

import threading

import onnxruntime as ort

_EXTEND_AS_REQUESTED = 1  # grow by what a run asks, not to the next power of two
_lock = threading.Lock()
_registered = False


def use_shared_arena(options: ort.SessionOptions) -> None:
    """Make a session made with ``options`` allocate from the process's one CPU arena
    (registered with ONNX Runtime's environment on first use)."""
    global _registered
    with _lock:
        if not _registered:
            memory = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            # No cap (0), the default first chunk and dead bytes per chunk (-1).
            ort.create_and_register_allocator(
                memory, ort.OrtArenaCfg(0, _EXTEND_AS_REQUESTED, -1, -1)
            )
            _registered = True
    options.add_session_config_entry("session.use_env_allocators", "1")
