"""The data stages set polars' allocator up for batch work before polars loads."""

import subprocess
import sys
from pathlib import Path

import pytest

from chitchat.core.batch_memory import ARENAS, BATCH_CONF, batch_conf

REPO = Path(__file__).resolve().parents[1]
POLARS_DEFAULT = "dirty_decay_ms:500,muzzy_decay_ms:1000"  # what polars/__init__.py puts there


def test_the_decay_times_go_last_the_arena_count_first_and_other_options_stay():
    assert batch_conf(None) == batch_conf("") == f"{ARENAS},{BATCH_CONF}"
    # inherited from a parent that loaded polars: our decay times come after, so they win
    assert batch_conf(POLARS_DEFAULT) == f"{ARENAS},{POLARS_DEFAULT},{BATCH_CONF}"
    assert batch_conf("narenas:2") == f"{ARENAS},narenas:2,{BATCH_CONF}"  # the user's arena count comes after ours
    assert batch_conf(batch_conf("narenas:2")) == batch_conf("narenas:2")  # once is enough


def _import_order(script: str, env: dict) -> list[str]:
    """Top-level modules in the order `python -X importtime script --help` finished importing them."""
    proc = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "pipeline" / script), "--help"],
                          capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [line.split("|")[-1].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:") and not line.split("|")[-1].startswith("  ")]


@pytest.mark.parametrize("script", ["prepare.py", "dedup.py", "split.py"])
def test_data_stages_configure_the_allocator_before_polars_loads(script):
    import os

    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    order = _import_order(script, env)
    assert "chitchat.core.batch_memory" in order and "polars" in order
    assert order.index("chitchat.core.batch_memory") < order.index("polars")


def test_polars_in_a_stage_gets_the_batch_settings_even_under_a_parent_that_loaded_polars():
    import os

    import polars  # noqa: F401  this test process has loaded polars, as the benchmark harness has

    env = dict(os.environ)
    assert env["_RJEM_MALLOC_CONF"].startswith(POLARS_DEFAULT)
    code = "import chitchat.core.batch_memory, polars, os; print(os.environ['_RJEM_MALLOC_CONF'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().endswith(BATCH_CONF)
