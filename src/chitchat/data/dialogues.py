"""The readers of formats `dialogues` and `speakers`: every turn after the first answers the one
before it, with up to `max_history` earlier turns kept in the `history` column.

- `dialogues`: blank-line separated dialogues with one "- " turn per line (the anekdot format, plain
  or in a `.tar.xz`), or a `.json` file holding a list of dialogues, each a list of turns.
- `speakers`: one `Имя: реплика` turn per line (a TV or book script). The name is cut from the turn;
  consecutive lines of one speaker make one turn; a line that is not `Name: text` (a stage
  direction) is skipped and counted as `no_speaker`; the answering speaker can be the category.

Dialogues run across lines and are far smaller than the dump: a Python loop assembles them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

import polars as pl

from chitchat.core.errors import InputError
from chitchat.data.lines import TEXT_MEMBERS, blocks, iter_line_chunks
from chitchat.data.read_report import ReadReport
from chitchat.data.records import CHUNK_ROWS, records_frame

DASHES = ("- ", "– ", "— ")
# `Имя: реплика`: a name of one to three words that starts with a letter, a colon, the turn's text
SPEAKER_LINE = re.compile(r"^([^\W\d_][\w'’.\-]*(?: [\w'’.\-]+){0,2})\s*:(?!//)\s*(\S.*)$")


def _text_dialogues(path: str, report: ReadReport) -> Iterator[tuple[int, list[str]]]:
    """(first line, turns) per blank-line separated dialogue; a leading dash is not part of a turn."""
    for block in blocks(path, report):
        turns = []
        for _, text in block:
            for dash in DASHES:
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
    for block in blocks(path, report):
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


def dialogue_frames(path: str, report: ReadReport, max_history: int, speakers: bool = False,
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
            yield records_frame(rows)
            rows = []
    yield records_frame(rows)
