"""prepare.inputs: TSV pairs, dialogues (text, JSON, tar.xz), auto detection, several inputs at once."""

import io
import json
import tarfile

import polars as pl
import pytest

from chitchat.data.sources import InputSpec, detect_format, parse_inputs, read_inputs
from chitchat.core.errors import InputError
from conftest import ANEKDOT, write_jsonl

DIALOGUES = """- Ты куда несёшь телевизор?
- На свалку.
- Зачем?

- Одна реплика без ответа.

- Доктор, я буду жить?
- А смысл?
"""


def test_tsv_pairs_with_optional_category_and_counted_bad_lines(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("Как дела?\tНормально\nПривет\tЗдорово\tЮмор\nбез табуляции\na\tb\tc\td\n", encoding="utf-8")
    df, reports = read_inputs([InputSpec(str(path), "pairs_tsv", category="Болталка")])
    assert df["question"].to_list() == ["Как дела?", "Привет"]
    assert df["answer"].to_list() == ["Нормально", "Здорово"]
    assert df["category"].to_list() == ["Болталка", "Юмор"]
    assert dict(reports["train"].skipped) == {"no_tab": 1, "too_many_tabs": 1}
    assert reports["train"].skipped_lines == {"no_tab": [3], "too_many_tabs": [4]}


@pytest.mark.parametrize("max_history, expected", [
    (0, [[], [], []]),
    (1, [[], ["Ты куда несёшь телевизор?"], []]),
    (3, [[], ["Ты куда несёшь телевизор?"], []]),
])
def test_text_dialogues_become_adjacent_pairs_with_history(tmp_path, max_history, expected):
    path = tmp_path / "dialogues.txt"
    path.write_text(DIALOGUES, encoding="utf-8")
    df, reports = read_inputs([InputSpec(str(path), "dialogues")], max_history=max_history)
    assert df["question"].to_list() == ["Ты куда несёшь телевизор?", "На свалку.", "Доктор, я буду жить?"]
    assert df["answer"].to_list() == ["На свалку.", "Зачем?", "А смысл?"]
    assert df["history"].to_list() == expected
    assert df["line"].to_list() == [2, 3, 8]
    assert dict(reports["dialogues"].skipped) == {"one_turn_dialogue": 1}
    assert reports["dialogues"].records_ok == 2
    assert df["qid"].n_unique() == 3  # every dialogue turn is its own question


def test_json_dialogues_and_a_bad_dialogue_is_counted(tmp_path):
    path = tmp_path / "dialogues.json"
    path.write_text(json.dumps([["Привет!", "Привет.", "Как ты?"], "не список", [1, 2], ["Один"]],
                               ensure_ascii=False), encoding="utf-8")
    df, reports = read_inputs([InputSpec(str(path))], max_history=2)
    assert df.select("question", "answer").rows() == [("Привет!", "Привет."), ("Привет.", "Как ты?")]
    assert df["history"].to_list() == [[], ["Привет!"]]
    assert reports["dialogues"].skipped == {"dialogue_not_list_of_strings": 2, "one_turn_dialogue": 1}


def test_dialogues_inside_a_tar_xz(tmp_path):
    path = tmp_path / "dialogues.tar.xz"
    data = DIALOGUES.encode("utf-8")
    with tarfile.open(path, "w:xz") as tar:
        info = tarfile.TarInfo("dialogues.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert detect_format(path) == "dialogues"
    df, _ = read_inputs([InputSpec(str(path))])
    assert df.height == 3


def test_auto_detection(tmp_path, qa_records):
    qa = write_jsonl(tmp_path / "dump.jsonl.zip", qa_records)
    tsv = tmp_path / "train.txt"
    tsv.write_text("вопрос\tответ\n", encoding="utf-8")
    dia = tmp_path / "dia.txt"
    dia.write_text(DIALOGUES, encoding="utf-8")
    odd = tmp_path / "odd.txt"
    odd.write_text("просто текст\n", encoding="utf-8")
    assert [detect_format(p) for p in (qa, tsv, dia)] == ["qa_jsonl", "pairs_tsv", "dialogues"]
    with pytest.raises(InputError, match="cannot tell the format"):
        detect_format(odd)


def test_several_inputs_make_one_table_with_a_source_column(tmp_path, qa_records):
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_records)
    dia = tmp_path / "anekdots.txt"
    dia.write_text(DIALOGUES, encoding="utf-8")
    specs = parse_inputs([str(qa), {"path": str(dia), "category": "Анекдоты"}])
    df, reports = read_inputs(specs)
    assert set(reports) == {"qa", "anekdots"}
    assert df.filter(df["source"] == "anekdots")["category"].unique().to_list() == ["Анекдоты"]
    assert df.filter(df["source"] == "qa").height == 7
    per_question = df.group_by("qid").agg(pl.col("source").n_unique())
    assert per_question["source"].max() == 1  # qids never span two inputs
    assert df["qid"].n_unique() == 3 + 3


@pytest.mark.parametrize("entries, message", [
    ([], "non-empty list"),
    ([{"path": "a.txt", "fromat": "x"}], "unknown keys fromat"),
    ([{"path": "a.txt", "format": "csv"}], "format of a.txt must be one of"),
    (["a/x.txt", "b/x.txt"], "share a source name"),
    ([{"format": "auto"}], "needs a path"),
])
def test_bad_inputs_param(entries, message):
    with pytest.raises(ValueError, match=message):
        parse_inputs(entries)


def test_the_shared_anekdot_dialogues_read_as_their_readme_counts():
    df, reports = read_inputs([InputSpec(str(ANEKDOT))])
    report = reports["extract_dialogues_from_anekdots"]
    assert report.lines == 87_720  # dialogues, as the data's README counts them
    assert df.height == 164_774  # adjacent turn pairs, ditto
    assert not df["question"].str.starts_with("- ").any()
