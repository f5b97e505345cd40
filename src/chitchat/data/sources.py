"""The inputs `prepare.inputs` lists, in any of the formats users have, as one pairs table.

Formats:
- `qa_jsonl`: the Ответы@Mail.ru dump, one JSON object per line (`.jsonl`, `.gz`, `.zip`).
- `pairs_tsv`: the course's `train.txt`, `question<TAB>answer[<TAB>category]` per line.
- `dialogues`: blank-line separated dialogues with one "- " turn per line (the anekdot format,
  plain or in a `.tar.xz`), or a `.json` file holding a list of dialogues, each a list of turns.
  Every turn after the first answers the one before it, with up to `max_history` earlier turns
  kept in the `history` column.
- `speakers`: dialogues as `dialogues` reads them, but one `Имя: реплика` turn per line (a TV or
  book script). The name is cut from the turn; consecutive lines of one speaker make one turn; a
  line that is not `Name: text` (a stage direction) is skipped and counted as `no_speaker`. With
  `condition_field` speaker each pair's `category` is the answering speaker, so the category
  token makes the model answer as that character.
- `text`: plain prose for a language model (model.task lm): paragraphs separated by blank lines,
  the lines of one paragraph joined by spaces. Each paragraph is one row: the paragraph in `answer`,
  TEXT_MARKER + " " + the paragraph in `question` (never chosen by `auto`; see _text_frames).
- `auto`: told apart by the file name (`.jsonl`, `.tsv`, `.json`), else by the first non-blank line
  (`{`: qa_jsonl; `[` or a dash: dialogues; a tab: pairs_tsv; `Name: text`: speakers).

`condition_field` (prepare.condition_field) says what the `category` column holds: the input's
category (`category`, the default) or the answering speaker (`speaker`, speakers files only).

The QA dump and TSV pairs are read, normalized and turned into pairs a chunk at a time in polars
(iter_pair_chunks), on several threads at once; only dialogues, which run across lines, are
assembled in a Python loop.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import polars as pl

from chitchat.data.normalize import normalize_series, normalize_text
from chitchat.data.readers import (PARSE_WORKERS, WHITESPACE_ONLY, LineChunk, ReadReport, iter_line_chunks,
                                   iter_lines, nonblank_lines, note_chunk, ordered_map, qa_chunk)
from chitchat.core.errors import InputError

FORMATS = ("auto", "qa_jsonl", "pairs_tsv", "dialogues", "speakers", "text")
CONDITION_FIELDS = ("category", "speaker")  # what the category column (and so the model's lead token) holds
TEXT_MEMBERS = (".txt", ".tsv", ".json", ".jsonl")  # archive members a text reader looks at
PAIR_SCHEMA = {
    "qid": pl.UInt32,  # one id per question record; answers of one record share it
    "line": pl.UInt32,  # line of the record in its input file
    "source": pl.String,  # the input's name
    "question": pl.String,
    "category": pl.String,
    "answer": pl.String,
    "history": pl.List(pl.String),  # earlier turns, oldest first (dialogues only)
}
CHUNK_ROWS = 200_000  # dialogue pairs buffered in Python lists before they become a polars frame
_RECORDS = {"line": pl.UInt32, "question": pl.String, "category": pl.String, "answers": pl.List(pl.String),
            "history": pl.List(pl.String)}  # what each format's reader yields; category null = none
_DASHES = ("- ", "– ", "— ")
# `Имя: реплика`: a name of one to three words that starts with a letter, a colon, the turn's text
SPEAKER_LINE = re.compile(r"^([^\W\d_][\w'’.\-]*(?: [\w'’.\-]+){0,2})\s*:(?!//)\s*(\S.*)$")


@dataclass(frozen=True)
class InputSpec:
    """One entry of `prepare.inputs`."""

    path: str
    format: str = "auto"
    name: str = ""  # the `source` value of its rows; the file name without suffixes when empty
    category: str = ""  # category of rows that have none; `prepare.missing_category` when empty

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"prepare.inputs: format of {self.path} must be one of {', '.join(FORMATS)}, "
                             f"got {self.format!r}")

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
        unknown = set(entry) - {"path", "format", "name", "category"}
        if unknown:
            raise ValueError(f"prepare.inputs: unknown keys {', '.join(sorted(unknown))} for {entry['path']}")
        specs.append(InputSpec(**{k: str(v) for k, v in entry.items()}))
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
        if line.startswith("[") or line.startswith(_DASHES):
            return "dialogues"
        if "\t" in line:
            return "pairs_tsv"
        if SPEAKER_LINE.match(line):
            return "speakers"
        raise InputError(path, "cannot tell the format from the first line (set `format` in prepare.inputs)")
    raise InputError(path, "file has no records (only blank lines)")


def _tsv_chunk(chunk: LineChunk) -> tuple[pl.DataFrame, ReadReport]:
    """(line, question, category, answers, history) per `question<TAB>answer[<TAB>category]` line of
    one chunk, and the chunk's own report (chunks are parsed on several threads)."""
    report = ReadReport()
    lines = nonblank_lines(chunk, report).with_columns(fields=pl.col("text").str.split("\t"))
    n = pl.col("fields").list.len()
    reason = pl.when(n < 2).then(pl.lit("no_tab")).when(n > 3).then(pl.lit("too_many_tabs"))
    lines = lines.with_columns(reason=reason)
    report.skip_many(lines.filter(pl.col("reason").is_not_null()).select("line", "reason"))
    ok = lines.filter(pl.col("reason").is_null()).select(
        "line",
        question=pl.col("fields").list.get(0),
        category=pl.col("fields").list.get(2, null_on_oob=True),
        answers=pl.concat_list(pl.col("fields").list.get(1)),
        history=pl.lit([], dtype=pl.List(pl.String)),
    )
    ok = ok.with_columns(category=pl.when(pl.col("category").str.contains(WHITESPACE_ONLY))
                         .then(None).otherwise("category"))
    report.records_ok += ok.height
    report.category_missing += ok["category"].null_count()
    return ok, report


def _qa_chunk(chunk: LineChunk) -> tuple[pl.DataFrame, ReadReport]:
    """qa_chunk's records in the columns every format yields."""
    records, report = qa_chunk(chunk)
    return records.rename({"responses": "answers"}).with_columns(history=pl.lit([], dtype=pl.List(pl.String))), report


def _blocks(path: str, report: ReadReport, count_lines: bool = False) -> Iterator[list[tuple[int, str]]]:
    """Blank-line separated blocks of (line number, stripped text); lines that are not UTF-8 are
    skipped and counted (`count_lines`: every non-blank line also counts in report.lines)."""
    block: list[tuple[int, str]] = []
    for chunk in iter_line_chunks(path, TEXT_MEMBERS):
        note_chunk(chunk, report)
        for line_no, text in enumerate(chunk.lines.to_list(), chunk.first_line):
            if text is None:
                report.lines += count_lines
                report.skip("invalid_utf8", line_no)
                continue
            text = text.strip()
            if text:
                report.lines += count_lines
                block.append((line_no, text))
            elif block:
                yield block
                block = []
    if block:
        yield block


def _text_dialogues(path: str, report: ReadReport) -> Iterator[tuple[int, list[str]]]:
    """(first line, turns) per blank-line separated dialogue; a leading dash is not part of a turn."""
    for block in _blocks(path, report):
        turns = []
        for _, text in block:
            for dash in _DASHES:
                if text.startswith(dash):
                    text = text[len(dash):]
                    break
            turns.append(text)
        yield block[0][0], turns


def _speaker_dialogues(path: str, report: ReadReport) -> Iterator[tuple[list[int], list[str], list[str]]]:
    """(line of each turn, turns, speakers) per blank-line separated dialogue of `Name: text` lines.

    The name is cut from the turn; a speaker's consecutive lines join into one turn (a stage
    direction between them, skipped as no_speaker, must not make them answer each other).
    """
    for block in _blocks(path, report):
        lines: list[int] = []
        turns: list[str] = []
        names: list[str] = []
        for line_no, text in block:
            match = SPEAKER_LINE.match(text)
            if match is None:
                report.skip("no_speaker", line_no)
                continue
            name, said = match.group(1), match.group(2)
            if names and names[-1] == name:
                turns[-1] += " " + said
                continue
            lines.append(line_no)
            turns.append(said)
            names.append(name)
        if turns:
            yield lines, turns, names


def _json_dialogues(path: str, report: ReadReport) -> Iterator[tuple[int, list[str]]]:
    """(index + 1, turns) per dialogue of a JSON list of lists of strings."""
    parts = []
    for chunk in iter_line_chunks(path, TEXT_MEMBERS):
        if chunk.lines.null_count():
            raise InputError(path, "not a JSON list of dialogues (UnicodeDecodeError)")
        parts.append(chunk.lines.str.join("\n").item())
    try:
        data = json.loads("\n".join(parts))
    except ValueError as exc:
        raise InputError(path, f"not a JSON list of dialogues ({exc.__class__.__name__})") from None
    if not isinstance(data, list):
        raise InputError(path, "JSON dialogues must be a list of lists of strings")
    for index, dialogue in enumerate(data, 1):
        if not isinstance(dialogue, list) or not all(isinstance(t, str) for t in dialogue):
            report.skip("dialogue_not_list_of_strings", index)
            continue
        yield index, dialogue


def _dialogue_frames(path: str, report: ReadReport, max_history: int, speakers: bool = False,
                     by_speaker: bool = False) -> Iterator[pl.DataFrame]:
    """(line, previous turn, category, [turn], history) for every turn after the first of each dialogue.

    `speakers`: `Name: text` lines; `by_speaker`: the category is the answering speaker (else null).
    Dialogues are stateful across lines and far smaller than the dump: a Python loop builds them.
    """
    is_json = Path(path).name.lower().endswith((".json", ".json.gz", ".json.zip", ".json.xz"))
    if speakers:
        dialogues = _speaker_dialogues(path, report)
    else:  # line numbers: a JSON dialogue's index, a text dialogue's first line plus the turn's index
        dialogues = ((([line_no] * len(turns)) if is_json else list(range(line_no, line_no + len(turns))), turns, None)
                     for line_no, turns in (_json_dialogues if is_json else _text_dialogues)(path, report))
    rows: list[tuple] = []
    for lines, turns, names in dialogues:
        report.lines += 1
        if len(turns) < 2:
            report.skip("one_turn_dialogue", lines[0] if lines else 0)
            continue
        report.records_ok += 1
        for i in range(1, len(turns)):
            history = turns[max(0, i - 1 - max_history) : i - 1] if max_history > 0 else []
            rows.append((lines[i], turns[i - 1], names[i] if by_speaker else None, [turns[i]], history))
        if len(rows) >= CHUNK_ROWS:
            yield pl.DataFrame(rows, schema=_RECORDS, orient="row")
            rows = []
    yield pl.DataFrame(rows, schema=_RECORDS, orient="row")


# The question of a `text` row: this marker, a space, the paragraph. The question is what dedup and
# split group by, so each distinct paragraph is its own group: exact and near duplicate paragraphs
# go, no cap merges different paragraphs, and an answer never equals its question (the marker is a
# word). Filters read the marker to apply prepare's text limits instead of the chit-chat ones.
TEXT_MARKER = "¶text"


def _paragraphs(path: str, report: ReadReport) -> Iterator[tuple[int, str]]:
    """(first line, its lines joined by spaces) per blank-line separated paragraph."""
    for block in _blocks(path, report, count_lines=True):
        yield block[0][0], " ".join(text for _, text in block)


def _text_frames(path: str, report: ReadReport) -> Iterator[pl.DataFrame]:
    """(line, TEXT_MARKER + paragraph, null, [paragraph], []) per paragraph of a `text` input.

    Normalizing the question gives the marker, a space and the normalized paragraph, as the marker
    is already normalized text (lower case, no ё) and a space separates it from the paragraph.
    """
    rows: list[tuple] = []
    for line_no, paragraph in _paragraphs(path, report):
        report.records_ok += 1
        rows.append((line_no, f"{TEXT_MARKER} {paragraph}", None, [paragraph], []))
        if len(rows) >= CHUNK_ROWS:
            yield pl.DataFrame(rows, schema=_RECORDS, orient="row")
            rows = []
    if report.lines == 0:
        raise InputError(path, "file has no records (only blank lines)")
    yield pl.DataFrame(rows, schema=_RECORDS, orient="row")


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
        return iter_line_chunks(spec.path), _qa_chunk
    if fmt == "pairs_tsv":
        return iter_line_chunks(spec.path, TEXT_MEMBERS), _tsv_chunk
    if fmt == "text":
        return _text_frames(spec.path, report), lambda frame: (frame, None)
    return (_dialogue_frames(spec.path, report, max_history, fmt == "speakers", condition_field == "speaker"),
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
