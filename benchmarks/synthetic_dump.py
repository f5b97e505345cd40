"""A seeded synthetic Ответы@Mail.ru dump for the data benchmarks, in shapes the real dumps take.

Cyrillic pseudo-words with Zipf weights, 16 categories, exact and near re-asks of earlier
questions, stock answers, answers that repeat their question, HTML entities, links, empty and very
long answers, records without a category or answers, and lines cut mid-way. Shapes:

- qa:     today's dump: 1 + Poisson(3) answers of about 7 words (1-40, 1% up to 600);
- long:   answers of 1-35 words, evenly;
- many:   10-40 answers per question;
- dups:   30% of the questions re-ask an earlier one (22% the same text, 8% in other case and
          punctuation), where qa has 8%.

Dumps are written once per (questions, shape, seed, generator version) to a cache folder, a chunk
of questions at a time, so the generator's memory does not grow with the size.
"""

from __future__ import annotations

import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa


@dataclass(frozen=True)
class Shape:
    answers: tuple[int, int] | None = None  # answers per question, evenly in [lo, hi]; None: 1 + Poisson(3)
    words: tuple[int, int] | None = None  # words per answer, evenly in [lo, hi]; None: log-normal, 1-40
    reask_exact: float = 0.05  # share of questions that repeat an earlier one exactly
    reask_near: float = 0.03  # ... in lower case without the question mark


SHAPES = {"qa": Shape(), "long": Shape(words=(1, 35)), "many": Shape(answers=(10, 40)),
          "dups": Shape(reask_exact=0.22, reask_near=0.08)}


GEN_VERSION = 2  # bump when the generator changes: cached dumps are keyed by it
GEN_CHUNK = 100_000  # questions generated and compressed at a time (bounds the generator's memory)

CATEGORIES = [  # the service's categories, most frequent first
    "Компьютеры, Связь", "Семья, Дом, Дети", "Знакомства, Любовь, Отношения", "Образование",
    "Красота и Здоровье", "Авто, Мото", "Юмор", "Философия, Непознанное", "Спорт",
    "Еда, Кулинария", "Путешествия, Туризм", "Животные, Растения", "Общество, Политика, СМИ",
    "Бизнес, Финансы", "Искусство и Культура", "Другое",
]
COMMON = ("не и в на что это как а я ты так да нет он она мы вы они у с по за то же бы ли если "
          "когда где почему кто можно нужно очень просто все всё ещё уже есть был было будет").split()
STOCK_ANSWERS = ["Не знаю", "Гугл в помощь", ")))", "Да", "Нет", "Конечно", "Никак", "Зачем?",
                 "Спроси у мамы", "Лучше не надо"]
PUNCT_WORDS = [",", "!", "?", "...", ")))", ":)", "&quot;ну&quot;", "<br>", "&amp;", "👍"]


def _vocabulary(rng: np.random.Generator, size: int = 30_000) -> tuple[np.ndarray, np.ndarray]:
    """Cyrillic pseudo-words from syllables, function words first, with Zipf weights."""
    cons, vows = list("бвгджзклмнпрстфхцчшщ"), list("аеёиоуыэюя")
    syll = np.array([c + v for c in cons for v in vows] + vows)
    n_syll = rng.integers(1, 5, size)
    parts = syll[rng.integers(0, len(syll), (size, 4))]
    words = ["".join(parts[i, : n_syll[i]]) for i in range(size)]
    vocab = np.array(COMMON + PUNCT_WORDS + words, dtype=object)
    weights = 1.0 / (np.arange(len(vocab)) + 2.7)
    return vocab, weights / weights.sum()


def _texts(rng: np.random.Generator, vocab: pl.Series, cdf: np.ndarray, lengths: np.ndarray) -> pl.Series:
    """One string per length: that many Zipf-drawn words joined by spaces (no Python loop)."""
    ids = np.searchsorted(cdf, rng.random(int(lengths.sum())))
    words = vocab.gather(ids).to_arrow()
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pl.Series(pa.LargeListArray.from_arrays(offsets.cast(pa.int64()), words)).list.join(" ")


def _pick(shares: np.ndarray, cases: list[tuple[float, pl.Series | str]], default: pl.Series) -> pl.Series:
    """Per row, the first case whose cumulative share exceeds the row's uniform draw, else `default`."""
    expr, bound = pl, 0.0
    for share, value in cases:
        bound += share
        expr = expr.when(pl.lit(pl.Series(shares < bound))).then(pl.lit(value))
    return pl.select(expr.otherwise(pl.lit(default))).to_series()


def _chunk_lines(rng: np.random.Generator, vocab: pl.Series, cdf: np.ndarray, n: int,
                 previous: pl.Series | None, shape: Shape) -> tuple[pl.Series, pl.Series, pl.Series]:
    """JSON lines for `n` questions, the same without the malformed ones, and the questions."""
    questions = _texts(rng, vocab, cdf, np.clip(rng.lognormal(1.9, 0.5, n).astype(int), 1, 30))
    questions = questions.str.head(1).str.to_uppercase() + questions.str.slice(1) + "?"
    if previous is not None:  # re-asks of the previous chunk's questions: exact, and case/punctuation only
        old = previous.gather(rng.integers(0, len(previous), n))
        near = old.str.to_lowercase().str.replace_all("?", "", literal=True)
        questions = _pick(rng.random(n), [(shape.reask_exact, old), (shape.reask_near, near)], questions)
    if shape.answers:
        n_ans = rng.integers(shape.answers[0], shape.answers[1] + 1, n)
    else:
        n_ans = np.clip(rng.poisson(3.0, n) + 1, 1, 25)
    total = int(n_ans.sum())
    if shape.words:
        a_len = rng.integers(shape.words[0], shape.words[1] + 1, total)
    else:
        a_len = np.clip(rng.lognormal(1.8, 0.8, total).astype(int), 1, 40)
    very_long = rng.random(total) < 0.01
    a_len[very_long] = rng.integers(60, 600, int(very_long.sum()))
    answers = _texts(rng, vocab, cdf, a_len)
    links = "https://otvet.mail.ru/question/" + pl.Series(rng.integers(1, 10**9, total)).cast(pl.String)
    answers = _pick(rng.random(total), [
        (0.02, questions.gather(np.repeat(np.arange(n), n_ans))),  # the answer repeats its question
        (0.05, pl.Series(STOCK_ANSWERS).gather(rng.integers(0, len(STOCK_ANSWERS), total))),  # "Не знаю"
        (0.01, links), (0.01, ""), (0.03, "&quot;" + answers + "&quot;<br>"),  # as scraped
    ], answers)
    cat_p = 1.0 / (np.arange(len(CATEGORIES)) + 1.5)
    cats = pl.Series(CATEGORIES).gather(rng.choice(len(CATEGORIES), n, p=cat_p / cat_p.sum()))
    offsets = pa.array(np.concatenate([[0], np.cumsum(n_ans)]).astype(np.int64))
    responses = pl.Series(pa.LargeListArray.from_arrays(offsets, answers.to_arrow()))
    odd = rng.random(n)
    frame = pl.DataFrame({"question": questions, "category": cats, "responses": responses}).with_columns(
        category=pl.when(pl.lit(pl.Series(odd < 0.005))).then(None).otherwise("category"),
        responses=pl.when(pl.lit(pl.Series((odd > 0.995) & (odd < 0.996)))).then(None).otherwise("responses"),
    )
    lines = frame.select(pl.struct(pl.all()).struct.json_encode()).to_series()
    broken = rng.random(n) < 0.0005  # cut mid-line, as a crashed scraper leaves them
    dirty = _pick(np.where(broken, 0.0, 1.0), [(0.5, lines.str.slice(0, lines.str.len_chars() // 2))], lines)
    return dirty, lines.filter(~pl.Series(broken)), questions


def generate_dump(folder: Path, questions: int, seed: int, shape: str = "qa") -> tuple[Path, Path]:
    """The dump and its copy without malformed lines, cached by size, shape, seed and generator
    version."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"qa_{questions}_s{seed}_v{GEN_VERSION}" + ("" if shape == "qa" else f"_{shape}")
    dirty, clean = folder / f"{stem}" / "qa_data.jsonl.zip", folder / f"{stem}" / "qa_clean.jsonl.zip"
    if dirty.exists() and clean.exists():
        return dirty, clean
    dirty.parent.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab, weights = _vocabulary(rng)
    vocab_s, cdf = pl.Series(vocab.tolist()), np.cumsum(weights)
    start = time.perf_counter()
    previous = None
    tmp_d, tmp_c = dirty.with_suffix(".tmp"), clean.with_suffix(".tmp")
    with zipfile.ZipFile(tmp_d, "w", zipfile.ZIP_DEFLATED) as zd, zipfile.ZipFile(tmp_c, "w", zipfile.ZIP_DEFLATED) as zc, \
            zd.open("qa_data.jsonl", "w", force_zip64=True) as fd, zc.open("qa_data.jsonl", "w", force_zip64=True) as fc:
        for done in range(0, questions, GEN_CHUNK):
            d, c, previous = _chunk_lines(rng, vocab_s, cdf, min(GEN_CHUNK, questions - done), previous,
                                              SHAPES[shape])
            fd.write((d.str.join("\n").item() + "\n").encode("utf-8"))
            fc.write((c.str.join("\n").item() + "\n").encode("utf-8"))
            print(f"generated {done + len(d):,} questions in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    tmp_d.rename(dirty)
    tmp_c.rename(clean)
    return dirty, clean
