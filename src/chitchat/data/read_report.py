"""ReadReport: what a reader saw of one input, so nothing is lost silently.

Recoverable problems (a malformed line, a record without `question`...) skip the record and are
counted by reason, with the first line numbers of each; chunks read on their own threads have
reports of their own, merged in input order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import polars as pl

MAX_EXAMPLE_LINES = 5


@dataclass
class ReadReport:
    """What a reader saw: records read, skipped by reason, and responses dropped by reason."""

    lines: int = 0
    records_ok: int = 0
    skipped: Counter = field(default_factory=Counter)
    skipped_lines: dict[str, list[int]] = field(default_factory=dict)
    responses_skipped: Counter = field(default_factory=Counter)
    category_missing: int = 0
    nul_bytes: int = 0  # NUL bytes removed from the lines before parsing
    members: dict[str, int] = field(default_factory=dict)  # archive member -> lines read from it

    def skip(self, reason: str, line_no: int) -> None:
        """Count one skipped record and remember its line number among the first few."""
        self.skipped[reason] += 1
        lines = self.skipped_lines.setdefault(reason, [])
        if len(lines) < MAX_EXAMPLE_LINES:
            lines.append(line_no)

    def skip_many(self, skips: pl.DataFrame) -> None:
        """Count skipped records given as a (line, reason) frame, in line order."""
        if skips.height == 0:
            return
        per_reason = (skips.sort("line").group_by("reason", maintain_order=True)
                      .agg(pl.len(), pl.col("line").head(MAX_EXAMPLE_LINES)))
        for reason, count, lines in per_reason.iter_rows():
            self.skipped[reason] += count
            kept = self.skipped_lines.setdefault(reason, [])
            kept.extend(lines[: MAX_EXAMPLE_LINES - len(kept)])

    def merge(self, other: "ReadReport") -> None:
        """Add the counts of a later part of the same input (a chunk read on its own)."""
        self.lines += other.lines
        self.records_ok += other.records_ok
        for reason, count in other.skipped.items():
            self.skipped[reason] += count
            kept = self.skipped_lines.setdefault(reason, [])
            kept.extend(other.skipped_lines.get(reason, [])[: MAX_EXAMPLE_LINES - len(kept)])
        self.responses_skipped.update(other.responses_skipped)
        self.category_missing += other.category_missing
        self.nul_bytes += other.nul_bytes
        for member, lines in other.members.items():
            self.members[member] = self.members.get(member, 0) + lines

    def as_dict(self) -> dict:
        return {
            "lines": self.lines,
            "records_ok": self.records_ok,
            "records_skipped": dict(sorted(self.skipped.items())),
            "records_skipped_total": sum(self.skipped.values()),
            "records_skipped_first_lines": dict(sorted(self.skipped_lines.items())),
            "responses_skipped": dict(sorted(self.responses_skipped.items())),
            "category_missing": self.category_missing,
            "nul_bytes_removed": self.nul_bytes,
            "members": dict(sorted(self.members.items())),
        }
