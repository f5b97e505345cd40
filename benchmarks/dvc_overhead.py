"""What DVC adds to prepare + dedup + split on a large dump, per cache link type.

Builds a throwaway DVC project in a temp folder (this repo's pipeline/, src/, the first three
stages of dvc.yaml, params.yaml reading a synthetic dump from data/raw), then measures, each from
outputs removed:

- scripts: the three stage scripts run one after another, as DVC runs them;
- `dvc repro split` with cache.type copy (DVC's default where the file system has no reflinks:
  each output is hashed, then copied into the cache) and with the types DVC documents for large
  data, hardlink and symlink (hashed, then moved into the cache and linked back).

    python benchmarks/dvc_overhead.py                     # 1,000,000 questions
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer
import yaml

from synthetic_dump import generate_dump

REPO = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "dedup", "split")
DVC = [sys.executable, "-m", "dvc"]
OUTS = ("data/prepared", "data/dedup", "data/split", "metrics", ".dvc/cache", "dvc.lock")
app = typer.Typer(add_completion=False)


def _run(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    return time.perf_counter() - start


def _project(root: Path, dump: Path) -> None:
    for folder in ("pipeline", "src"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "data" / "raw").mkdir(parents=True)
    (root / "data" / "raw" / "qa_data.jsonl.zip").hardlink_to(dump)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["prepare"]["inputs"] = [{"path": "data/raw/qa_data.jsonl.zip"}]
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {s: stages[s] for s in STAGES}}), encoding="utf-8")
    for cmd in (["git", "init", "-q"], DVC + ["init", "-q"], DVC + ["config", "core.analytics", "false"]):
        _run(cmd, root)


def _clean(root: Path) -> None:
    for name in OUTS:
        path = root / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


@app.command()
def main(
    questions: int = typer.Option(1_000_000, help="questions in the synthetic dump"),
    runs: int = typer.Option(2, help="runs of each variant; the table shows the fastest"),
    cache_dir: Path = typer.Option(Path.home() / ".cache" / "chitchat" / "bench", help="where dumps are kept"),
) -> None:
    """Print the three scripts' wall time beside `dvc repro split` per cache link type."""
    dump, _ = generate_dump(cache_dir, questions, 0)
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dvc-", dir=cache_dir) as tmp:
        root = Path(tmp)
        _project(root, dump)
        for _ in range(runs):
            _clean(root)
            times.setdefault("scripts", []).append(sum(_run([sys.executable, f"pipeline/{s}.py"], root) for s in STAGES))
            for link in ("copy", "hardlink", "symlink"):
                _clean(root)
                _run(DVC + ["config", "cache.type", link], root)
                times.setdefault(f"dvc repro split, cache.type {link}", []).append(_run(DVC + ["repro", "-q", "split"], root))
    base = min(times["scripts"])
    print(f"\n{questions:,} questions; fastest of {runs} runs\n")
    print("| variant | wall s | / scripts |")
    print("|---|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {min(values):.1f} | {min(values) / base:.2f}x |")


if __name__ == "__main__":
    app()
