import polars as pl
import pytest

from chitchat.data.dedup import DedupConfig, dedup_pairs
from chitchat.data.dedup_keys import NEAR_RULES, NearKeyConfig
from chitchat.data.filters import FilterConfig, apply_filters
from chitchat.data.split import SplitConfig, split_pairs
from chitchat.data.normalize import match_key
from chitchat.core.errors import InputError


def pairs(rows):
    return pl.DataFrame(rows, schema=["question", "category", "answer"], orient="row")


@pytest.mark.parametrize("row, cfg, reason", [
    (("", "Юмор", "ответ"), {}, "empty_question"),
    (("вопрос", "Юмор", ""), {}, "empty_answer"),
    (("вопрос", "Юмор", "https://otvet.mail.ru/q/1 www.drom.ru"), {}, "link_only_answer"),
    (("да?", "Юмор", "ответ"), {"min_question_chars": 5}, "question_too_short_chars"),
    (("очень длинный вопрос", "Юмор", "ответ"), {"max_question_chars": 18}, "question_too_long_chars"),
    (("одно", "Юмор", "ответ"), {"min_question_words": 2}, "question_too_short_words"),
    (("раз два три", "Юмор", "ответ"), {"max_question_words": 2}, "question_too_long_words"),
    (("вопрос", "Юмор", "а"), {"min_answer_chars": 2}, "answer_too_short_chars"),
    (("вопрос", "Юмор", "ответ " * 10), {"max_answer_chars": 20}, "answer_too_long_chars"),
    (("вопрос", "Юмор", "ответ"), {"min_answer_words": 2}, "answer_too_short_words"),
    (("вопрос", "Юмор", "а б в г"), {"max_answer_words": 3}, "answer_too_long_words"),
    (("вопрос", "Юмор", "ответ"), {"categories": ["Спорт"]}, "category_not_allowed"),
])
def test_each_filter_drops_and_names_its_reason(row, cfg, reason):
    good = ("нормальный вопрос", "Спорт", "нормальный ответ")
    kept, dropped = apply_filters(pairs([good, row]), FilterConfig(**cfg))
    assert dropped == {reason: 1}
    assert kept["question"].to_list() == [good[0]]


def test_link_inside_text_is_kept():
    kept, dropped = apply_filters(pairs([("вопрос", "Юмор", "смотри тут https://x.ru ок")]), FilterConfig())
    assert kept.height == 1 and dropped == {}


def test_unlimited_max_bounds():
    kept, _ = apply_filters(pairs([("в" * 5000, "Юмор", "о" * 5000)]), FilterConfig())
    assert kept.height == 1


def test_match_key_folds_case_yo_punctuation():
    df = pl.DataFrame({"t": ["Ёлка, КАК дела?!", "елка как   дела"]})
    keys = df.select(match_key(pl.col("t")))["t"].to_list()
    assert keys[0] == keys[1] == "елка как дела"


def test_match_key_one_pass_equals_the_rules_step_by_step():
    """match_key replaces each run of non-word characters by one space in a single pass; that must
    equal the rules applied one at a time, on text with every kind of character the rules treat
    apart (Unicode spaces, the zero-width ones, underscores, emoji, combining marks, digits)."""
    import random

    from chitchat.data.normalize import lower_yo, spaced_words

    rng = random.Random(5)
    alphabet = list("аЁёZz 9_\t\n.,!?😂-") + ["\u00a0", "\u2003", "\u200b", "\u200d", "\u0301", "\u3000", "  ", "Σ"]
    texts = pl.Series("t", ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10))) for _ in range(5000)])
    step_by_step = (lower_yo(pl.col("t")).str.replace_all(r"[^\w\s]", " ").str.replace_all("_", " ", literal=True)
                    .str.replace_all(r"\s+", " ").str.strip_chars())
    want = texts.to_frame().select(step_by_step).to_series().to_list()
    assert texts.to_frame().select(match_key(pl.col("t"))).to_series().to_list() == want
    spaced = texts.to_frame().select(spaced_words(lower_yo(pl.col("t")))).to_series()
    assert spaced.to_frame().select(match_key(pl.col("t"), spaced=True)).to_series().to_list() == want
    assert sum(k != t for k, t in zip(want, texts.to_list())) > 4000  # the rules had work to do


def test_dedup_rules_each_counted():
    df = pairs([
        ("Как дела?", "Юмор", "Хорошо"),
        ("Как дела?", "Юмор", "Хорошо"),  # exact duplicate
        ("Как дела?", "Юмор", "как дела"),  # answer repeats the question
        ("Как дела?", "Юмор", "Плохо"),
        ("как дела", "Юмор", "Нормально"),  # same question by match key: over the cap of 2
        ("Где я?", "Юмор", "Дома"),
    ])
    out, report = dedup_pairs(df, DedupConfig(exact=True, answer_equals_question=True, max_per_question=2))
    assert report.removed == {"exact_duplicate": 1, **{f"near_{r}": 0 for r in NEAR_RULES},
                              "answer_equals_question": 1, "over_max_per_question": 1}
    assert out["answer"].to_list() == ["Хорошо", "Плохо", "Дома"]
    assert report.pairs_in == 6 and report.pairs_out == 3


def test_dedup_rules_can_be_switched_off():
    df = pairs([("a b", "x", "a b"), ("a b", "x", "a b")])
    no_near = NearKeyConfig(**dict.fromkeys(NEAR_RULES, False))
    out, report = dedup_pairs(df, DedupConfig(exact=False, near=no_near, answer_equals_question=False))
    assert out.height == 2 and report.removed == {}


def many_pairs(n_questions=200, answers=3):
    cats = ["Авто, Мото", "Юмор", "Спорт", "Еда, Кулинария"]
    rows = [(f"Вопрос номер {i}?", cats[i % 4], f"ответ {j} на {i}") for i in range(n_questions) for j in range(answers)]
    rows += [(f"вопрос НОМЕР {i}", cats[i % 4], "ещё один") for i in range(0, n_questions, 7)]  # same key
    return pairs(rows)


def test_split_no_question_in_two_splits_and_stratified():
    df = many_pairs()
    frames, report = split_pairs(df, SplitConfig(0.1, 0.1, seed=3))
    keys = {name: set(f.select(match_key(pl.col("question")))["question"].to_list()) for name, f in frames.items()}
    assert not keys["train"] & keys["valid"] and not keys["train"] & keys["test"] and not keys["valid"] & keys["test"]
    assert sum(f.height for f in frames.values()) == df.height
    assert report["stratified"] is True
    assert report["questions"] == {"train": 160, "valid": 20, "test": 20}
    per_category = frames["valid"].group_by("category").agg(match_key(pl.col("question")).n_unique())
    assert sorted(per_category["question"].to_list()) == [5, 5, 5, 5]  # 50 questions per category, 10%


def test_split_by_dedups_group_column_equals_split_by_the_match_key():
    """The pipeline's split reads the `group` dedup writes instead of computing the key again:
    the same labels, and the column does not reach the split files."""
    from chitchat.data.dedup import DedupConfig, dedup_pairs, kept_rows
    from chitchat.data.split import assign_splits

    df = many_pairs(300).with_row_index("qid")
    kept, _ = kept_rows(df, DedupConfig())
    deduped, _ = dedup_pairs(df, DedupConfig())
    grouped = deduped.with_columns(kept["group"])
    assert grouped["group"].n_unique() == 300  # the re-asked «вопрос НОМЕР i» joins question i
    for seed in (1, 2, 3):
        by_key, report_key = assign_splits(deduped, SplitConfig(seed=seed))
        by_group, report_group = assign_splits(grouped, SplitConfig(seed=seed))
        assert by_key.equals(by_group) and report_key == report_group
    frames, _ = split_pairs(grouped, SplitConfig())
    assert all("group" not in f.columns for f in frames.values())


def test_strata_number_categories_in_the_sorted_order_of_their_names():
    """A category's stratum is its name's place among the sorted distinct names, every category of
    a single question merged into one rare stratum; unstratified, one stratum."""
    import random

    from chitchat.data.split import RARE, _stratum_of

    rng = random.Random(5)
    names = [rng.choice(["Юмор", "Авто", "авто", "Zoo", "Б", "б", "ё", "a b", "Спорт"]) for _ in range(500)]
    names += ["один", "one", "😀"]  # categories of one question each
    counts = pl.Series("category", names).value_counts(name="len")
    labels = {n: n if names.count(n) >= 2 else RARE for n in names}
    want = {name: i for i, name in enumerate(sorted(set(labels.values())))}
    got = dict(_stratum_of(counts, True).iter_rows())
    assert got == {n: want[labels[n]] for n in set(names)}
    assert set(dict(_stratum_of(counts, False).iter_rows()).values()) == {0}


def test_split_is_seeded():
    df = many_pairs()
    a, _ = split_pairs(df, SplitConfig(seed=1))
    b, _ = split_pairs(df, SplitConfig(seed=1))
    c, _ = split_pairs(df, SplitConfig(seed=2))
    assert a["test"].equals(b["test"])
    assert not a["test"].equals(c["test"])


def test_split_falls_back_when_categories_are_too_small():
    rows = [(f"q{i}", f"cat{i}", "a") for i in range(10)]  # every category has one question
    frames, report = split_pairs(pairs(rows), SplitConfig(0.2, 0.2))
    assert report["stratified"] is False
    assert sum(f.height for f in frames.values()) == 10


def test_split_too_few_questions_is_an_input_error():
    with pytest.raises(InputError, match="too few"):
        split_pairs(pairs([("q", "c", "a"), ("q", "c", "b")]), SplitConfig())


def test_a_misspelled_param_stops_the_stage():
    from chitchat.core.io import config_from

    with pytest.raises(ValueError, match="unknown dedup params: max_per_questoin"):
        config_from(DedupConfig, {"max_per_questoin": 3}, "dedup")
    assert config_from(FilterConfig, {"input": "x.zip", "max_answer_words": 3}, "prepare",
                       ignore=("input",)).max_answer_words == 3
