"""Process hygiene shared by the service's entry points."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


def trim_memory() -> None:
    """Give back to the OS what start-up (parsing a large site file) used and freed.

    glibc keeps freed heap pages; after loading a 100,000-sensor park that is most of the
    resident size. Harmless where malloc_trim does not exist.
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError):
        pass
