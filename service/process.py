"""How the ``rewardserve serve`` process ends once the drain is over.

A normal interpreter exit joins every worker thread (concurrent.futures registers that at
exit, asyncio's runner joins its default executor): a tokenizer thread still busy with a large
request would keep a drained process alive for as long as that takes (30.8 s with a 5 s grace
period, in a red-team run). The drain has already answered or ended every call, so nothing is
left that those threads could deliver: flush the logs and leave at once.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` without waiting for worker threads (logs flushed first)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
