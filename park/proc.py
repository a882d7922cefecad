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


def pause_collector() -> None:
    """Start-up of a process: no cyclic garbage collection while the site file and registry are built.

    Loading a 440,000-sensor park makes millions of objects that all live on; the collector would
    walk them again and again as they accumulate (a sixth of start-up). Pair with :func:`settle`."""
    gc.disable()


def settle() -> None:
    """Once the service runs: what start-up made is kept apart from collection (it lives as long as
    the process), and the collector resumes for what the running service makes."""
    if not gc.isenabled():  # once
        gc.freeze()
        gc.enable()

