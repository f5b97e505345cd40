"""prepare + dedup + split at the scale of the full dump: ours against the naive way and the floor.

A seeded synthetic Ответы@Mail.ru dump (benchmarks/synthetic_dump.py: `--questions` records in
one of its `--shape`s, qa by default: about 4 answers each, Cyrillic text with Zipf-distributed
words, 16 categories, exact and near duplicates, HTML entities, links, empty and very long answers,
malformed lines) is written once to `--cache-dir` as `qa_data.jsonl.zip`; `--dump PATH` measures a
file of your own instead (ours only: the others need the synthetic dump's clean copy). Then, each
in its own subprocess so that peak RSS is its own (ru_maxrss of RUSAGE_CHILDREN):

- ours:  pipeline/prepare.py, dedup.py and split.py, run as DVC runs them (three processes);
- naive: what the course projects wrote: json.loads per line, normalize_text per string, a pandas
         DataFrame, the same filters, dedup rules and grouped split in pandas, parquet out;
- floor: polars reading the zip member (inflated by ISA-L, as prepare does) and parsing the NDJSON,
         nothing more (on a copy of the dump without the malformed lines, which polars' reader
         cannot skip);
- pass-through: the least any three-stage pipeline costs: three processes that only carry the
         table along, as DVC's stages must, with no rule at all: the floor plus one pair per
         answer written to parquet; that table read and written again; read again and written
         as three parts. Same compression as ours (chitchat.core.io.PARQUET).

    python benchmarks/data_stages.py --questions 50000      # quick
    python benchmarks/data_stages.py                        # 1,000,000 questions, ~4M pairs
    python benchmarks/data_stages.py --shape many --skip-naive
    python benchmarks/data_stages.py --dump data/raw/qa_data.jsonl.zip
    python benchmarks/data_stages.py --shape dups --dvc     # ours also through `dvc repro split`

With `--dvc`, ours also runs as a user runs it: `dvc repro split` in a throwaway DVC project
(benchmarks/dvc_overhead.py builds it, with this repository's cache link types), so DVC's hashing
and caching of the dump and the three tables is counted; the naive ratio is then taken against it.
"""

from __future__ import annotations

import io
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl
import typer
import yaml

from synthetic_dump import SHAPES, generate_dump

if TYPE_CHECKING:
    import pandas as pd

REPO = Path(__file__).resolve().parents[1]
app = typer.Typer(add_completion=False)
# ---------------------------------------------------------------- the three variants ----------------

def naive(dump: Path, params_path: Path, out_dir: Path) -> dict:
    """The course projects' way: json.loads and normalize_text per line, pandas for the rest."""
    for module in ("pandas", "sklearn.model_selection", "chitchat.data.filters", "chitchat.data.normalize"):
        __import__(module)  # before the clock starts: the steps' own imports of them then cost nothing
    params = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    p, d, s = params["prepare"], params["dedup"], params["split"]
    start, phases = time.perf_counter(), {}
    df = _naive_read(dump, p["missing_category"])
    pairs_in = len(df)
    df = _naive_filter(df, p)
    prepared = len(df)
    phases["prepare"] = time.perf_counter() - start
    df = _naive_dedup(df, d["max_per_question"])
    deduped = len(df)
    phases["dedup"] = time.perf_counter() - start - phases["prepare"]
    sizes = _naive_split(df, s, out_dir)
    phases["split"] = time.perf_counter() - start - phases["prepare"] - phases["dedup"]
    return {"pairs_in": pairs_in, "prepared": prepared, "deduped": deduped, "split": sizes, "phases": phases}


def _naive_read(dump: Path, missing_category: str) -> pd.DataFrame:
    """(question, category, answer) per string answer of each record: json.loads, normalize_text."""
    import pandas as pd

    from chitchat.data.normalize import normalize_text

    rows = []
    with zipfile.ZipFile(dump) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".jsonl"))
        for line in io.TextIOWrapper(archive.open(member), encoding="utf-8", errors="replace"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("question"), str):
                continue
            responses = obj.get("responses")
            if not isinstance(responses, list):
                continue
            question = normalize_text(obj["question"])
            category = normalize_text(obj.get("category") or "") or missing_category
            for answer in responses:
                if isinstance(answer, str):
                    rows.append((question, category, normalize_text(answer)))
    return pd.DataFrame(rows, columns=["question", "category", "answer"])


def _naive_filter(df: pd.DataFrame, p: dict) -> pd.DataFrame:
    """The rows within prepare's length limits whose answer is not a bare link."""
    from chitchat.data.filters import LINK_ONLY

    q_words, a_words = df["question"].str.split().str.len(), df["answer"].str.split().str.len()
    q_chars, a_chars = df["question"].str.len(), df["answer"].str.len()
    keep = ((q_chars >= max(1, p["min_question_chars"])) & (a_chars >= max(1, p["min_answer_chars"]))
            & (q_chars <= p["max_question_chars"]) & (a_chars <= p["max_answer_chars"])
            & (q_words >= p["min_question_words"]) & (q_words <= p["max_question_words"])
            & (a_words >= p["min_answer_words"]) & (a_words <= p["max_answer_words"])
            & ~df["answer"].str.contains(LINK_ONLY, regex=True))
    return df[keep]


def _naive_dedup(df: pd.DataFrame, max_per_question: int) -> pd.DataFrame:
    """Without exact duplicates, answers equal to their question (by `qkey`, `akey`), answers over the cap."""
    def key(col: pd.Series) -> pd.Series:
        return (col.str.lower().str.replace("ё", "е").str.replace(r"[^\w\s]", " ", regex=True)
                .str.replace("_", " ").str.replace(r"\s+", " ", regex=True).str.strip())

    df = df.drop_duplicates(["question", "answer"])
    df = df.assign(qkey=key(df["question"]), akey=key(df["answer"]))
    df = df[df["qkey"] != df["akey"]]
    return df[df.groupby("qkey", sort=False).cumcount() < max_per_question]


def _naive_split(df: pd.DataFrame, s: dict, out_dir: Path) -> dict:
    """Train, valid and test parquet in `out_dir`, grouped by `qkey`, stratified by category; their sizes."""
    from sklearn.model_selection import train_test_split

    groups = df.groupby("qkey", sort=False)["category"].first()
    counts = groups.map(groups.value_counts())
    strata = groups.where(counts >= 2, "__rare__")
    n_held = round(len(groups) * (s["valid_fraction"] + s["test_fraction"]))
    train_k, held_k = train_test_split(groups.index.to_numpy(), test_size=n_held, stratify=strata.to_numpy(),
                                       random_state=s["seed"])
    held = strata.loc[held_k]
    held = held.where(held.map(held.value_counts()) >= 2, "__rare__")
    valid_k, test_k = train_test_split(held.index.to_numpy(), test_size=round(len(groups) * s["test_fraction"]),
                                       stratify=held.to_numpy(), random_state=s["seed"])
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for name, keys in (("train", train_k), ("valid", valid_k), ("test", test_k)):
        part = df[df["qkey"].isin(set(keys))].drop(columns=["qkey", "akey"])
        part.to_parquet(out_dir / f"{name}.parquet")
        sizes[name] = len(part)
    return sizes


def _read_dump(clean: Path) -> tuple[pl.DataFrame, int]:
    """The records of the clean dump and its size in bytes: the zip member inflated by ISA-L, as
    prepare's reader does (zipfile's zlib takes twice as long), and the NDJSON parsed by polars."""
    from chitchat.data.archives import open_zip_member

    with zipfile.ZipFile(clean) as archive, \
            open_zip_member(archive, clean, next(n for n in archive.namelist() if n.endswith(".jsonl"))) as member:
        data = member.read()
    schema = {"question": pl.String, "category": pl.String, "responses": pl.List(pl.String)}
    return pl.read_ndjson(data, schema=schema), len(data)


def floor(clean: Path) -> dict:
    """Polars reading the zip member and parsing the NDJSON: the least any prepare has to do."""
    frame, size = _read_dump(clean)
    return {"records": frame.height, "bytes": size}


def pass_through(step: str, source: Path, target: Path) -> None:
    """One stage of the pass-through pipeline (see the module's doc): `read` the dump into pairs,
    `copy` a table, or `part` it in three by a hash of the question (80/10/10)."""
    from chitchat.core.io import PARQUET

    if step == "read":
        pairs = _read_dump(source)[0].explode("responses").rename({"responses": "answer"})
        pairs.write_parquet(target, **PARQUET)
    elif step == "copy":
        pl.read_parquet(source).write_parquet(target, **PARQUET)
    else:
        table = pl.read_parquet(source)
        part = table.select(pl.col("question").hash(13) % 10).to_series()
        target.mkdir(parents=True, exist_ok=True)
        for name, picked in (("train", part < 8), ("valid", part == 8), ("test", part == 9)):
            table.filter(picked).write_parquet(target / f"{name}.parquet", **PARQUET)


def ours_commands(dump: Path, work: Path) -> list[list[str]]:
    """The three stage scripts, with a params file pointing prepare at the dump."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["prepare"]["inputs"] = [{"path": str(dump)}]
    (work / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    py, stage, par = sys.executable, REPO / "pipeline", ["--params", str(work / "params.yaml")]
    return [
        [py, str(stage / "prepare.py"), *par, "--out", str(work / "prepared.parquet"), "--metrics", str(work / "prepare.json")],
        [py, str(stage / "dedup.py"), *par, "--pairs", str(work / "prepared.parquet"), "--out", str(work / "dedup.parquet"),
         "--metrics", str(work / "dedup.json")],
        [py, str(stage / "split.py"), *par, "--pairs", str(work / "dedup.parquet"), "--out-dir", str(work / "split"),
         "--metrics", str(work / "split.json")],
    ]


# ---------------------------------------------------------------- measuring --------------------------

def measure(command: str) -> None:
    """Run one command (JSON list); print its wall and CPU seconds and peak RSS (the only child here)."""
    start = time.perf_counter()
    proc = subprocess.run(json.loads(command), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{command} failed:\n{proc.stderr[-2000:]}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # ru_maxrss: the largest child, KiB on Linux
    print(json.dumps({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024,
                      "stdout": proc.stdout}))


INTERNAL = {  # what this file runs as a child process: python data_stages.py <name> <args>
    "measure": measure,
    "naive": lambda dump, params, out: print(json.dumps(naive(Path(dump), Path(params), Path(out)))),
    "floor": lambda clean: print(json.dumps(floor(Path(clean)))),
    "pass": lambda step, source, target: pass_through(step, Path(source), Path(target)),
}


def _measured(command: list[str]) -> dict:
    """Measure in a fresh wrapper process, so that RUSAGE_CHILDREN holds only this command."""
    proc = subprocess.run([sys.executable, __file__, "measure", json.dumps(command)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    return json.loads(proc.stdout)


STAGES = ("prepare", "dedup", "split")


def _through_dvc(dump: Path, work: Path) -> dict:
    """`dvc repro split` in a fresh DVC project reading `dump`: wall, CPU and the largest stage's
    peak RSS (a child's rusage reaches its parent when waited for)."""
    from dvc_overhead import DVC, _project

    project = work / "dvc-project"
    project.mkdir()
    _project(project, dump)
    shutil.copyfile(REPO / ".dvc" / "config", project / ".dvc" / "config")  # the cache link types users get
    return _measured(DVC + ["--cd", str(project), "repro", "-q", "split"])


def run_ours(dump: Path, work: Path) -> tuple[list[dict], dict]:
    """Our three stages on `dump`, each measured in its own process; (rows, metrics by stage)."""
    stages = [_measured(command) for command in ours_commands(dump, work)]
    return stages, {s: json.loads((work / f"{s}.json").read_text()) for s in STAGES}


def _ours_only(dump: Path) -> None:
    """--dump: our stages on a user's file, with pairs per second."""
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        stages, metrics = run_ours(dump, Path(tmp))
    pairs = metrics["prepare"]["pairs_in"]
    print(f"\n{dump}: {dump.stat().st_size / 2**20:,.0f} MB, {pairs:,} pairs read, "
          f"{metrics['dedup']['pairs_out']:,} after dedup, split {metrics['split']['pairs']}\n")
    print("| stage | wall s | CPU s | peak RSS MB | pairs/s |")
    print("|---|---:|---:|---:|---:|")
    for name, r in zip(STAGES, stages):
        print(f"| {name} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['rss_mb']:,.0f} | {pairs / r['wall']:,.0f} |")
    wall = sum(r["wall"] for r in stages)
    print(f"| **all three** | {wall:.1f} | {sum(r['cpu'] for r in stages):.1f} | "
          f"{max(r['rss_mb'] for r in stages):,.0f} | {pairs / wall:,.0f} |")


@app.command()
def main(
    questions: int = typer.Option(1_000_000, help="questions in the synthetic dump (about 4 pairs each)"),
    shape: str = typer.Option("qa", help=f"shape of the synthetic dump: {', '.join(SHAPES)} (synthetic_dump.py)"),
    dump: Path = typer.Option(None, help="measure our stages on this file instead (any format prepare reads)"),
    seed: int = typer.Option(0, help="seed of the synthetic dump"),
    cache_dir: Path = typer.Option(Path.home() / ".cache" / "chitchat" / "bench", help="where dumps are kept"),
    skip_naive: bool = typer.Option(False, help="leave out the slow naive variant"),
    through_dvc: bool = typer.Option(False, "--dvc", help="also run ours as `dvc repro split` in a throwaway project"),
) -> None:
    """Print wall time and peak RSS of prepare + dedup + split: ours, the naive way and the floor."""
    if dump is not None:
        if not dump.is_file():
            sys.exit(f"{dump}: no such file")
        return _ours_only(dump)
    if shape not in SHAPES:
        sys.exit(f"--shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    dump, clean = generate_dump(cache_dir, questions, seed, shape)
    with zipfile.ZipFile(dump) as archive:
        raw_mb = sum(i.file_size for i in archive.infolist()) / 2**20
    me = [sys.executable, __file__]
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        rows["floor: polars reads the zip member + NDJSON"] = _measured(me + ["floor", str(clean)])
        steps = (("read", clean, work / "pass1.parquet"), ("copy", work / "pass1.parquet", work / "pass2.parquet"),
                 ("part", work / "pass2.parquet", work / "pass3"))
        passes = [_measured(me + ["pass", step, str(a), str(b)]) for step, a, b in steps]
        stages, metrics = run_ours(dump, work)
        if through_dvc:
            rows["ours through `dvc repro split` (DVC hashing and caching included)"] = _through_dvc(dump, work)
        if not skip_naive:
            rows["naive: json.loads + normalize_text per line, pandas"] = _measured(
                me + ["naive", str(dump), str(work / "params.yaml"), str(work / "naive")])
    ours = {"wall": sum(r["wall"] for r in stages), "cpu": sum(r["cpu"] for r in stages),
            "rss_mb": max(r["rss_mb"] for r in stages)}
    floor_row = rows.pop("floor: polars reads the zip member + NDJSON")
    through = {"wall": sum(r["wall"] for r in passes), "cpu": sum(r["cpu"] for r in passes),
               "rss_mb": max(r["rss_mb"] for r in passes)}
    table = {"floor: polars reads the zip member + NDJSON": floor_row,
             "pass-through: three stages that only read and write the tables": through,
             **{f"ours: {s}": r for s, r in zip(STAGES, stages)},
             "**ours: prepare + dedup + split**": ours, **rows}
    pre, ded, spl = (metrics[s] for s in STAGES)
    print(f"\nSynthetic dump, shape {shape}: {questions:,} questions, {raw_mb:,.0f} MB of JSON lines "
          f"({dump.stat().st_size / 2**20:,.0f} MB zipped). Ours: {pre['pairs_in']:,} pairs read, "
          f"{pre['pairs_out']:,} kept, {ded['pairs_out']:,} after dedup, split {spl['pairs']}\n")
    print("| variant | wall s | CPU s | peak RSS MB |")
    print("|---|---:|---:|---:|")
    for name, r in table.items():
        print(f"| {name} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['rss_mb']:,.0f} |")
    print(f"\nours / floor: {ours['wall'] / floor_row['wall']:.2f}x wall, {ours['cpu'] / floor_row['cpu']:.2f}x CPU"
          f" (goal <= 1.5x); prepare alone / floor: {stages[0]['wall'] / floor_row['wall']:.2f}x wall, "
          f"{stages[0]['cpu'] / floor_row['cpu']:.2f}x CPU")
    print(f"pass-through / floor: {through['wall'] / floor_row['wall']:.2f}x wall (the least three stages cost); "
          f"ours / pass-through: {ours['wall'] / through['wall']:.2f}x wall, {ours['cpu'] / through['cpu']:.2f}x CPU; "
          f"pass-through steps (s): " + ", ".join(f"{step} {r['wall']:.1f}" for (step, *_), r in zip(steps, passes)))
    if through_dvc:
        dvc_row = table["ours through `dvc repro split` (DVC hashing and caching included)"]
        print(f"dvc repro split / the three scripts: {dvc_row['wall'] / ours['wall']:.2f}x wall")
        if not skip_naive:
            print(f"naive / ours through dvc repro: "
                  f"{table['naive: json.loads + normalize_text per line, pandas']['wall'] / dvc_row['wall']:.1f}x wall "
                  f"(goal >= 9x)")
    if not skip_naive:
        naive_row = table["naive: json.loads + normalize_text per line, pandas"]
        naive_out = json.loads(naive_row["stdout"])
        phases = naive_out["phases"]
        print(f"naive / ours: {naive_row['wall'] / ours['wall']:.1f}x wall, {naive_row['cpu'] / ours['cpu']:.1f}x CPU "
              f"(goal >= 9x). Naive phases (s, in process): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items())
              + f"; its prepare / our prepare stage: {phases['prepare'] / stages[0]['wall']:.1f}x wall. "
              f"Naive kept {naive_out['prepared']:,} -> {naive_out['deduped']:,} -> {naive_out['split']}")
    print(f"ours peak RSS: {ours['rss_mb'] / 1024:.2f} GB (goal < 3 GB)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in INTERNAL:
        INTERNAL[sys.argv[1]](*sys.argv[2:])
    else:
        app()
