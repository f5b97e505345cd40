"""The inputs `prepare.inputs` lists, in any of the formats users have, as one pairs table.

Formats, each read by a module of its own into the same records (chitchat.data.records):
- `qa_jsonl` (qa_jsonl.py): the Ответы@Mail.ru dump, one JSON object per line (`.jsonl`, `.gz`, `.zip`);
  other JSON-lines dumps through a field map (`fields`, `answers_keep`: field_map.py).
- `pairs_tsv` (pairs_tsv.py): the course's `train.txt`, `question<TAB>answer[<TAB>category]` per line.
- `dialogues` (dialogues.py): blank-line separated dialogues with one "- " turn per line, or a `.json`
  list of dialogues; every turn after the first answers the one before it.
- `speakers` (dialogues.py): dialogues of `Имя: реплика` lines. With `condition_field` speaker each
  pair's `category` is the answering speaker, so the category token makes the model answer as that
  character.
- `text` (prose.py): plain prose for a language model, a row per paragraph (never chosen by `auto`).
- `auto`: told apart by the file name (`.jsonl`, `.tsv`, `.json`), else by the first non-blank line
  (`{`: qa_jsonl; `[` or a dash: dialogues; a tab: pairs_tsv; `Name: text`: speakers).

`condition_field` (prepare.condition_field) says what the `category` column holds: the input's
category (`category`, the default) or the answering speaker (`speaker`, speakers files only).

The QA dump and TSV pairs are read, normalized and turned into pairs a chunk at a time in polars
(iter_pair_chunks), on several threads at once; only dialogues, which run across lines, are
assembled in a Python loop.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import polars as pl

from chitchat.core.errors import InputError
from chitchat.data.dialogues import DASHES, SPEAKER_LINE, dialogue_frames
from chitchat.data.field_map import FieldMap, field_map, mapped_records
from chitchat.data.lines import TEXT_MEMBERS, iter_line_chunks, iter_lines
from chitchat.data.normalize import normalize_series, normalize_text
from chitchat.data.pairs_tsv import tsv_chunk
from chitchat.data.parallel import PARSE_WORKERS, ordered_map
from chitchat.data.prose import text_frames
from chitchat.data.qa_jsonl import qa_records
from chitchat.data.read_report import ReadReport

FORMATS = ("auto", "qa_jsonl", "pairs_tsv", "dialogues", "speakers", "text")
CONDITION_FIELDS = ("category", "speaker")  # what the category column (and so the model's lead token) holds
PAIR_SCHEMA = {
    "qid": pl.UInt32,  # one id per question record; answers of one record share it
    "line": pl.UInt32,  # line of the record in its input file
    "source": pl.String,  # the input's name
    "question": pl.String,
    "category": pl.String,
    "answer": pl.String,
    "history": pl.List(pl.String),  # earlier turns, oldest first (dialogues only)
}


@dataclass(frozen=True)
class InputSpec:
    """One entry of `prepare.inputs`."""

    path: str
    format: str = "auto"
    name: str = ""  # the `source` value of its rows; the file name without suffixes when empty
    category: str = ""  # category of rows that have none; `prepare.missing_category` when empty
    fields: dict | None = None  # qa_jsonl not in the course schema: dotted paths (see field_map.py)
    answers_keep: str | None = None  # with fields: all | best | top-K

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"prepare.inputs: format of {self.path} must be one of {', '.join(FORMATS)}, "
                             f"got {self.format!r}")
        if self.field_map is not None and self.format not in ("auto", "qa_jsonl"):
            raise ValueError(f"prepare.inputs: fields of {self.path} apply to JSON lines (format qa_jsonl), "
                             f"not {self.format}")

    @property
    def field_map(self) -> FieldMap | None:
        return field_map(self.fields, self.answers_keep)

    @property
    def source(self) -> str:
        return self.name or Path(self.path).name.split(".")[0]


def parse_inputs(entries) -> list[InputSpec]:
    """`prepare.inputs` as specs: each entry a path string or a mapping with `path` and options."""
    if not isinstance(entries, list) or not entries:
        raise ValueError("prepare.inputs must be a non-empty list of files")
    specs = []
    for entry in entries:
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or "path" not in entry:
            raise ValueError(f"prepare.inputs: each entry needs a path, got {entry!r}")
        unknown = set(entry) - {"path", "format", "name", "category", "fields", "answers_keep"}
        if unknown:
            raise ValueError(f"prepare.inputs: unknown keys {', '.join(sorted(unknown))} for {entry['path']}")
        specs.append(InputSpec(**{k: v if k == "fields" else str(v) for k, v in entry.items()}))
    names = [s.source for s in specs]
    if len(set(names)) < len(names):
        raise ValueError(f"prepare.inputs: two inputs share a source name ({', '.join(names)}); set `name`")
    return specs


def detect_format(path: str | Path) -> str:
    """qa_jsonl, pairs_tsv or dialogues: from the file name where it says, else the first line."""
    name = Path(path).name.lower()
    for marker, fmt in ((".jsonl", "qa_jsonl"), (".tsv", "pairs_tsv"), (".json", "dialogues")):
        if marker in name:
            return fmt
    for _, raw in iter_lines(path, TEXT_MEMBERS):
        line = raw.decode("utf-8", errors="replace").strip()
        if not line:
            continue
        if line.startswith("{"):
            return "qa_jsonl"
        if line.startswith("[") or line.startswith(DASHES):
            return "dialogues"
        if "\t" in line:
            return "pairs_tsv"
        if SPEAKER_LINE.match(line):
            return "speakers"
        raise InputError(path, "cannot tell the format from the first line (set `format` in prepare.inputs)")
    raise InputError(path, "file has no records (only blank lines)")


def _normalized_history(history: pl.Series, norm: Callable[[pl.Series], pl.Series]) -> pl.Series:
    """Normalize every turn of a list column: flatten, normalize once, rebuild with the same lengths."""
    import numpy as np  # here, not at the top: the QA dump has no history, and prepare starts 80 ms sooner
    import pyarrow as pa

    flat = norm(pl.Series(history.rechunk().to_arrow().flatten()))
    offsets = pa.array(np.concatenate([[0], np.cumsum(history.list.len().to_numpy())]), pa.int64())
    return pl.Series(history.name, pa.LargeListArray.from_arrays(offsets, flat.to_arrow()))


def _pairs(records: pl.DataFrame, source: str, qid: int, norm: Callable[[pl.Series], pl.Series], fallback: str,
           categories: dict[str, str]) -> pl.DataFrame:
    """PAIR_SCHEMA rows of records (line, question, category, answers, history): one per answer."""
    cats = records["category"].unique().drop_nulls().to_list()
    categories.update({c: normalize_text(c) or fallback for c in cats if c not in categories})
    records = records.with_columns(
        qid=pl.int_range(qid, qid + records.height, dtype=pl.UInt32),
        question=norm(records["question"]),
        category=pl.col("category").replace_strict(categories, default=fallback, return_dtype=pl.String),
        history=_normalized_history(records["history"], norm) if records["history"].list.len().sum() else "history",
    )
    pairs = records.explode("answers").rename({"answers": "answer"})
    pairs = pairs.with_columns(answer=norm(pairs["answer"]), source=pl.lit(source))
    return pairs.select(pl.col(name).cast(dtype) for name, dtype in PAIR_SCHEMA.items())


Finish = Callable[[pl.DataFrame], tuple[pl.DataFrame, Any]]


def _record_jobs(spec: InputSpec, fmt: str, report: ReadReport, max_history: int, condition_field: str
                 ) -> tuple[Iterator, Callable[[Any], tuple[pl.DataFrame, ReadReport | None]]]:
    """(items, fn): fn(item) gives a records frame and that item's own report (None when the
    items' reader counts in `report` itself). The QA dump and TSV pairs go a chunk of lines at a
    time, which threads can parse at once; dialogues and prose are assembled in order in Python."""
    if fmt == "qa_jsonl":
        fm = spec.field_map
        return iter_line_chunks(spec.path), (qa_records if fm is None else functools.partial(mapped_records, fm=fm))
    if fmt == "pairs_tsv":
        return iter_line_chunks(spec.path, TEXT_MEMBERS), tsv_chunk
    if fmt == "text":
        return text_frames(spec.path, report), lambda frame: (frame, None)
    return (dialogue_frames(spec.path, report, max_history, fmt == "speakers", condition_field == "speaker"),
            lambda frame: (frame, None))


def iter_pair_chunks(specs: list[InputSpec], lowercase: bool = False, yo_to_e: bool = False,
                     missing_category: str = "Без категории", max_history: int = 0,
                     reports: dict[str, ReadReport] | None = None, condition_field: str = "category",
                     finish: Finish | None = None, workers: int = 1) -> Iterator[tuple[pl.DataFrame, int, Any]]:
    """All inputs as normalized pairs (see PAIR_SCHEMA), a chunk at a time: (frame, pairs read, extra).

    `finish(pairs) -> (frame, extra)` runs on each chunk's pairs on the worker thread that made them
    (prepare filters there), and may drop rows; without it the frame is the pairs and extra None.
    Up to `workers` chunks are parsed, normalized and finished at once; results, reports and qids
    come in input order whatever the number of workers. `reports` gets a report per source.
    """
    if condition_field not in CONDITION_FIELDS:
        raise ValueError(f"prepare.condition_field must be one of {', '.join(CONDITION_FIELDS)}, "
                         f"got {condition_field!r}")
    reports = {} if reports is None else reports
    qid = 0

    def norm(texts: pl.Series) -> pl.Series:
        return normalize_series(texts, lowercase, yo_to_e)

    for spec in specs:
        report = reports[spec.source] = ReadReport()
        fmt = detect_format(spec.path) if spec.format == "auto" else spec.format
        if condition_field == "speaker" and fmt != "speakers":
            raise InputError(spec.path, f"prepare.condition_field speaker needs `Name: text` lines (format speakers), "
                                        f"this input is {fmt}")
        items, records_of = _record_jobs(spec, fmt, report, max_history, condition_field)
        categories: dict[str, str] = {}  # raw name -> normalized; shared by the threads (same values)
        fallback = spec.category or missing_category

        def work(item, records_of=records_of, categories=categories, fallback=fallback, source=spec.source):
            records, part = records_of(item)
            if not records.height:
                return 0, None, 0, None, part
            pairs = _pairs(records, source, 0, norm, fallback, categories)  # qids from 0, offset in order
            frame, extra = finish(pairs) if finish else (pairs, None)
            return records.height, frame, pairs.height, extra, part

        for n_records, frame, n_pairs, extra, part in ordered_map(work, items, workers):
            if part is not None:
                report.merge(part)
            if n_records:
                yield (frame.with_columns((pl.col("qid") + qid).cast(pl.UInt32)) if qid else frame), n_pairs, extra
                qid += n_records
        if fmt == "qa_jsonl" and report.lines == 0:
            raise InputError(spec.path, "file has no records (only blank lines)")


def iter_pair_frames(specs: list[InputSpec], lowercase: bool = False, yo_to_e: bool = False,
                     missing_category: str = "Без категории", max_history: int = 0,
                     reports: dict[str, ReadReport] | None = None,
                     condition_field: str = "category", workers: int = 1) -> Iterator[pl.DataFrame]:
    """All inputs as normalized pairs tables (see PAIR_SCHEMA), a chunk at a time (iter_pair_chunks)."""
    for frame, _, _ in iter_pair_chunks(specs, lowercase, yo_to_e, missing_category, max_history, reports,
                                        condition_field, workers=workers):
        yield frame


def read_inputs(specs: list[InputSpec], lowercase: bool = False, yo_to_e: bool = False,
                missing_category: str = "Без категории", max_history: int = 0, condition_field: str = "category",
                workers: int = PARSE_WORKERS) -> tuple[pl.DataFrame, dict[str, ReadReport]]:
    """All inputs as one normalized pairs table (see PAIR_SCHEMA) and a read report per source."""
    reports: dict[str, ReadReport] = {}
    frames = list(iter_pair_frames(specs, lowercase, yo_to_e, missing_category, max_history, reports,
                                   condition_field, workers))
    return pl.concat([pl.DataFrame(schema=PAIR_SCHEMA), *frames], how="vertical"), reports
