"""The body of a request-template worker process (engine/template_pool.py starts them).

It renders with transformers' own ``render_jinja_template`` (the function behind
``apply_chat_template``), so a template renders to the same text here as in-process. Kept light
to import: the forkserver preloads this module once and forks every worker from it.
"""
from __future__ import annotations

import resource
from multiprocessing.connection import Connection
from typing import Any

from transformers.utils import chat_template_utils

_COMPILED_KEEP = 8  # compiled templates a worker keeps (transformers caches them without a useful bound)


def serve(conn: Connection, max_chars: int, memory_bytes: int) -> None:
    """Render jobs from ``conn`` until it closes. Each job is ``(template, messages, options)``;
    each answer ``("ok", text)`` or ``("error", reason)``."""
    _limit_memory(memory_bytes)
    while True:
        try:
            template, messages, options = conn.recv()
        except (EOFError, OSError):
            return
        conn.send(_render(template, messages, options, max_chars))


def _render(template: str, messages: list[dict[str, Any]], options: dict[str, Any], max_chars: int) -> tuple[str, str]:
    try:
        rendered, _ = chat_template_utils.render_jinja_template(
            conversations=[messages], chat_template=template, **options)
        text = rendered[0]
    except MemoryError:
        return "error", "rendering it needs more memory than a request template may use"
    except RecursionError:
        return "error", "rendering it recursed too deeply"
    except Exception as exc:  # noqa: BLE001 - jinja errors, raise_exception() in templates
        return "error", f"chat template failed: {str(exc)[:200]}"
    finally:
        compiled = chat_template_utils._compile_jinja_template
        if compiled.cache_info().currsize > _COMPILED_KEEP:
            compiled.cache_clear()
    if len(text) > max_chars:
        return "error", f"rendered {len(text)} characters, more than the budget of {max_chars}"
    return "ok", text


def _limit_memory(extra_bytes: int) -> None:
    """Cap the address space at what the worker maps now plus ``extra_bytes``: a template that
    builds a huge string fails with MemoryError instead of swapping the machine."""
    if extra_bytes <= 0:
        return
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[0])
    except OSError:  # not Linux: no cap (the time budget still holds)
        return
    limit = pages * resource.getpagesize() + extra_bytes
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):  # a hard limit lower than ours: keep it
        pass
