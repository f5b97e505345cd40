"""Near-duplicate key rules and the first-phrase cap: each rule switchable, every removal counted."""

import time

import polars as pl
import pytest
import yaml

from chitchat.data.dedup import DedupConfig, dedup_config, dedup_pairs
from chitchat.data.dedup_keys import NEAR_RULES, NearKeyConfig, first_phrase, near_key
from conftest import ANEKDOT, REPO

NO_NEAR = NearKeyConfig(**dict.fromkeys(NEAR_RULES, False))
ONLY = {name: NearKeyConfig(**{r: r == name for r in NEAR_RULES}) for name in NEAR_RULES}


def table(rows, qids=None):
    """(question, answer) rows as a pairs table; each row its own qid unless given."""
    qids = list(range(len(rows))) if qids is None else qids
    return pl.DataFrame(
        {"qid": qids, "question": [q for q, _ in rows], "category": ["Юмор"] * len(rows),
         "answer": [a for _, a in rows]},
        schema={"qid": pl.UInt32, "question": pl.String, "category": pl.String, "answer": pl.String},
    )


def keys(texts, cfg=NearKeyConfig()):
    return near_key(pl.Series(texts, dtype=pl.String), cfg).to_list()


@pytest.mark.parametrize("a, b", [
    ("Привет!!!", "привет"),
    ("Как дела ?", "как дела"),
    ("Ёлка)))))", "елка"),
    ("Дааааа, конечно!!!", "да конечно"),
    ("не знаю", "Незнаю..."),
    ("100 000 рублей", "100000 рублей"),
    ("Ну и что😂😂😂", "ну и что"),
    ("да,нет", "Да, нет."),
])
def test_default_key_merges(a, b):
    assert keys([a])[0] == keys([b])[0]


@pytest.mark.parametrize("a, b", [
    ("класс", "клас"),  # doubled letters are spelling, not emphasis: only runs of 3+ collapse
    ("1000", "10"),  # digits never collapse
    ("ахаха", "аха"),  # repeated syllables are not repeated characters
    ("да", "нет"),
])
def test_default_key_keeps_apart(a, b):
    assert keys([a])[0] != keys([b])[0]


def test_key_values():
    assert keys(["Ёлка)))))", "елка)"], NearKeyConfig(punctuation=False, whitespace=False)) == ["елка)", "елка)"]
    assert keys(["Приветттт!!!", "ааааа", "", "  Ну ... да  "]) == ["привет", "а", "", "нуда"]
    assert keys(["Ура!!!!!"], ONLY["repeats"]) == ["Ура!"]
    assert keys(["Ёлка, ЁЖ"], ONLY["yo_to_e"]) == ["Елка, ЕЖ"]


@pytest.mark.parametrize("rule, a, b", [
    ("casefold", "Привет", "привет"),
    ("yo_to_e", "Ёлка ёж", "Елка еж"),
    ("punctuation", "Привет!!!", "Привет"),
    ("punctuation", "да,нет", "да - нет"),
    ("repeats", "Ну даааа", "Ну да"),
    ("repeats", "Дааааа", "Да"),
    ("whitespace", "не знаю", "незнаю"),
])
def test_each_rule_alone_merges_and_nothing_else_does(rule, a, b):
    assert keys([a, b], ONLY[rule])[0] == keys([a, b], ONLY[rule])[1]
    others = NearKeyConfig(**{r: r != rule for r in NEAR_RULES})
    assert keys([a, b], others)[0] != keys([a, b], others)[1]


@pytest.mark.parametrize("text, phrase", [
    ("Алло! Кто это?", "Алло!"),
    ("Привет!!! Как дела?", "Привет!!!"),
    ("Ну и что... А ты?", "Ну и что..."),
    ("Стоит 3.5 рубля. Дорого?", "Стоит 3.5 рубля."),
    ("...и что? Да", "...и что?"),
    ("Привет, как дела", "Привет, как дела"),
    ("Что?!Да", "Что?!Да"),
    ("Ну… ладно", "Ну…"),
])
def test_first_phrase(text, phrase):
    assert pl.select(first_phrase(pl.lit(text))).item() == phrase


BASES = [("Как дела", "Хорошо"), ("Где ёлка", "В лесу"), ("Ты кто", "Я кот"), ("Ну что", "Да ура"),
         ("Что делать", "Не знаю")]
VARIANTS = {  # each differs from its base only in what one rule folds
    "casefold": ("КАК ДЕЛА", "ХОРОШО"),
    "yo_to_e": ("Где елка", "В лесу"),
    "punctuation": ("Ты кто?!", "Я — кот."),
    "repeats": ("Ну что", "Дааааа урааа"),
    "whitespace": ("Что делать", "Незнаю"),
}


def near_table():
    return table(BASES + list(VARIANTS.values()))


def test_every_rule_on_removes_exactly_its_variant():
    out, report = dedup_pairs(near_table(), DedupConfig())
    assert out["answer"].to_list() == [a for _, a in BASES]
    assert report.removed == {"exact_duplicate": 0, **{f"near_{r}": 1 for r in NEAR_RULES},
                              "answer_equals_question": 0}


@pytest.mark.parametrize("off", list(NEAR_RULES))
def test_switching_one_rule_off_keeps_exactly_its_variant(off):
    cfg = DedupConfig(near=NearKeyConfig(**{r: r != off for r in NEAR_RULES}))
    out, report = dedup_pairs(near_table(), cfg)
    assert out["answer"].to_list() == [a for _, a in BASES] + [VARIANTS[off][1]]
    assert {k: v for k, v in report.removed.items() if k.startswith("near_")} == {
        f"near_{r}": 1 for r in NEAR_RULES if r != off}


def test_all_rules_off_keeps_every_variant_and_reports_no_near_counter():
    out, report = dedup_pairs(near_table(), DedupConfig(near=NO_NEAR))
    assert out.height == 10 and not any(k.startswith("near_") for k in report.removed)


def test_a_pair_that_needs_two_rules_counts_under_the_later_one():
    df = table([("как дела", "хорошо"), ("КАК ДЕЛА?!", "Хорошо!")])
    _, report = dedup_pairs(df, DedupConfig())
    assert report.removed["near_casefold"] == 0 and report.removed["near_punctuation"] == 1
    out, _ = dedup_pairs(df, DedupConfig(near=NearKeyConfig(punctuation=False)))
    assert out.height == 2  # casefold alone leaves "?!" apart
    _, report = dedup_pairs(table([("Ну что", "Да."), ("Ну что", "Да...")]), DedupConfig())
    assert report.removed["near_punctuation"] == 1 and report.removed["near_repeats"] == 0  # its turn is first


def test_identical_pairs_count_as_near_identical_when_exact_is_off():
    df = table([("Привет", "Здравствуй"), ("Привет", "Здравствуй"), ("привет", "здравствуй")])
    out, report = dedup_pairs(df, DedupConfig(exact=False))
    assert out.height == 1
    assert report.removed["near_identical"] == 1 and report.removed["near_casefold"] == 1
    _, report = dedup_pairs(df, DedupConfig(exact=True))
    assert "near_identical" not in report.removed and report.removed["exact_duplicate"] == 1


def dialogue_table():
    rows = [("Алло!", "Да?"), ("алло...", "Кто это?"), ("Алло! Кто это?", "Я."), ("Привет, как дела", "Ок"),
            ("АЛЛО!!! Слышишь?", "Нет."), ("Привет!", "Привет!!"), ("Алло", "Слушаю"), ("Привет.", "Здорово")]
    return table(rows)


def test_cap_keeps_exactly_the_first_n_per_first_phrase():
    out, report = dedup_pairs(dialogue_table(), DedupConfig(answer_equals_question=False, max_per_first_phrase=3))
    assert out["answer"].to_list() == ["Да?", "Кто это?", "Я.", "Ок", "Привет!!", "Здорово"]
    assert report.removed["over_max_per_first_phrase"] == 2 and report.first_phrases_capped == 1
    assert report.pairs_in - report.pairs_out == sum(report.removed.values())


def test_cap_follows_qid_not_row_order_and_keeps_row_order():
    df = dialogue_table().reverse()
    out, _ = dedup_pairs(df, DedupConfig(answer_equals_question=False, max_per_first_phrase=1))
    assert out["qid"].to_list() == [5, 3, 0]  # the first «привет» and «алло» (qid 5, 0) survive


def test_cap_counts_questions_not_answers():
    rows = [("Помогите! Что делать?", f"ответ {i}") for i in range(4)] + [("Помогите! Где я?", "дома")]
    out, report = dedup_pairs(table(rows, qids=[0, 0, 0, 0, 1]), DedupConfig(max_per_first_phrase=1))
    assert out["answer"].to_list() == ["ответ 0", "ответ 1", "ответ 2", "ответ 3"]
    assert report.removed["over_max_per_first_phrase"] == 1


def test_cap_zero_is_off_and_first_phrase_uses_the_near_key():
    _, report = dedup_pairs(dialogue_table(), DedupConfig(max_per_first_phrase=0))
    assert "over_max_per_first_phrase" not in report.removed
    out, _ = dedup_pairs(dialogue_table(), DedupConfig(near=NO_NEAR, answer_equals_question=False,
                                                      max_per_first_phrase=1))
    assert out.height == 7  # without the key rules only «Алло!» (qid 0) and «Алло! Кто это?» (2) match


def test_cap_needs_qid():
    with pytest.raises(ValueError, match="qid"):
        dedup_pairs(dialogue_table().drop("qid"), DedupConfig(max_per_first_phrase=1))


def test_counts_add_up_and_result_is_deterministic():
    df = pl.concat([near_table(), dialogue_table(), near_table()]).drop("qid").with_row_index("qid")
    cfg = DedupConfig(max_per_question=1, max_per_first_phrase=2)
    out, report = dedup_pairs(df, cfg)
    again, _ = dedup_pairs(df, cfg)
    assert out.equals(again)
    assert report.pairs_in == df.height and report.pairs_out == out.height
    assert report.pairs_in - report.pairs_out == sum(report.removed.values()) > 0
    assert report.as_dict()["removed_total"] == sum(report.removed.values())


def test_empty_table():
    out, report = dedup_pairs(table([]), DedupConfig(max_per_first_phrase=2))
    assert out.height == 0 and sum(report.removed.values()) == 0


def test_params_yaml_lists_every_rule():
    section = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["dedup"]
    assert set(section["near"]) == set(NEAR_RULES)
    cfg = dedup_config(section)
    assert cfg.near.enabled() == [r for r in NEAR_RULES if section["near"][r]]
    assert cfg.max_per_first_phrase == section["max_per_first_phrase"]


@pytest.mark.parametrize("params, message", [
    ({"near": {"casfold": True}}, "unknown dedup.near params: casfold"),
    ({"near": True}, "dedup.near must be a mapping"),
    ({"near": {"repeats": "yes"}}, "dedup.near.repeats must be true or false"),
    ({"max_per_first_phrse": 3}, "unknown dedup params: max_per_first_phrse"),
    ({"max_per_first_phrase": -1}, "max_per_first_phrase must be an integer >= 0"),
])
def test_bad_dedup_params(params, message):
    with pytest.raises(ValueError, match=message):
        dedup_config(params)


def test_missing_near_section_means_every_rule_on():
    assert dedup_config({"exact": False}).near == NearKeyConfig()


def test_the_shared_dialogues():
    from chitchat.data.sources import InputSpec, read_inputs

    df, _ = read_inputs([InputSpec(str(ANEKDOT))])
    start = time.perf_counter()
    out, report = dedup_pairs(df, DedupConfig(max_per_first_phrase=50))
    seconds = time.perf_counter() - start
    removed = report.removed
    assert report.pairs_in - report.pairs_out == sum(removed.values())
    assert all(removed[f"near_{r}"] > 0 for r in NEAR_RULES)  # real data has every kind
    assert removed["near_punctuation"] > removed["near_casefold"]  # the commonest variation
    # no two kept pairs share a key; no first phrase opens more than 50 kept questions
    kept_keys = pl.DataFrame([near_key(out["question"], NearKeyConfig()), near_key(out["answer"], NearKeyConfig())])
    assert kept_keys.n_unique() == out.height
    phrases = near_key(out.select(first_phrase(pl.col("question")))["question"], NearKeyConfig())
    per_phrase = out.with_columns(phrases.alias("p")).group_by("p").agg(pl.col("qid").n_unique())
    assert per_phrase["qid"].max() == 50
    assert per_phrase.filter(pl.col("p") == "алло")["qid"].item() == 50  # opens ~300 exchanges
    assert 0 < report.first_phrases_capped <= per_phrase.filter(pl.col("qid") == 50).height
    assert seconds < 30  # 165k pairs; a second or two here


def fuzz_texts(n=4000, seed=0):
    """Short random texts of the characters the rules treat differently (case, ё, punctuation,
    emoji, digits, tabs and newlines, runs), so that every rule has something to do."""
    import random

    rng = random.Random(seed)
    alphabet = list("аабвгдеёЁЖжПРz ZaA  \t\n.,!?)😂_-12") + ["ааа", "!!!", "))))", "  ", "ΣΣΣ"]
    return pl.Series([("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))) for _ in range(n)],
                     dtype=pl.String)


@pytest.mark.parametrize("mask", range(32))
def test_fast_near_key_equals_the_rules_applied_one_by_one(mask):
    from chitchat.data.dedup_keys import fast_near_key

    cfg = NearKeyConfig(**{r: bool(mask >> i & 1) for i, r in enumerate(NEAR_RULES)})
    texts = fuzz_texts()
    assert fast_near_key(texts, cfg).to_list() == near_key(texts, cfg).to_list()


@pytest.mark.parametrize("repeats", [True, False])
def test_fast_near_key_from_the_match_keys_spaced_text_equals_the_rules(repeats):
    """dedup keys questions from the text the match key is built on (lower_yo, then spaced_words)."""
    from chitchat.data.dedup_keys import fast_near_key
    from chitchat.data.normalize import lower_yo, spaced_words

    cfg = NearKeyConfig(repeats=repeats)
    texts = fuzz_texts(seed=2)
    spaced = texts.to_frame("t").select(spaced_words(lower_yo(pl.col("t")))).to_series()
    assert fast_near_key(spaced, cfg, spaced=True).to_list() == near_key(texts, cfg).to_list()
    with pytest.raises(ValueError, match="punctuation and whitespace"):
        fast_near_key(spaced, NearKeyConfig(whitespace=False), spaced=True)


def test_fast_near_key_in_chunks_equals_one_pass(monkeypatch):
    import chitchat.data.dedup_keys as dedup_keys

    texts = fuzz_texts(1000, seed=1)
    whole = dedup_keys.fast_near_key(texts, NearKeyConfig())
    monkeypatch.setattr(dedup_keys, "KEY_CHUNK", 97)
    assert dedup_keys.fast_near_key(texts, NearKeyConfig()).to_list() == whole.to_list()


def test_hashed_distinct_equals_plain_distinct_even_when_hashes_collide(monkeypatch):
    from chitchat.data.row_groups import distinct

    rng = __import__("random").Random(3)
    df = pl.DataFrame({"c": [rng.randint(0, 5) for _ in range(3000)],
                       "t": [rng.choice(["да", "нет", "ну", "", "Да"]) for _ in range(3000)]})
    pair = pl.struct("c", "t")
    want = df.select(pair.is_first_distinct().alias("f"), pair.is_duplicated().alias("s"))
    first, shared = distinct(df, "c", "t")
    assert first.to_list() == want["f"].to_list() and shared.to_list() == want["s"].to_list()
    # every text hashing alike: the exact comparison of the shared rows still tells them apart
    monkeypatch.setattr(pl.Expr, "hash", lambda self, *a, **k: self.is_null().cast(pl.UInt64) * 0)
    first, shared = distinct(df, "c", "t")
    assert first.to_list() == want["f"].to_list() and shared.to_list() == want["s"].to_list()


def test_kept_rows_reads_only_the_key_columns_and_keeps_the_rest_aligned():
    from chitchat.data.dedup import kept_rows

    df = near_table().with_columns(pl.Series("extra", [[str(i)] for i in range(10)]))
    kept, report = kept_rows(df, DedupConfig())
    out, _ = dedup_pairs(df, DedupConfig())
    assert kept["_row"].to_list() == list(range(5)) and out["extra"].to_list() == [[str(i)] for i in range(5)]
    assert report.pairs_out == 5


def reference_dedup(df: pl.DataFrame, cfg: DedupConfig) -> tuple[list[int], dict, int]:
    """The rules as the module docstring states them, row by row in Python: (rows kept, removed, capped).
    The keys come from the rule-by-rule near_key and the match key; nothing is shared or skipped."""
    from chitchat.data.normalize import match_key

    q, a, qid = df["question"], df["answer"], df["qid"].to_list()
    rules = cfg.near.enabled()
    prefix = [near_key(q, NearKeyConfig(**{r: r in rules[:i] for r in NEAR_RULES})).to_list() for i in range(len(rules) + 1)]
    prefix_a = [near_key(a, NearKeyConfig(**{r: r in rules[:i] for r in NEAR_RULES})).to_list() for i in range(len(rules) + 1)]
    q_match = df.select(match_key(pl.col("question"))).to_series().to_list()
    a_match = df.select(match_key(pl.col("answer"))).to_series().to_list()
    phrase = near_key(df.select(first_phrase(pl.col("question"))).to_series(), cfg.near).to_list()
    alive, removed = list(range(df.height)), {}

    def first_of_each(rows, key):
        seen, out = set(), []
        for r in rows:
            if key(r) not in seen:
                seen.add(key(r))
                out.append(r)
        return out

    if cfg.exact:
        kept = first_of_each(alive, lambda r: (q[r], a[r]))
        removed["exact_duplicate"], alive = len(alive) - len(kept), kept
    if rules:
        distinct = [len({(prefix[i][r], prefix_a[i][r]) for r in alive}) for i in range(len(rules) + 1)]
        if not cfg.exact:
            removed["near_identical"] = len(alive) - distinct[0]
        for i, name in enumerate(rules):
            removed[f"near_{name}"] = distinct[i] - distinct[i + 1]
        alive = first_of_each(alive, lambda r: (prefix[-1][r], prefix_a[-1][r]))
    if cfg.answer_equals_question:
        kept = [r for r in alive if q_match[r] != a_match[r]]
        removed["answer_equals_question"], alive = len(alive) - len(kept), kept
    if cfg.max_per_question:
        seen: dict = {}
        kept = [r for r in alive if seen.setdefault(q_match[r], []).append(r) or len(seen[q_match[r]]) <= cfg.max_per_question]
        removed["over_max_per_question"], alive = len(alive) - len(kept), kept
    capped = 0
    if cfg.max_per_first_phrase:
        qids: dict = {}
        for r in alive:
            qids.setdefault(phrase[r], set()).add(qid[r])
        allowed = {p: sorted(ids)[: cfg.max_per_first_phrase] for p, ids in qids.items()}
        kept = [r for r in alive if qid[r] in allowed[phrase[r]]]
        capped = len({phrase[r] for r in alive if qid[r] not in allowed[phrase[r]]})
        removed["over_max_per_first_phrase"], alive = len(alive) - len(kept), kept
    return alive, removed, capped


def fuzz_table(n=1500, seed=0):
    """Question records of 1-4 answers, questions re-asked in variants (so groups, phrases and caps
    form), answers fuzzed and sometimes a variant of their question."""
    import random

    rng = random.Random(seed)
    pool = fuzz_texts(60, seed=seed + 100).to_list() + ["Алло! Кто это?", "алло", "АЛЛО!!! да", "Ёж? Ну"]
    answers = fuzz_texts(200, seed=seed + 200).to_list() + ["Да", "да!!!", "ДА", "не знаю", "Незнаю"]
    rows, qid = [], 0
    while len(rows) < n:
        question = rng.choice(pool)
        if rng.random() < 0.3:
            question = rng.choice([question.upper(), question + "!!!", question.replace("е", "ё"), " ".join(question)])
        for _ in range(rng.randint(1, 4)):
            answer = rng.choice(answers) if rng.random() < 0.85 else rng.choice([question, question.lower() + "?"])
            rows.append((qid, question, answer))
        qid += 1
    return pl.DataFrame(rows, schema={"qid": pl.UInt32, "question": pl.String, "answer": pl.String}, orient="row")


@pytest.mark.parametrize("seed, near_mask, exact, aeq, per_q, per_phrase", [
    (0, 31, True, True, 2, 3), (1, 31, False, True, 0, 2), (2, 0, True, True, 1, 1), (3, 15, True, True, 3, 0),
    (4, 27, False, False, 0, 4), (5, 23, True, True, 2, 2), (6, 1, True, True, 0, 1), (7, 30, False, True, 1, 0),
    (8, 31, True, False, 0, 0), (9, 12, True, True, 2, 5),
])
def test_kept_rows_equals_the_rules_applied_row_by_row(seed, near_mask, exact, aeq, per_q, per_phrase):
    """The shortcuts of kept_rows (keys per question run, near keys only for answers whose lead is
    shared, counts on shared keys only, caps on big groups only) change nothing."""
    from chitchat.data.dedup import kept_rows

    cfg = DedupConfig(exact=exact, answer_equals_question=aeq, max_per_question=per_q, max_per_first_phrase=per_phrase,
                      near=NearKeyConfig(**{r: bool(near_mask >> i & 1) for i, r in enumerate(NEAR_RULES)}))
    df = fuzz_table(seed=seed)
    kept, report = kept_rows(df, cfg)
    want_rows, want_removed, want_capped = reference_dedup(df, cfg)
    assert kept["_row"].to_list() == want_rows
    from chitchat.data.normalize import match_key  # group: the first row whose question has the match key

    keys = df.select(match_key(pl.col("question"))).to_series().to_list()
    first_row = {}
    for row, key in enumerate(keys):
        first_row.setdefault(key, row)
    assert kept["group"].to_list() == [first_row[keys[r]] for r in want_rows]
    assert report.removed == want_removed and report.first_phrases_capped == want_capped
    assert sum(want_removed.values()) > 0


def test_lower_casing_makes_no_letter_but_the_listed_ones_and_unmakes_none():
    """What `ends` relies on, over every code point: lower-casing a character that is not a letter
    or digit ([^\\W_] in polars' regex) yields none, except for LEAD_EXTRA (capitals newer than the
    regex's tables), and lower-casing a letter or digit yields a text that starts and ends with one."""
    from chitchat.data.dedup_keys import LEAD_EXTRA

    chars = pl.Series([chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF], dtype=pl.String)
    frame = chars.to_frame("c").with_columns(lower=pl.col("c").str.to_lowercase())
    is_word = frame.select(pl.col("c").str.contains(r"^[^\W_]$")).to_series()
    lower_has_word = frame.select(pl.col("lower").str.contains(r"[^\W_]")).to_series()
    lower_starts_word = frame.select(pl.col("lower").str.contains(r"^[^\W_]")).to_series()
    lower_ends_word = frame.select(pl.col("lower").str.contains(r"[^\W_]$")).to_series()
    assert sorted(chars.filter(~is_word & lower_has_word).to_list()) == sorted(LEAD_EXTRA)
    assert (lower_starts_word & lower_ends_word | ~is_word).all()
    assert is_word.sum() > 100_000  # the check saw the letters of every script


def test_fast_lower_casing_equals_polars_lower_casing_on_every_code_point():
    """lower_yo_series maps Russian and English capitals itself and sends texts with any other
    character that lower-casing changes the full way: equal to lower_yo on every code point, alone
    and between letters (the final sigma depends on its neighbours)."""
    from chitchat.data.dedup_keys import lower_yo_series
    from chitchat.data.normalize import lower_yo

    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    texts = pl.Series("t", points + [f"Я{c}Z" for c in points] + [f"ΑΣ{c}" for c in points] + [None])
    want = texts.to_frame().select(lower_yo(pl.col("t"))).to_series()
    got = lower_yo_series(texts)
    assert got.to_list() == want.to_list()
    assert (want != texts).sum() > 1_000_000  # the texts had capitals to lower


def test_ends_of_texts_with_equal_keys_are_equal():
    from chitchat.data.dedup_keys import ends, ends_hash, fast_near_key

    odd = ["\ua7d2x", "\ua7d3X", "x\ua7d2", "xꟓ!", "...\ua7d4", "\ua7d5", "İ", "i̇", "!Σ", "σ", "ΑΣ", "ας", "ασ!",
           "ΑΣ Β", "ας β", "aİ", "ai̇", "Ёж", "ЕЖ", "ёЁ"]
    texts = pl.concat([fuzz_texts(3000, seed=5), pl.Series(odd)])
    for mask in range(32):
        cfg = NearKeyConfig(**{r: bool(mask >> i & 1) for i, r in enumerate(NEAR_RULES)})
        frame = ends(texts, cfg).with_columns(key=fast_near_key(texts, cfg))
        per_key = frame.group_by("key").agg(pl.col("lead", "tail").n_unique())
        assert per_key["lead"].max() == 1 and per_key["tail"].max() == 1, mask
        assert frame["tail"].n_unique() > 5  # the ends tell texts apart
        # the hash dedup groups by (case rules on the distinct characters only) parts texts as the ends do
        frame = frame.with_columns(hash=ends_hash(texts, cfg), ends=pl.struct("lead", "tail").rank("dense"))
        assert frame.group_by("ends").agg(pl.col("hash").n_unique())["hash"].max() == 1, mask
        assert frame["hash"].n_unique() == frame["ends"].n_unique(), mask


def test_kept_with_group_is_the_kept_rows_in_order_with_their_group_last():
    from chitchat.data.dedup import GROUP, kept_rows, kept_with_group

    df = fuzz_table(400, seed=4).with_columns(pl.int_range(pl.len()).alias("extra"), pl.lit(7).alias(GROUP))
    kept, _ = kept_rows(df, DedupConfig(max_per_question=2))
    out = kept_with_group(df, kept).collect()
    assert 0 < out.height < df.height
    assert out.columns == [c for c in df.columns if c != GROUP] + [GROUP]  # a stale group is replaced
    assert out["extra"].to_list() == kept["_row"].to_list() and out[GROUP].to_list() == kept[GROUP].to_list()


def test_kept_rows_is_right_when_every_hash_collides(monkeypatch):
    """Hashes only pick which rows to compare: with all of them equal, every answer gets a near key
    and every pair is compared by its text, and the result is the reference's."""
    from chitchat.data.dedup import kept_rows

    cfg = DedupConfig(max_per_question=2, max_per_first_phrase=3)
    df = fuzz_table(600, seed=11)
    want_rows, want_removed, want_capped = reference_dedup(df, cfg)
    monkeypatch.setattr(pl.Expr, "hash", lambda self, *a, **k: self.is_null().cast(pl.UInt64) * 0)
    kept, report = kept_rows(df, cfg)
    assert kept["_row"].to_list() == want_rows and report.removed == want_removed
    assert report.first_phrases_capped == want_capped


def test_a_first_phrase_shorter_than_its_text_has_a_sentence_end_before_a_space():
    """What lets dedup take first phrases only of questions with `[.!?…]` before a space."""
    texts = pl.concat([fuzz_texts(5000, seed=9), pl.Series(["Да!!", "Ну… да", "a.b", "Что?!\tДа", "x...", "Ок.\n"])])
    frame = texts.to_frame("t").select(pl.col("t"), first_phrase(pl.col("t")).alias("p"))
    shorter = frame.filter(pl.col("p") != pl.col("t"))
    assert shorter.height > 100 and shorter["t"].str.contains(r"[.!?…]\s").all()
