"""JSON-lines dumps outside the course schema, read through `prepare.inputs[].fields`: each test
writes a small dump of one shape (the full-metadata Ответы@Mail.ru dump, Yandex Q, Habr QnA)."""

import json

import pytest

from chitchat.core.errors import InputError
from chitchat.data.sources import InputSpec, parse_inputs, read_inputs


def write(path, records, raw=()):
    path.write_text("\n".join([json.dumps(r, ensure_ascii=False) for r in records] + list(raw)) + "\n",
                    encoding="utf-8")
    return str(path)


def answers_of(pairs):
    return pairs.group_by("question", maintain_order=True).agg("answer").rows()


OTVETY_FULL = [  # the public dump's full records: nested question, answer objects with votes and a best flag
    {"id": 1, "question": {"title": "Как варить гречку?", "category": {"name": "Еда, Кулинария"}},
     "answers": [{"text": "Один к двум, 20 минут", "votes": 5, "best": True},
                 {"text": "В пакетиках", "votes": 9, "best": False},
                 {"text": "Никак", "votes": 0, "best": False}]},
    {"id": 2, "question": {"title": "Сколько спать?", "category": {"name": "Красота и Здоровье"}},
     "answers": [{"text": "Восемь часов", "votes": 2}, {"text": 42, "votes": 7}]},
]
OTVETY_FIELDS = {"question": "question.title", "category": "question.category.name", "answers": "answers",
                 "answer_text": "text", "answer_rating": "votes", "answer_best": "best"}


def test_full_metadata_dump_reads_all_best_or_top_k(tmp_path):
    path = write(tmp_path / "otvety_full.jsonl", OTVETY_FULL)
    pairs, reports = read_inputs([InputSpec(path, fields=OTVETY_FIELDS)])
    assert answers_of(pairs) == [("Как варить гречку?", ["Один к двум, 20 минут", "В пакетиках", "Никак"]),
                                 ("Сколько спать?", ["Восемь часов"])]
    assert pairs["category"].unique(maintain_order=True).to_list() == ["Еда, Кулинария", "Красота и Здоровье"]
    assert reports["otvety_full"].responses_skipped == {"not_a_string": 1}  # the 42

    best, reports = read_inputs([InputSpec(path, fields=OTVETY_FIELDS, answers_keep="best")])
    assert answers_of(best) == [("Как варить гречку?", ["Один к двум, 20 минут"])]
    assert reports["otvety_full"].skipped == {"no_best_answer": 1}

    top, _ = read_inputs([InputSpec(path, fields=OTVETY_FIELDS, answers_keep="top-2")])
    assert answers_of(top) == [("Как варить гречку?", ["Один к двум, 20 минут", "В пакетиках"]),  # dump order
                               ("Сколько спать?", ["Восемь часов"])]


def test_yandex_q_and_habr_qna_shapes(tmp_path):
    yandex = write(tmp_path / "yandex_q.jsonl", [
        {"title": "Почему небо голубое?", "tags": ["физика"], "answers": [{"body": "Рэлеевское рассеяние", "likes": 10}]},
        {"title": "Что почитать?", "tags": [], "answers": []},  # no answers: counted
    ])
    habr = write(tmp_path / "habr_qna.jsonl", [
        {"q": {"text": "Как выйти из vim?"}, "hub": "Linux", "solutions": ["Esc, :q!", "Никак"]},
    ], raw=['{"q": {"text": 5}, "solutions": ["x"]}', '{"q": "обрыв'])
    pairs, reports = read_inputs([
        InputSpec(yandex, fields={"question": "title", "category": "tags.0", "answers": "answers",
                                  "answer_text": "body", "answer_rating": "likes"}, answers_keep="top-1"),
        InputSpec(habr, fields={"question": "q.text", "category": "hub", "answers": "solutions"}),
    ])
    assert pairs.select("source", "question", "category", "answer").rows() == [
        ("yandex_q", "Почему небо голубое?", "физика", "Рэлеевское рассеяние"),
        ("habr_qna", "Как выйти из vim?", "Linux", "Esc, :q!"),
        ("habr_qna", "Как выйти из vim?", "Linux", "Никак"),
    ]
    assert reports["yandex_q"].skipped == {"no_responses": 1}
    assert reports["habr_qna"].skipped == {"question_not_string": 1, "malformed_json": 1}
    assert reports["habr_qna"].skipped_lines == {"question_not_string": [2], "malformed_json": [3]}


@pytest.mark.parametrize("entry, message", [
    ({"fields": {"question": "t", "answer": "a"}}, "unknown fields answer"),
    ({"fields": {"question": "t"}, "answers_keep": "best"}, "needs fields.answer_best"),
    ({"fields": {"answers": "a", "answer_text": "x", "answer_rating": "r"}, "answers_keep": "top-0"}, "top-K"),
    ({"fields": {"question": "t", "answer_rating": "r"}}, "needs fields.answer_text"),
    ({"fields": ["question"]}, "fields must be a mapping"),
    ({"fields": {"question": 3}}, "fields.question must be a dotted path"),
    ({"fields": {"question": "t"}, "format": "pairs_tsv"}, "apply to JSON lines"),
])
def test_a_bad_field_map_is_one_clear_error(entry, message):
    with pytest.raises(ValueError, match=message):
        parse_inputs([{"path": "data/raw/x.jsonl", **entry}])


def test_a_field_map_with_no_usable_record_stops_the_stage(tmp_path):
    path = write(tmp_path / "wrong_paths.jsonl", OTVETY_FULL)
    pairs, reports = read_inputs([InputSpec(path, fields={"question": "title", "answers": "answers"})])
    assert pairs.height == 0 and reports["wrong_paths"].skipped == {"missing_question": 2}
    with pytest.raises(InputError, match="no records"):
        read_inputs([InputSpec(write(tmp_path / "blank.jsonl", [], raw=[" "]), fields={"question": "q"})])
