"""prepare on a dump in several files (`data/raw/part-*.jsonl.bz2`): one file decompressed at a
time against READ_PARTS at once, per compression.

The synthetic dump (synthetic_dump.py, shape qa) is cut into `--files` files of equal line
counts and written once per compression to `--cache-dir`. Then pipeline/prepare.py runs on the
glob, each run in its own process (peak RSS its own), with chitchat.data.lines.READ_PARTS set to 1
and to the machine's default (up to 4, one per core); outputs are compared, they must be equal.

    python benchmarks/read_parts.py                                  # 250,000 questions, 8 files
    python benchmarks/read_parts.py --questions 1000000 --compressions bz2,gz
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import sys
import tempfile
import zipfile
from pathlib import Path

import polars as pl
import typer
import zstandard

from data_stages import _measured, ours_commands
from synthetic_dump import generate_dump

REPO = Path(__file__).resolve().parents[1]
COMPRESS = {  # what people's dumps use, at the levels their tools default to
    "gz": lambda data: gzip.compress(data, 6),
    "bz2": lambda data: bz2.compress(data, 9),
    "xz": lambda data: lzma.compress(data, preset=6),
    "zst": lambda data: zstandard.ZstdCompressor(level=3).compress(data),
}
# prepare with READ_PARTS set: batch_memory first (it sets polars' allocator up before polars loads)
RUN_PREPARE = ("import sys, runpy; import chitchat.core.batch_memory; import chitchat.data.lines as lines; "
               "lines.READ_PARTS = int(sys.argv.pop(1)); sys.argv[0] = sys.argv[1]; del sys.argv[1]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
app = typer.Typer(add_completion=False)


def split_dump(dump: Path, folder: Path, files: int, compression: str) -> str:
    """The dump's JSON lines as `files` files `part-NN.jsonl.<compression>`; the glob of them."""
    pattern = str(folder / f"part-*.jsonl.{compression}")
    if folder.is_dir() and len(list(folder.glob(f"part-*.jsonl.{compression}"))) == files:
        return pattern
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dump) as archive:
        lines = archive.read(archive.namelist()[0]).split(b"\n")
    per = -(-len(lines) // files)
    for part in range(files):
        target = folder / f"part-{part:02d}.jsonl.{compression}"
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(COMPRESS[compression](b"\n".join(lines[part * per:(part + 1) * per]) + b"\n"))
        tmp.rename(target)
        print(f"wrote {target}", file=sys.stderr)
    return pattern


def run_prepare(pattern: str, work: Path, read_parts: int) -> tuple[dict, pl.DataFrame]:
    """prepare on the glob with READ_PARTS = read_parts: (measured row, the pairs it wrote)."""
    command = ours_commands(Path(pattern), work)[0]
    row = _measured([command[0], "-c", RUN_PREPARE, str(read_parts), *command[1:]])
    return row, pl.read_parquet(work / "prepared.parquet")


@app.command()
def main(
    questions: int = typer.Option(250_000, help="questions in the synthetic dump (about 4 pairs each)"),
    files: int = typer.Option(8, help="files the dump is cut into"),
    compressions: str = typer.Option("gz,bz2,xz,zst", help="comma-separated: gz, bz2, xz, zst"),
    seed: int = typer.Option(0, help="seed of the synthetic dump"),
    cache_dir: Path = typer.Option(Path.home() / ".cache" / "chitchat" / "bench", help="where dumps are kept"),
) -> None:
    """Print prepare's wall time and peak RSS reading one file at a time and READ_PARTS at once."""
    from chitchat.data.lines import READ_PARTS

    wanted = [c.strip() for c in compressions.split(",") if c.strip()]
    if unknown := [c for c in wanted if c not in COMPRESS]:
        sys.exit(f"--compressions: unknown {', '.join(unknown)} (choose from {', '.join(COMPRESS)})")
    dump, _ = generate_dump(cache_dir, questions, seed)
    rows = []
    for compression in wanted:
        folder = cache_dir / f"{dump.parent.name}_parts{files}" / compression
        pattern = split_dump(dump, folder, files, compression)
        size = sum(p.stat().st_size for p in folder.glob(f"part-*.jsonl.{compression}")) / 2**20
        with tempfile.TemporaryDirectory(prefix="bench-parts-") as tmp:
            one, pairs_one = run_prepare(pattern, Path(tmp), 1)
            many, pairs_many = run_prepare(pattern, Path(tmp), READ_PARTS)
            metrics = json.loads((Path(tmp) / "prepare.json").read_text())
        if not pairs_one.equals(pairs_many):
            sys.exit(f"{compression}: prepare wrote different pairs reading 1 and {READ_PARTS} files at once")
        rows.append((compression, size, metrics["pairs_in"], one, many))
    print(f"\nprepare on {questions:,} questions cut into {files} files; 1 file at a time against "
          f"READ_PARTS = {READ_PARTS} at once (this machine's default); outputs equal\n")
    print(f"| compression | MB on disk | pairs read | 1 file: wall s | {READ_PARTS} files: wall s | "
          f"speed-up | 1 file: peak RSS MB | {READ_PARTS} files: peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for compression, size, pairs, one, many in rows:
        print(f"| {compression} | {size:,.0f} | {pairs:,} | {one['wall']:.1f} | {many['wall']:.1f} | "
              f"{one['wall'] / many['wall']:.2f}x | {one['rss_mb']:,.0f} | {many['rss_mb']:,.0f} |")


if __name__ == "__main__":
    app()
