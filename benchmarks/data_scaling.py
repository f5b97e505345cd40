"""How prepare, dedup and split scale: wall time, peak RSS per stage and pairs per second at 1M and
5M questions (20M with --with-20m), on synthetic dumps of one shape (benchmarks/synthetic_dump.py),
each stage in its own process as DVC runs it, with the default params (dedup.memory_mb among them).

Prints a table, the ratio of the largest size's time to the 1M time against the size ratio (linear
time: 5M takes <= 5.5x the 1M time), and writes a plot of peak RSS against questions (SVG).

    python benchmarks/data_scaling.py                       # 1M and 5M: ~15 min to generate, ~5 to run
    python benchmarks/data_scaling.py --with-20m --svg docs/data_scaling.svg
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer

from data_stages import STAGES, run_ours
from synthetic_dump import SHAPES, generate_dump

app = typer.Typer(add_completion=False)
COLORS = {"prepare": "#1f77b4", "dedup": "#d62728", "split": "#2ca02c"}


def _row(questions: int, stages: list[dict], metrics: dict) -> dict:
    pairs = metrics["prepare"]["pairs_in"]
    wall = sum(r["wall"] for r in stages)
    return {"questions": questions, "pairs": pairs, "wall": wall, "pairs_s": pairs / wall,
            "peak_mb": max(r["rss_mb"] for r in stages), "dedup_out": metrics["dedup"]["pairs_out"],
            **{f"{s}_wall": r["wall"] for s, r in zip(STAGES, stages)},
            **{f"{s}_mb": r["rss_mb"] for s, r in zip(STAGES, stages)}}


def svg_plot(rows: list[dict], title: str, width: int = 640, height: int = 360) -> str:
    """Peak RSS of each stage (MB) against questions (millions): a line per stage, points marked."""
    left, right, top, bottom = 70, 150, 40, 50
    x_max = max(r["questions"] for r in rows) / 1e6
    y_max = max(max(r[f"{s}_mb"] for s in STAGES) for r in rows) * 1.15
    def x(v): return left + (width - left - right) * v / x_max
    def y(v): return height - bottom - (height - top - bottom) * v / y_max
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
           f'<text x="{left}" y="22" font-size="14">{title}</text>',
           f'<line x1="{left}" y1="{y(0)}" x2="{x(x_max)}" y2="{y(0)}" stroke="black"/>',
           f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{top}" stroke="black"/>',
           f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">questions (millions)</text>',
           f'<text x="16" y="{(top + height - bottom) / 2}" transform="rotate(-90 16 {(top + height - bottom) / 2})" '
           f'text-anchor="middle">peak RSS (MB)</text>']
    for r in rows:
        q = r["questions"] / 1e6
        out.append(f'<text x="{x(q)}" y="{y(0) + 16}" text-anchor="middle">{q:g}</text>')
    for tick in range(0, int(y_max) + 1, 500 if y_max < 4000 else 1000):
        out.append(f'<text x="{left - 6}" y="{y(tick) + 4}" text-anchor="end">{tick}</text>'
                   f'<line x1="{left}" y1="{y(tick)}" x2="{x(x_max)}" y2="{y(tick)}" stroke="#ddd"/>')
    for i, stage in enumerate(STAGES):
        points = " ".join(f"{x(r['questions'] / 1e6):.1f},{y(r[f'{stage}_mb']):.1f}" for r in rows)
        out.append(f'<polyline points="{points}" fill="none" stroke="{COLORS[stage]}" stroke-width="2"/>')
        out += [f'<circle cx="{x(r["questions"] / 1e6):.1f}" cy="{y(r[f"{stage}_mb"]):.1f}" r="3" '
                f'fill="{COLORS[stage]}"/>' for r in rows]
        out.append(f'<text x="{width - right + 12}" y="{top + 20 + 18 * i}" fill="{COLORS[stage]}">{stage}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


@app.command()
def main(
    shape: str = typer.Option("qa", help=f"shape of the synthetic dumps: {', '.join(SHAPES)}"),
    with_20m: bool = typer.Option(False, "--with-20m", help="add 20M questions (~40 min to generate on 2 cores)"),
    sizes: str = typer.Option("", help="comma-separated question counts instead of 1M,5M (e.g. 100000,500000)"),
    seed: int = typer.Option(0, help="seed of the synthetic dumps"),
    cache_dir: Path = typer.Option(Path.home() / ".cache" / "chitchat" / "bench", help="where dumps are kept"),
    svg: Path = typer.Option(None, help="write the peak-RSS plot here"),
) -> None:
    """Print the scaling table of our three stages."""
    counts = [int(n) for n in sizes.split(",")] if sizes else [1_000_000, 5_000_000] + ([20_000_000] if with_20m else [])
    rows = []
    for n in counts:
        dump, _ = generate_dump(cache_dir, n, seed, shape)
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            rows.append(_row(n, *run_ours(dump, Path(tmp))))
    print(f"\nShape {shape}; each stage in its own process; wall s / peak RSS MB\n")
    print("| questions | pairs read | prepare | dedup | split | all three s | pairs/s | peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = " | ".join(f"{r[f'{s}_wall']:.1f} / {r[f'{s}_mb']:,.0f}" for s in STAGES)
        print(f"| {r['questions']:,} | {r['pairs']:,} | {cells} | {r['wall']:.1f} | {r['pairs_s']:,.0f} | {r['peak_mb']:,.0f} |")
    base = rows[0]
    for r in rows[1:]:
        size, time_ratio = r["questions"] / base["questions"], r["wall"] / base["wall"]
        print(f"{r['questions']:,} / {base['questions']:,}: {size:.1f}x the questions, {time_ratio:.2f}x the time "
              f"(goal <= {1.1 * size:.1f}x); peak RSS {r['peak_mb'] / base['peak_mb']:.2f}x")
    if svg is not None:
        svg.write_text(svg_plot(rows, f"Peak RSS per stage, shape {shape} (benchmarks/data_scaling.py)"), encoding="utf-8")
        print(f"plot: {svg}")


if __name__ == "__main__":
    app()
