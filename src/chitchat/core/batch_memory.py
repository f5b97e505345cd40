"""Allocator settings for the data stages, applied on import: import this before polars.

Polars allocates through its own jemalloc and, when loaded, tells it to hand freed pages back to
the kernel within half a second (`_RJEM_MALLOC_CONF`, polars/__init__.py). A data stage allocates
and frees gigabytes in a few seconds, so the pages it hands back it needs again at once, and each
costs a page fault when touched anew: at a million questions about a fifth of prepare's and
dedup's CPU time went to the kernel. With decay off, freed pages stay with the process and are
reused; they all go back when the stage exits, seconds later. Peak RSS grows a little (dedup:
1.5 -> 1.7 GB at a million questions); prepare and dedup get faster (benchmarks/data_stages.py).

Retained pages are reused only by the arena (jemalloc's heap) that freed them, and jemalloc gives
each thread one of 4 per core: with decay off, what a stage holds grows towards the sum of every
arena's peak. Bucketed dedup at 20M questions went 1.9 -> 3.9 GB over its 23 buckets, each the
same size, and 2.7 GB with one arena, which is also faster on 2 cores (5M: 39.5 -> 34.7 s, 2.5 ->
2.0 GB; prepare the same time, 0.2 GB less). So the stages ask for one arena (`narenas:1`).

Polars appends the variable's value to its own defaults and jemalloc takes the last value of each
option, so the decay times go at the end and the arena count before the rest: other options a
user set stay (`narenas:8` of theirs wins on a many-core machine), and so does a value inherited
from a parent process that loaded polars (which holds polars' defaults). Polars reads the
variable once, when it is loaded: set after that, it does nothing.
"""

import os

JEMALLOC_ENV = "_RJEM_MALLOC_CONF"  # polars' jemalloc is built with the _rjem_ prefix
BATCH_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"  # never purge freed pages while the stage runs
ARENAS = "narenas:1"  # freed pages reused by every thread; a value the user set comes after and wins


def batch_conf(current: str | None) -> str:
    """The variable's value for a data stage: the arena count first, then `current`, the decay
    times last."""
    if not current:
        return f"{ARENAS},{BATCH_CONF}"
    return current if current.endswith(BATCH_CONF) else f"{ARENAS},{current},{BATCH_CONF}"


os.environ[JEMALLOC_ENV] = batch_conf(os.environ.get(JEMALLOC_ENV))
