"""The keys dedup compares texts by: the near key (NEAR_RULES one by one, or fast_near_key in fewer
passes), lower_yo_series (the match key's case pass over a column), the first phrase of a question,
and the ends of a text (its first and last letter or digit), which equal near keys share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import polars as pl

from chitchat.data.normalize import lower_yo, spaced_words

# A sentence end (. ! ? …, a run of them) followed by a space or the end, after at least one
# word character: "3.5 литра" and a leading "..." do not end a first phrase.
_FIRST_PHRASE = r"(?s)^(.*?\w.*?[.!?…]+)(?:\s|$)"
_PUNCT = r"(?:[^\w\s]|_)+"  # punctuation, symbols and emoji (\w keeps letters and digits)


# Characters a run can be made of without a scan: Russian and Latin letters and the punctuation of
# chat text. Rows with any other non-digit, non-space character are scanned for theirs.
_ALPHABET = ("абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЁЖЗИЙКЛМНОПРСТУФХЦЧШЩЪЫЬЭЮЯ"
             "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ" ".,!?)(:;-\"'…«»—–*+=/%&#@$^~<>[]{}|\\`")
_OTHER_RS = "[^" + "".join(f"\\x{{{ord(c):X}}}" for c in _ALPHABET) + r"\d\s]"


def _run_pattern(texts: pl.Series) -> str:
    """An alternation of `c{3,}` over every character that occurs in `texts` (digits and whitespace
    excepted): the alphabet above plus whatever the rows outside it hold."""
    chars = set(_ALPHABET)
    other = lazy_select(texts, lambda t: t.str.contains(_OTHER_RS))
    if other.any():
        chars.update(texts.filter(other).str.split("").explode().drop_nulls().unique().to_list())
    chars = pl.Series(sorted(chars), dtype=pl.String)
    chars = chars.filter(~chars.str.contains(r"^[\d\s]$"))
    return "|".join(f"\\x{{{ord(c):X}}}{{3,}}" for c in chars)


def _collapse_repeats(texts: pl.Series) -> pl.Series:
    """Runs of 3+ identical characters (digits and whitespace excepted) become one character.

    Polars regex has no backreferences, so the runs are found with an alternation over the
    characters present (а{3,}|б{3,}|...); only the rows holding a run are touched, each replaced,
    longest run first, by its first character. Each text's result depends on that text only.
    """
    if texts.is_empty():
        return texts
    pattern = _run_pattern(texts)
    has_run = lazy_select(texts, lambda t: t.str.contains(pattern))
    if not has_run.any():
        return texts
    rows = has_run.arg_true()
    sub = texts.gather(rows)
    runs = sub.str.extract_all(pattern).explode().drop_nulls().unique().to_frame("run")
    runs = runs.sort(pl.col("run").str.len_chars(), "run", descending=[True, False])["run"]
    fixed = sub.str.replace_many(runs.to_list(), runs.str.slice(0, 1).to_list(), leftmost=True)
    return texts.scatter(rows, fixed)


def _drop_punctuation(texts: pl.Series) -> pl.Series:
    """Punctuation, symbols and emoji go with the spaces around them; inside a text they leave one
    space, so "да,нет" and "да, нет" both read "да нет" and "Привет!!!" reads "Привет"."""
    return (texts.str.replace_all(rf"^\s*{_PUNCT}\s*", "").str.replace_all(rf"\s*{_PUNCT}\s*$", "")
            .str.replace_all(rf"\s*{_PUNCT}\s*", " "))


# name -> transformation of a text column; applied, and counted, in this order. Each works on the
# output of the one before, so every rule can only merge more pairs, never split them again.
NEAR_RULES: dict[str, Callable[[pl.Series], pl.Series]] = {
    "casefold": lambda s: s.str.to_lowercase(),
    "yo_to_e": lambda s: s.str.replace_many(["ё", "Ё"], ["е", "Е"]),
    "punctuation": _drop_punctuation,
    "repeats": _collapse_repeats,
    "whitespace": lambda s: s.str.replace_all(r"\s+", ""),
}


@dataclass(frozen=True)
class NearKeyConfig:
    """Which rules build the near-duplicate key (see NEAR_RULES for the order)."""

    casefold: bool = True  # «Привет» = «привет»
    yo_to_e: bool = True  # «ёлка» = «елка»
    punctuation: bool = True  # drop punctuation, symbols, emoji: «Привет!!!» = «Привет»
    repeats: bool = True  # runs of 3+ identical characters (not digits) -> one: «даааа» = «да»
    whitespace: bool = True  # ignore spaces: «не знаю» = «незнаю»

    def enabled(self) -> list[str]:
        return [name for name in NEAR_RULES if getattr(self, name)]


def near_key(texts: pl.Series, cfg: NearKeyConfig) -> pl.Series:
    """The near-duplicate key of each text: the enabled rules applied in NEAR_RULES order."""
    for name in cfg.enabled():
        texts = NEAR_RULES[name](texts)
    return texts


# Capitals of Russian and English text and their lower case, ё read as е (Ё too): one Aho-Corasick
# pass maps them, several times faster than full Unicode lower-casing. Texts with any other character
# that lower-casing changes (Σ and its final form, İ, accented capitals...) take the full way, and so
# do texts with a character polars' regex tables do not know (Cn): lower-casing's tables are newer
# and change some of them (U+A7D2, U+16EA0...; a test checks every code point).
_CAPITALS = [chr(c) for c in range(ord("А"), ord("Я") + 1)] + ["Ё"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
_YO_LOWER = {c: c.lower().replace("ё", "е") for c in _CAPITALS} | {"ё": "е"}
_OTHER_CASED_RS = r"[[\p{Changes_When_Lowercased}\p{Cn}]--[А-ЯЁA-Z]]"


def lower_yo_series(texts: pl.Series) -> pl.Series:
    """lower_yo over a column, equal on every text (a test checks every code point), in a lazy
    frame (on every core)."""
    frame = texts.to_frame("t").lazy().select(
        lower=pl.col("t").str.replace_many(list(_YO_LOWER), list(_YO_LOWER.values())),
        other=pl.col("t").str.contains(_OTHER_CASED_RS)).collect()
    out = frame["lower"]
    if frame["other"].any():
        rows = frame["other"].arg_true()
        full = texts.gather(rows).to_frame("t").select(lower_yo(pl.col("t"))).to_series()
        out = out.scatter(rows, full)
    return out.alias(texts.name)


KEY_CHUNK = 1_000_000  # texts keyed at a time: bounds the memory of the intermediate columns
CASE_RULES = ("casefold", "yo_to_e")  # the rules that come first and change letters, not the text's shape


def lazy_select(texts: pl.Series, expr_of: Callable[[pl.Expr], pl.Expr]) -> pl.Series:
    """expr_of(column) over `texts`, in a lazy frame (where polars runs some string kernels, the
    lower-casing among them, on every core)."""
    return texts.to_frame("t").lazy().select(expr_of(pl.col("t"))).collect().to_series()


def fast_near_key(texts: pl.Series, cfg: NearKeyConfig, spaced: bool = False) -> pl.Series:
    """near_key, equal on every input, in fewer passes: with punctuation and whitespace both on,
    every run of punctuation and spaces becomes one space (spaced_words; run collapsing cannot
    cross it, as before) and the spaces go at the end: one regex pass instead of four. Long columns
    go a chunk at a time (each text's key depends on that text only). With `spaced`, the texts
    have been through the case rules (all on) and spaced_words already: dedup shares those passes
    with the match key."""
    if len(texts) > KEY_CHUNK:
        return pl.concat([fast_near_key(texts.slice(i, KEY_CHUNK), cfg, spaced) for i in range(0, len(texts), KEY_CHUNK)])
    if not (cfg.punctuation and cfg.whitespace):
        if spaced:
            raise ValueError("spaced texts need the punctuation and whitespace rules on")
        return near_key(texts, cfg)
    if not spaced:
        texts = lazy_select(texts, lambda t: spaced_words(_case_expr(t, cfg)))
    if cfg.repeats:
        texts = _collapse_repeats(texts)
    return lazy_select(texts, lambda t: t.str.replace_all(" ", "", literal=True))


def _case_expr(expr: pl.Expr, cfg: NearKeyConfig) -> pl.Expr:
    """The casefold and yo_to_e rules as one expression; the rules' own functions, which read the
    same on an expression as on a column."""
    for name in CASE_RULES:
        if getattr(cfg, name):
            expr = NEAR_RULES[name](expr)
    return expr


# Characters that polars' regex does not count as letters but whose lower case it does: two capitals
# newer than its \w tables (U+A7D2, U+A7D4). With casefold on, ends must not skip them (the tests
# check this list); with it off they are punctuation like any other non-letter.
LEAD_EXTRA = "\ua7d2\ua7d4"
_EXTRA_RS = "".join(f"\\x{{{ord(c):X}}}" for c in LEAD_EXTRA)
_ENDS = {  # casefold -> (first letter or digit, last one)
    False: (r"([^\W_])", r"([^\W_])[\W_]*$"),
    True: (rf"([^\W_]|[{_EXTRA_RS}])", rf"([^\W_]|[{_EXTRA_RS}])[[\W_]--[{_EXTRA_RS}]]*$"),
}


def ends(texts: pl.Series, cfg: NearKeyConfig) -> pl.DataFrame:
    """The first and the last letter or digit of each text after the enabled case rules (`lead`,
    `tail`; null when it has none).

    Texts with equal near keys have equal ends, whatever rules are on: the key's letters and digits
    are the case-ruled text's, in order, with runs cut to their first. So two pairs whose answers
    end differently can never merge, and most answers need no near key at all. The case rules go on
    the one character: lower-casing turns no other character into a letter or digit (LEAD_EXTRA
    excepted, ends under casefold), a letter into text that starts and ends with one (the tests
    check every code point), and its only context rule, the final sigma (σ or ς by what follows),
    is undone by reading ς as σ in tails.
    """
    rules = _end_rules(cfg)
    chars = _end_chars(pl.col("t"), cfg)
    return texts.to_frame("t").lazy().select(**{name: rules[name](e) for name, e in chars.items()}).collect()


def _end_chars(expr: pl.Expr, cfg: NearKeyConfig) -> dict[str, pl.Expr]:
    """The first and the last letter or digit of a text, as they stand (one character each, or null)."""
    lead, tail = _ENDS[cfg.casefold]
    return {"lead": expr.str.extract(lead, 1), "tail": expr.str.extract(tail, 1)}


def _end_rules(cfg: NearKeyConfig) -> dict[str, Callable[[pl.Expr], pl.Expr]]:
    """What the enabled case rules make of an end character: the first character of the lead's
    lower case, the last of the tail's (with ς read as σ)."""
    def tail(expr: pl.Expr) -> pl.Expr:
        last = _case_expr(expr, cfg).str.slice(-1)
        return last.str.replace("ς", "σ", literal=True) if cfg.casefold else last

    return {"lead": lambda expr: _case_expr(expr, cfg).str.slice(0, 1), "tail": tail}


def ends_hash(texts: pl.Series, cfg: NearKeyConfig) -> pl.Series:
    """A 64-bit hash of each text's ends: equal ends hash alike (unequal ones rarely do, which only
    costs a near key that was not needed). The case rules go on the distinct end characters only:
    a few dozen in Russian chat, against millions of texts."""
    chars = texts.to_frame("t").lazy().select(**_end_chars(pl.col("t"), cfg)).collect()
    hashes = {}
    for name, rule in _end_rules(cfg).items():
        distinct = lazy_select(chars[name], pl.Expr.unique)
        ruled = distinct.to_frame("c").select(rule(pl.col("c")).hash()).to_series()
        hashes[name] = pl.col(name).replace_strict(distinct, ruled)
    return chars.lazy().select(pl.struct(**hashes).hash()).collect().to_series()


def first_phrase(expr: pl.Expr) -> pl.Expr:
    """The text up to its first sentence end (. ! ? …), or the whole text when it has none."""
    return expr.str.extract(_FIRST_PHRASE, 1).fill_null(expr)
