"""Data report: lengths, categories, token frequencies and unknown tokens of the split pairs.

Everything is counted in polars; texts are tokenized in one `encode_batch` call. Lengths are per
pair (what training batches see). Token frequencies and unknown-token rates count each distinct
question once plus every answer, exactly as the tokenizer stage fits and measures, so the valid
unknown rate here equals `valid.unk_rate` in metrics/tokenizer.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

import polars as pl

SPLITS = ("train", "valid", "test")
LENGTHS = ("question_chars", "answer_chars", "question_tokens", "answer_tokens")
IDS = pl.List(pl.Int64)


@dataclass
class ReportConfig:
    """The `report` section of params.yaml."""

    char_bin: int = 10  # histogram bin width in characters
    token_bin: int = 2  # histogram bin width in tokens
    top_tokens: list[int] = field(default_factory=lambda: [100, 1000])  # coverage of the k most frequent
    rank_points: int = 400  # ranks kept in the frequency-rank table, log-spaced (0 = all)

    def __post_init__(self) -> None:
        if self.char_bin < 1 or self.token_bin < 1:
            raise ValueError(f"report.char_bin and report.token_bin must be >= 1, "
                             f"got {self.char_bin} and {self.token_bin}")
        if self.rank_points < 0 or self.rank_points == 1:
            raise ValueError(f"report.rank_points must be 0 or >= 2, got {self.rank_points}")
        if any(k < 1 for k in self.top_tokens):
            raise ValueError(f"report.top_tokens must be positive, got {self.top_tokens}")


@dataclass
class DataReport:
    """metrics/data.json and one table per plot (name -> frame written as metrics/report/<name>.csv)."""

    metrics: dict
    plots: dict[str, pl.DataFrame]


def tokenized(pairs: pl.DataFrame, tok) -> pl.DataFrame:
    """`pairs` plus `question_ids`, `answer_ids` and the four LENGTHS columns; each distinct text is
    encoded once, in one batch."""
    texts = pl.concat([pairs["question"], pairs["answer"]]).unique(maintain_order=True)
    encoded = pl.DataFrame({"text": texts, "ids": pl.Series(tok.encode_batch(texts.to_list()), dtype=IDS)})
    return (
        pairs.join(encoded.rename({"text": "question", "ids": "question_ids"}), on="question", how="left")
        .join(encoded.rename({"text": "answer", "ids": "answer_ids"}), on="answer", how="left")
        .with_columns(
            question_chars=pl.col("question").str.len_chars(), answer_chars=pl.col("answer").str.len_chars(),
            question_tokens=pl.col("question_ids").list.len(), answer_tokens=pl.col("answer_ids").list.len(),
        )
    )


def tokenizer_ids(pairs: pl.DataFrame) -> pl.Series:
    """Token ids of the texts the tokenizer stage uses: each distinct question once, every answer."""
    return pl.concat([pairs.unique("question")["question_ids"], pairs["answer_ids"]]).explode().drop_nulls()


def histogram(pairs: pl.DataFrame, column: str, width: int, unit: str) -> pl.DataFrame:
    """Pairs per length bin: `unit` (bin start), `pairs` (count, all splits) and one column per split
    with the percentage of that split's pairs; empty bins between are kept as zeros."""
    binned = pairs.select("split", (pl.col(column) // width * width).alias(unit))
    counts = binned.group_by(unit).agg(pairs=pl.len(), **{s: (pl.col("split") == s).sum() for s in SPLITS})
    top = binned[unit].max() if binned.height else 0
    grid = pl.DataFrame({unit: pl.int_range(0, top + 1, width, eager=True, dtype=binned.schema[unit])})
    totals = {s: max(1, (pairs["split"] == s).sum()) for s in SPLITS}
    return (
        grid.join(counts, on=unit, how="left").fill_null(0).sort(unit)
        .select(unit, "pairs", *[(pl.col(s) * 100 / totals[s]).round(3).alias(s) for s in SPLITS])
    )


def frequency_rank(ids: pl.Series, points: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(every token by falling frequency, the log-spaced ranks kept for the plot).

    Columns: `token` id, `rank` (1 = most frequent), `count`, `coverage` (% of all tokens held by
    this rank and the ones above), `log10_rank`, `log10_count`.
    """
    full = (
        ids.rename("token").value_counts(name="count").sort(["count", "token"], descending=[True, False])
        .with_row_index("rank", offset=1)
        .with_columns(coverage=(pl.col("count").cum_sum() * 100 / max(1, ids.len())).round(4),
                      log10_rank=pl.col("rank").log10().round(4), log10_count=pl.col("count").log10().round(4))
        .select("token", "rank", "count", "coverage", "log10_rank", "log10_count")
    )
    n = full.height
    if points == 0 or n <= points:
        return full, full
    keep = sorted({round(n ** (i / (points - 1))) for i in range(points)})  # geometric grid from 1 to n
    return full, full.filter(pl.col("rank").is_in(keep))


def length_stats(pairs: pl.DataFrame) -> dict:
    """Per split and length column: mean, median, 95th percentile and max."""
    stats = {}
    for split in SPLITS:
        part = pairs.filter(pl.col("split") == split)
        row = part.select(
            *[pl.col(c).mean().round(2).alias(f"{c}|mean") for c in LENGTHS],
            *[pl.col(c).median().alias(f"{c}|median") for c in LENGTHS],
            *[pl.col(c).quantile(0.95, "nearest").alias(f"{c}|p95") for c in LENGTHS],
            *[pl.col(c).max().alias(f"{c}|max") for c in LENGTHS],
        ).row(0, named=True)
        stats[split] = {c: {k.split("|")[1]: v for k, v in row.items() if k.startswith(c + "|")} for c in LENGTHS}
    return stats


def unknown_rates(pairs: pl.DataFrame, unk_id: int) -> pl.DataFrame:
    """Per split: `tokens`, `unknown` tokens and `percent` unknown (tokenizer-stage texts)."""
    rows = []
    for split in SPLITS:
        ids = tokenizer_ids(pairs.filter(pl.col("split") == split))
        rows.append({"split": split, "tokens": ids.len(), "unknown": int((ids == unk_id).sum())})
    return pl.DataFrame(rows).with_columns(percent=(pl.col("unknown") * 100 / pl.max_horizontal("tokens", 1)).round(4))


def data_report(frames: dict[str, pl.DataFrame], tok, cfg: ReportConfig) -> DataReport:
    """The whole report for the splits in `frames` (train, valid, test) and the tokenizer `tok`."""
    pairs = tokenized(
        pl.concat([frames[s].select("question", "category", "answer").with_columns(split=pl.lit(s)) for s in SPLITS]),
        tok,
    )
    train_ids = tokenizer_ids(pairs.filter(pl.col("split") == "train"))
    full, curve = frequency_rank(train_ids, cfg.rank_points)
    categories = (
        pairs.group_by("category").agg(pairs=pl.len(), **{s: (pl.col("split") == s).sum() for s in SPLITS})
        .sort(["pairs", "category"], descending=[True, False])
    )
    unknown = unknown_rates(pairs, tok.unk_id)
    total = max(1, train_ids.len())
    metrics = {
        "pairs": {s: int((pairs["split"] == s).sum()) for s in SPLITS} | {"total": pairs.height},
        "questions": {s: pairs.filter(pl.col("split") == s)["question"].n_unique() for s in SPLITS},
        "categories": categories.height,
        "pairs_per_category": dict(zip(categories["category"], categories["pairs"])),
        "lengths": length_stats(pairs),
        "tokens": {
            "vocab_size": tok.vocab_size,
            "train_tokens": train_ids.len(),
            "train_distinct": full.height,  # vocabulary entries the train texts use
            "train_seen_once": int((full["count"] == 1).sum()),
            **{f"top{k}_share": round(full["count"].head(k).sum() / total, 4) for k in cfg.top_tokens},
        },
        "unk_rate": {r["split"]: r["unknown"] / max(1, r["tokens"]) for r in unknown.iter_rows(named=True)},
    }
    plots = {
        "question_chars": histogram(pairs, "question_chars", cfg.char_bin, "chars"),
        "answer_chars": histogram(pairs, "answer_chars", cfg.char_bin, "chars"),
        "question_tokens": histogram(pairs, "question_tokens", cfg.token_bin, "tokens"),
        "answer_tokens": histogram(pairs, "answer_tokens", cfg.token_bin, "tokens"),
        "categories": categories,
        "token_frequency": curve.drop("token"),
        "unknown_tokens": unknown,
    }
    return DataReport(metrics, plots)


def rank_curve_svg(curve: pl.DataFrame, title: str, note: str = "", width: int = 640, height: int = 360) -> str:
    """An SVG line chart of `count` against `rank` on log-log axes (the picture in docs/data.md)."""
    left, right, top, bottom = 64, 24, 48 if note else 36, 48
    xmax = math.log10(max(10, curve["rank"].max()))
    ymax = math.ceil(math.log10(max(10, curve["count"].max())))

    def px(rank: float, count: float) -> tuple[float, float]:
        x = left + math.log10(rank) / xmax * (width - left - right)
        return x, top + (1 - math.log10(count) / ymax) * (height - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
           f'<text x="{width / 2}" y="36" text-anchor="middle" fill="#555">{escape(note)}</text>']
    for d in range(math.floor(xmax) + 1):
        x, _ = px(10 ** d, 1)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - bottom}" stroke="#ddd"/>'
                   f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{10 ** d:,}</text>')
    for d in range(ymax + 1):
        _, y = px(1, 10 ** d)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{10 ** d:,}</text>')
    points = " ".join("{:.1f},{:.1f}".format(*px(r, c)) for r, c in zip(curve["rank"], curve["count"]))
    out += [f'<polyline points="{points}" fill="none" stroke="#945dd6" stroke-width="2"/>',
            f'<text x="{(left + width - right) / 2}" y="{height - 10}" text-anchor="middle">rank (log scale)</text>',
            f'<text transform="translate(16 {(top + height - bottom) / 2}) rotate(-90)" text-anchor="middle">'
            'occurrences in train (log scale)</text>', "</svg>"]
    return "\n".join(out) + "\n"
