"""Deduplication rules over a pairs table, each switchable and counted.

Order matters and is fixed: exact duplicates first, then near duplicates (so the caps count
distinct pairs), then answers that merely repeat their question, then the per-question cap, then
the per-first-phrase cap. Every step keeps the first row of a group in input order, so the result
depends only on the input and the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import polars as pl

from chitchat.core.io import config_from
from chitchat.data.normalize import lower_yo, match_key, spaced_words

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
    other = _lazy(texts, lambda t: t.str.contains(_OTHER_RS))
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
    has_run = _lazy(texts, lambda t: t.str.contains(pattern))
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


@dataclass(frozen=True)
class DedupConfig:
    """Which dedup rules run, and the caps (0 = no cap)."""

    exact: bool = True  # drop repeated (question, answer) pairs
    near: NearKeyConfig = field(default_factory=NearKeyConfig)  # drop pairs equal by the near key
    answer_equals_question: bool = True  # drop pairs whose answer is the question again
    max_per_question: int = 0  # keep at most this many answers per identical question; 0 = all
    max_per_first_phrase: int = 0  # keep at most this many questions per first phrase; 0 = all

    def __post_init__(self):
        for name in ("max_per_question", "max_per_first_phrase"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"dedup.{name} must be an integer >= 0, got {value!r}")


def dedup_config(params: dict) -> DedupConfig:
    """DedupConfig from the `dedup` section; unknown keys, also under `near`, are a ValueError."""
    near = params.get("near", {})
    if not isinstance(near, dict):
        raise ValueError(f"dedup.near must be a mapping of rule: true/false, got {near!r}")
    for name, value in near.items():
        if name in NEAR_RULES and not isinstance(value, bool):
            raise ValueError(f"dedup.near.{name} must be true or false, got {value!r}")
    near_cfg = config_from(NearKeyConfig, near, "dedup.near")
    rest = {k: v for k, v in params.items() if k != "near"}
    return config_from(DedupConfig, rest, "dedup", near=near_cfg)


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


def _lazy(texts: pl.Series, expr_of: Callable[[pl.Expr], pl.Expr]) -> pl.Series:
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
        texts = _lazy(texts, lambda t: spaced_words(_case_expr(t, cfg)))
    if cfg.repeats:
        texts = _collapse_repeats(texts)
    return _lazy(texts, lambda t: t.str.replace_all(" ", "", literal=True))


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


def _ends_hash(texts: pl.Series, cfg: NearKeyConfig) -> pl.Series:
    """A 64-bit hash of each text's ends: equal ends hash alike (unequal ones rarely do, which only
    costs a near key that was not needed). The case rules go on the distinct end characters only:
    a few dozen in Russian chat, against millions of texts."""
    chars = texts.to_frame("t").lazy().select(**_end_chars(pl.col("t"), cfg)).collect()
    hashes = {}
    for name, rule in _end_rules(cfg).items():
        distinct = _lazy(chars[name], pl.Expr.unique)
        ruled = distinct.to_frame("c").select(rule(pl.col("c")).hash()).to_series()
        hashes[name] = pl.col(name).replace_strict(distinct, ruled)
    return chars.lazy().select(pl.struct(**hashes).hash()).collect().to_series()


def first_phrase(expr: pl.Expr) -> pl.Expr:
    """The text up to its first sentence end (. ! ? …), or the whole text when it has none."""
    return expr.str.extract(_FIRST_PHRASE, 1).fill_null(expr)


@dataclass
class DedupReport:
    """Pairs in and out, the number each rule removed and how many first phrases hit the cap."""

    pairs_in: int
    pairs_out: int
    removed: dict[str, int]
    first_phrases_capped: int = 0

    def as_dict(self) -> dict:
        return {"pairs_in": self.pairs_in, "pairs_out": self.pairs_out, "removed": self.removed,
                "removed_total": self.pairs_in - self.pairs_out,
                "first_phrases_capped": self.first_phrases_capped}


def question_runs(df: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """(first, index): rows that open a run of one question record (same question text and qid),
    and each row's run number. Answers of one record are adjacent, so everything computed from the
    question is computed once per run (a quarter of the rows in the dump) and gathered back."""
    cols = ["question", "qid"] if "qid" in df.columns else ["question"]
    first = df.lazy().select(pl.any_horizontal(pl.col(c).ne_missing(pl.col(c).shift(1)) for c in cols)
                             .fill_null(True).alias("first")).collect().to_series()
    return first, (first.cast(pl.UInt32).cum_sum() - 1)


def _codes(keys: pl.Series) -> pl.Series:
    """An integer per key, equal for equal keys (the position of the key's first occurrence):
    grouping and comparing these is much cheaper, in time and memory, than the strings."""
    return keys.to_frame("k").with_row_index("i").select(pl.col("i").min().over("k")).to_series()


def _more_than(df: pl.DataFrame, key: pl.Expr, n: int) -> pl.Series:
    """Rows whose `key` value occurs more than `n` times in `df`. A window count in a lazy frame,
    where polars groups on every core: about three times faster than is_duplicated here."""
    return df.lazy().select(pl.len().over(key) > n).collect().to_series()


def _distinct(df: pl.DataFrame, code: str, text: str) -> tuple[pl.Series, pl.Series]:
    """(first, shared) over the pairs (code, text): the first row of each pair value, and the rows
    whose value occurs more than once. The text is grouped by its 64-bit hash; the few rows whose
    hash is shared are compared by the text itself, so a collision never merges different texts."""
    hashed = _more_than(df, pl.col(text).hash() ^ pl.col(code).hash(), 1)
    rows = hashed.arg_true()
    pair = pl.struct(code, text)
    sub = df.select(pl.col(code).gather(rows), pl.col(text).gather(rows)).select(
        pair.is_first_distinct().alias("first"), pair.is_duplicated().alias("shared"))
    return (~hashed).scatter(rows, sub["first"]), hashed.scatter(rows, sub["shared"])


def _near_dedup(sub: pl.DataFrame, texts: pl.DataFrame, cfg: DedupConfig, removed: dict[str, int]) -> pl.Series:
    """Of the rows `sub` (q_near, a_near, _row into `texts`), those to keep: the first pair of each
    (question key, answer key); count the extra pairs each rule merges on top of the rules before
    it (and identical pairs, when `exact` is off).

    Only pairs whose full key is shared can merge under any prefix of the rules, so the per-rule
    counts are taken on those few pairs alone, with the reference rules one at a time.
    """
    keep, shared = _distinct(sub, "q_near", "a_near")
    shared = texts.gather(sub["_row"].filter(shared))
    if not cfg.exact:
        removed["near_identical"] = shared.height - shared.n_unique()
    distinct = shared.n_unique()
    for name in cfg.near.enabled():
        shared = shared.select(NEAR_RULES[name](s) for s in shared.iter_columns())
        removed[f"near_{name}"] = distinct - shared.n_unique()
        distinct -= removed[f"near_{name}"]
    return keep


def _match_implies_near(near: NearKeyConfig) -> bool:
    """Whether equal match keys mean equal near keys (and so equal ends): when the near key
    folds case and ё and drops punctuation and spaces (repeats only merges more)."""
    return near.casefold and near.yo_to_e and near.punctuation and near.whitespace


def _over_cap(rows: pl.DataFrame, group: str, rank: pl.Expr, cap: int) -> pl.Series:
    """Rows whose `rank` within their `group` exceeds `cap`. Only groups of more than `cap` rows
    can have one, and those are few: the ranks are taken on them alone."""
    big = _more_than(rows, pl.col(group), cap)
    over = pl.repeat(False, rows.height, dtype=pl.Boolean, eager=True)
    if big.any():
        sub = rows.filter(big)
        over = over.scatter(big.arg_true(), sub.lazy().select(rank.over(group) > cap).collect().to_series())
    return over


KEY_COLUMNS = ("qid", "question", "answer")  # all the rules read: the rest of a row rides along
# The column dedup adds: pairs whose questions share the match key (case, ё, punctuation; the key
# split groups by) share it; its value is the row, in dedup's input, of the first such pair.
GROUP = "group"


def kept_rows(df: pl.DataFrame, cfg: DedupConfig) -> tuple[pl.DataFrame, DedupReport]:
    """Apply the enabled rules in order to the key columns of `df` (the others are not read);
    return the kept rows, ascending (`_row`, and their question GROUP), and the report.

    The per-first-phrase cap needs a `qid` column (one id per question record: a QA question with
    all its answers, or one dialogue turn pair).
    """
    if cfg.max_per_first_phrase > 0 and "qid" not in df.columns:
        raise ValueError("dedup.max_per_first_phrase counts questions by qid; the table has no qid")
    texts = df.select("question", "answer")  # by row number; the rules below carry integers
    pairs_in, near = df.height, cfg.near
    removed: dict[str, int] = {}
    capped = 0

    # Everything about the question, once per question record, as integer codes per row; the texts
    # stay per run (`run` indexes them) for the few rows that need them.
    first, run = question_runs(df)
    questions = df["question"].filter(first)
    # the match key's case and spacing passes, shared with the near key when it has those rules
    spaced = _lazy(lower_yo_series(questions), spaced_words)
    q_match = _lazy(spaced, lambda t: match_key(t, spaced=True))
    rows = df.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), *(["qid"] if "qid" in df.columns else []))
    starts = first.arg_true()  # the row of each run's first pair
    rows = rows.with_columns(run.alias("run"), _codes(questions).gather(run).alias("q_text"),
                             starts.gather(_codes(q_match)).gather(run).alias("q_match"))
    q_near = questions  # near_key with no rule on
    if near.enabled():
        q_near = (fast_near_key(spaced, near, spaced=True) if _match_implies_near(near)
                  else fast_near_key(questions, near))
        rows = rows.with_columns(_codes(q_near).gather(run).alias("q_near"))
    if cfg.max_per_first_phrase > 0:  # most first phrases are the whole question: its key is known
        # a phrase shorter than its question ends in a sentence end that a space follows
        rows_in = _lazy(questions, lambda t: t.str.contains(r"[.!?…]\s")).arg_true()
        asked = questions.gather(rows_in)
        phrases = _lazy(asked, first_phrase)
        shorter = phrases != asked
        phrase_keys = q_near.clone().scatter(rows_in.filter(shorter), fast_near_key(phrases.filter(shorter), near))
        rows = rows.with_columns(_codes(phrase_keys).gather(run).alias("phrase"))
    del spaced, first, starts

    if cfg.exact:
        keep = _distinct(rows.select("q_text").with_columns(texts["answer"]), "q_text", "answer")[0]
        removed["exact_duplicate"] = rows.height - int(keep.sum())
        rows = rows.filter(keep)
    match_implies_near = cfg.answer_equals_question and _match_implies_near(near)
    if near.enabled():
        # Near keys only for answers that could merge or repeat their question: those whose ends
        # another answer to the same question key shares, or the question's own ends.
        rows = rows.with_columns(_ends_hash(texts["answer"], near).gather(rows["_row"]).alias("a_ends"))
        need = _more_than(rows, pl.col("a_ends") ^ pl.col("q_near").hash(), 1)
        if match_implies_near:
            need |= rows["a_ends"] == _ends_hash(questions, near).gather(rows["run"])
        sub = rows.filter(need).select("_row", "run", "q_near")
        sub = sub.with_columns(fast_near_key(texts["answer"].gather(sub["_row"]), near).alias("a_near"))
        keep_sub = _near_dedup(sub, texts, cfg, removed)
        rows = rows.filter((~need).scatter(need.arg_true(), keep_sub)).drop("a_ends")
        keyed = sub.filter(keep_sub)  # the kept rows that have a near key
    if cfg.answer_equals_question:
        # Equal match keys mean equal near keys: only rows whose near keys are equal need the match
        # key of their answer (rows without a near key end unlike their question).
        if match_implies_near:
            check = keyed.filter(keyed["a_near"] == q_near.gather(keyed["run"]))
        else:
            check = rows
        same = _lazy(texts["answer"].gather(check["_row"]), match_key) == q_match.gather(check["run"])
        drop = rows["_row"].is_in(check["_row"].filter(same).implode())
        removed["answer_equals_question"] = int(drop.sum())
        rows = rows.filter(~drop)
    if cfg.max_per_question > 0:
        over = _over_cap(rows, "q_match", pl.int_range(1, pl.len() + 1), cfg.max_per_question)
        removed["over_max_per_question"] = int(over.sum())
        rows = rows.filter(~over)
    if cfg.max_per_first_phrase > 0:
        over = _over_cap(rows, "phrase", pl.col("qid").rank("dense"), cfg.max_per_first_phrase)
        capped = rows["phrase"].filter(over).n_unique()
        removed["over_max_per_first_phrase"] = int(over.sum())
        rows = rows.filter(~over)

    kept = rows.select("_row", pl.col("q_match").alias(GROUP))
    return kept, DedupReport(pairs_in, rows.height, removed, capped)


def kept_with_group(table: pl.DataFrame, kept: pl.DataFrame) -> pl.LazyFrame:
    """The rows of `table` that kept_rows kept (`kept`: its result on this table), in order, with
    their question GROUP as the last column: a lazy frame whose filter streams into a sink, so the
    kept rows are never copied whole."""
    group = pl.repeat(None, table.height, dtype=kept[GROUP].dtype, eager=True).scatter(kept["_row"], kept[GROUP])
    return table.drop(GROUP, strict=False).with_columns(group.alias(GROUP)).lazy().filter(pl.col(GROUP).is_not_null())


def dedup_pairs(df: pl.DataFrame, cfg: DedupConfig) -> tuple[pl.DataFrame, DedupReport]:
    """The rows of `df` that kept_rows keeps, in their original order, and the report."""
    kept, report = kept_rows(df, cfg)
    return df.gather(kept["_row"]), report
