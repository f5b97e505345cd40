"""The inputs `prepare.inputs` lists, in any of the formats users have, as one pairs table.

Formats:
- `qa_jsonl`: the Ответы@Mail.ru dump, one JSON object per line (`.jsonl`, `.gz`, `.zip`).
- `pairs_tsv`: the course's `train.txt`, `question<TAB>answer[<TAB>category]` per line.
- `dialogues`: blank-line separated dialogues with one "- " turn per line (the anekdot format,
  plain or in a `.tar.xz`), or a `.json` file holding a list of dialogues, each a list of turns.
  Every turn after the first answers the one before it, with up to `max_history` earlier turns
  kept in the `history` column.
- `auto`: told apart by the file name (`.jsonl`, `.tsv`, `.json`), else by the first non-blank line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import polars as pl

from chitchat.data.normalize import normalize_text
from chitchat.data.readers import ReadReport, iter_lines, read_qa_jsonl
from chitchat.errors import InputError

FORMATS = ("auto", "qa_jsonl", "pairs_tsv", "dialogues")
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
CHUNK_ROWS = 200_000  # pairs buffered in Python lists before they become a polars frame
_DASHES = ("- ", "– ", "— ")


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
        raise InputError(path, "cannot tell the format from the first line (set `format` in prepare.inputs)")
    raise InputError(path, "file has no records (only blank lines)")


def _decode(raw: bytes, line_no: int, report: ReadReport) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        report.skip("invalid_utf8", line_no)
        return None


def iter_qa(path: str, report: ReadReport) -> Iterator[tuple[int, str, str, list[str], list[str]]]:
    """(line, question, category, answers, history) per record of a QA dump."""
    for record in read_qa_jsonl(path, report):
        yield record.line, record.question, record.category, record.responses, []


def iter_tsv(path: str, report: ReadReport) -> Iterator[tuple[int, str, str, list[str], list[str]]]:
    """(line, question, category, [answer], []) per `question<TAB>answer[<TAB>category]` line."""
    for line_no, raw in iter_lines(path, TEXT_MEMBERS):
        if not raw.strip():
            continue
        report.lines += 1
        text = _decode(raw, line_no, report)
        if text is None:
            continue
        fields = text.split("\t")
        if len(fields) < 2:
            report.skip("no_tab", line_no)
            continue
        if len(fields) > 3:
            report.skip("too_many_tabs", line_no)
            continue
        report.records_ok += 1
        category = fields[2] if len(fields) == 3 else ""
        report.category_missing += not category.strip()
        yield line_no, fields[0], category, [fields[1]], []


def _text_dialogues(path: str, report: ReadReport) -> Iterator[tuple[int, list[str]]]:
    """(first line, turns) per blank-line separated dialogue; a leading dash is not part of a turn."""
    turns: list[str] = []
    start = 0
    for line_no, raw in iter_lines(path, TEXT_MEMBERS):
        text = _decode(raw, line_no, report) if raw.strip() else ""
        if text is None:
            continue
        text = text.strip()
        if not text:
            if turns:
                yield start, turns
            turns = []
            continue
        if not turns:
            start = line_no
        for dash in _DASHES:
            if text.startswith(dash):
                text = text[len(dash):]
                break
        turns.append(text)
    if turns:
        yield start, turns


def _json_dialogues(path: str, report: ReadReport) -> Iterator[tuple[int, list[str]]]:
    """(index + 1, turns) per dialogue of a JSON list of lists of strings."""
    raw = b"\n".join(line for _, line in iter_lines(path, TEXT_MEMBERS))
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(path, f"not a JSON list of dialogues ({exc.__class__.__name__})") from None
    if not isinstance(data, list):
        raise InputError(path, "JSON dialogues must be a list of lists of strings")
    for index, dialogue in enumerate(data, 1):
        if not isinstance(dialogue, list) or not all(isinstance(t, str) for t in dialogue):
            report.skip("dialogue_not_list_of_strings", index)
            continue
        yield index, dialogue


def iter_dialogue_pairs(path: str, report: ReadReport, max_history: int
                        ) -> Iterator[tuple[int, str, str, list[str], list[str]]]:
    """(line, previous turn, "", [turn], history) for every turn after the first of each dialogue."""
    is_json = Path(path).name.lower().endswith((".json", ".json.gz", ".json.zip", ".json.xz"))
    for line_no, turns in (_json_dialogues if is_json else _text_dialogues)(path, report):
        report.lines += 1
        if len(turns) < 2:
            report.skip("one_turn_dialogue", line_no)
            continue
        report.records_ok += 1
        for i in range(1, len(turns)):
            history = turns[max(0, i - 1 - max_history) : i - 1] if max_history > 0 else []
            yield line_no + (0 if is_json else i), turns[i - 1], "", [turns[i]], history


def read_inputs(specs: list[InputSpec], lowercase: bool = False, yo_to_e: bool = False,
                missing_category: str = "Без категории", max_history: int = 0
                ) -> tuple[pl.DataFrame, dict[str, ReadReport]]:
    """All inputs as one normalized pairs table (see PAIR_SCHEMA) and a read report per source."""
    columns: dict[str, list] = {name: [] for name in PAIR_SCHEMA}
    frames: list[pl.DataFrame] = []
    reports: dict[str, ReadReport] = {}
    qid = 0

    def flush() -> None:
        frames.append(pl.DataFrame(columns, schema=PAIR_SCHEMA))
        for values in columns.values():
            values.clear()

    def norm(text: str) -> str:
        return normalize_text(text, lowercase, yo_to_e)

    for spec in specs:
        report = reports[spec.source] = ReadReport()
        fmt = detect_format(spec.path) if spec.format == "auto" else spec.format
        if fmt == "qa_jsonl":
            records = iter_qa(spec.path, report)
        elif fmt == "pairs_tsv":
            records = iter_tsv(spec.path, report)
        else:
            records = iter_dialogue_pairs(spec.path, report, max_history)
        fallback = spec.category or missing_category
        for line, question, category, answers, history in records:
            question, category, history = norm(question), normalize_text(category) or fallback, [norm(h) for h in history]
            for answer in answers:
                for name, value in zip(PAIR_SCHEMA, (qid, line, spec.source, question, category, norm(answer), history)):
                    columns[name].append(value)
            qid += 1
            if len(columns["qid"]) >= CHUNK_ROWS:
                flush()
    flush()
    return pl.concat(frames, how="vertical"), reports
