"""Hostile input, as scraped dumps and hand-made files have it: no traceback, nothing lost silently.

Every dropped record is counted by reason; fatal problems are one line naming the file, exit 1 and
no output. Also: the vectorized parser and normalizer agree with the Python rules they replace.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import sys
import unicodedata
import zipfile

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from chitchat.data import lines as lines_module
from chitchat.data import qa_jsonl
from chitchat.data.normalize import _rare_chars_rs, normalize_series, normalize_text
from chitchat.data.lines import iter_line_chunks, iter_lines
from chitchat.data.qa_jsonl import parse_qa_lines, read_qa_jsonl
from chitchat.data.read_report import ReadReport
from chitchat.data.sources import InputSpec, read_inputs
from chitchat.core.io import atomic_path
from conftest import REPO

GOOD = {"question": "Как дела у тебя?", "category": "Юмор", "responses": ["Нормально, спасибо", "Отлично"]}
GOOD_LINE = json.dumps(GOOD, ensure_ascii=False)


def read(path) -> tuple[list, ReadReport]:
    report = ReadReport()
    return list(read_qa_jsonl(path, report)), report


def write_bytes(path, data: bytes):
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("qa.jsonl", data)
    elif path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


_prepare_spec = importlib.util.spec_from_file_location("prepare_stage", REPO / "pipeline" / "prepare.py")
prepare_stage = importlib.util.module_from_spec(_prepare_spec)
_prepare_spec.loader.exec_module(prepare_stage)


def run_prepare(tmp_path, *sources, **prepare_params):
    """pipeline/prepare.py through typer's CliRunner, with a params file pointing at `sources`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["prepare"]["inputs"] = [s if isinstance(s, dict) else {"path": str(s)} for s in sources]
    params["prepare"].update(prepare_params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    out, metrics = tmp_path / "out" / "pairs.parquet", tmp_path / "m" / "prepare.json"
    result = CliRunner().invoke(prepare_stage.app, ["--params", str(tmp_path / "params.yaml"), "--out", str(out),
                                                    "--metrics", str(metrics)])
    return result, out, metrics


# ---------------------------------------------------------------- recoverable: counted, never fatal

@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zip"])
def test_malformed_and_truncated_last_line_are_counted(tmp_path, suffix):
    data = "\n".join([GOOD_LINE, '{"question": "обрыв', GOOD_LINE, GOOD_LINE[: len(GOOD_LINE) // 2]]).encode()
    records, report = read(write_bytes(tmp_path / f"qa{suffix}", data))  # no newline after the cut line
    assert [r.line for r in records] == [1, 3]
    assert report.skipped == {"malformed_json": 2} and report.skipped_lines == {"malformed_json": [2, 4]}
    assert report.lines == 4 and report.records_ok == 2


def test_utf8_bom_and_crlf_line_ends(tmp_path):
    data = b"\xef\xbb\xbf" + (GOOD_LINE + "\r\n").encode() * 3
    records, report = read(write_bytes(tmp_path / "qa.jsonl", data))
    assert len(records) == 3 and not report.skipped
    assert all(not r.question.endswith("\r") and "\r" not in r.responses[-1] for r in records)


def test_invalid_utf8_bytes_skip_only_their_line(tmp_path):
    data = (GOOD_LINE + "\n").encode() + b'{"question": "\xd0\xd0 \xff", "responses": ["x"]}\n' + GOOD_LINE.encode()
    records, report = read(write_bytes(tmp_path / "qa.jsonl", data))
    assert [r.line for r in records] == [1, 3]
    assert report.skipped == {"invalid_utf8": 1} and report.skipped_lines == {"invalid_utf8": [2]}


def test_nul_bytes_are_removed_and_counted(tmp_path):
    raw = '{"question": "Как\x00 дела?", "responses": ["ну\x00\x00 да"]}\n\x00' + GOOD_LINE + "\n"
    escaped = '{"question": "Как\\u0000 дела?", "responses": ["ну да"]}\n'
    path = write_bytes(tmp_path / "qa.jsonl", (raw + escaped).encode())
    records, report = read(path)
    assert [r.question for r in records] == ["Как дела?", GOOD["question"], "Как\x00 дела?"]
    assert report.nul_bytes == 4 and not report.skipped
    df, _ = read_inputs([InputSpec(str(path))])
    assert not df["question"].str.contains("\x00").any()  # an escaped NUL goes in normalization


@pytest.mark.parametrize("responses, reason, kept, not_strings", [
    ("null", "missing_responses", None, 0),
    ('"одна строка"', "responses_not_list", None, 0),
    ("[]", "no_responses", None, 0),
    ("[1, null, {}, []]", "no_responses", None, 4),
    ('["да", 5, null, "нет", true]', None, ["да", "нет"], 3),
])
def test_bad_responses(tmp_path, responses, reason, kept, not_strings):
    line = '{"question": "Вопрос?", "category": "Юмор", "responses": %s}' % responses
    records, report = read(write_bytes(tmp_path / "qa.jsonl", f"{GOOD_LINE}\n{line}\n".encode()))
    assert report.skipped == ({reason: 1} if reason else {})
    assert [r.responses for r in records[1:]] == ([kept] if kept else [])
    assert report.responses_skipped.get("not_a_string", 0) == not_strings


def test_missing_or_null_category_gets_the_param(tmp_path):
    lines = ['{"question": "Вопрос один?", "responses": ["да"]}',
             '{"question": "Вопрос два?", "category": null, "responses": ["да"]}',
             '{"question": "Вопрос три?", "category": "  ", "responses": ["да"]}',
             '{"question": "Вопрос четыре?", "category": 7, "responses": ["да"]}']
    path = write_bytes(tmp_path / "qa.jsonl", "\n".join(lines).encode())
    df, reports = read_inputs([InputSpec(str(path))], missing_category="Разное")
    assert df["category"].to_list() == ["Разное"] * 4
    assert reports["qa"].category_missing == 4 and reports["qa"].records_ok == 4


def test_duplicate_keys_last_wins_as_json_does(tmp_path):
    line = ('{"question": "первый?", "category": "А", "responses": ["x"], '
            '"question": "второй?", "category": "Б", "responses": ["y", "z"]}')
    records, report = read(write_bytes(tmp_path / "qa.jsonl", line.encode()))
    assert (records[0].question, records[0].category, records[0].responses) == ("второй?", "Б", ["y", "z"])


def test_html_as_scraped_dumps_have_it(tmp_path):
    rec = {"question": "Что значит &quot;ёлки&quot;?<br>Объясните", "category": "Юмор",
           "responses": ["Это &amp;quot;ёлки-палки&amp;quot; &hellip;", "<p>Первая<br/>вторая</p>", "2 &lt; 3, &lt;b&gt;жирный&lt;/b&gt;"]}
    path = write_bytes(tmp_path / "qa.jsonl", json.dumps(rec, ensure_ascii=False).encode())
    df, _ = read_inputs([InputSpec(str(path))])
    assert df["question"].unique().to_list() == ['Что значит "ёлки"? Объясните']
    # an escaped tag is a tag once unescaped, and goes like one
    assert df["answer"].to_list() == ['Это "ёлки-палки" …', "Первая вторая", "2 < 3, жирный"]


def test_odd_category_names_survive_into_metrics(tmp_path):
    odd = 'Авто/Мото "Жигули" \\ 🚗'
    rec = {"question": "Как завести машину в мороз?", "category": odd, "responses": ["Прогреть аккумулятор"]}
    result, out, metrics = run_prepare(tmp_path, write_bytes(tmp_path / "qa.jsonl", json.dumps(rec).encode()))
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(out)["category"].to_list() == [odd]
    metrics.read_bytes().decode("ascii")  # still ASCII for DVC
    assert json.loads(metrics.read_text())["categories_out"] == 1


def test_a_one_megabyte_question_is_dropped_by_the_length_filter(tmp_path):
    huge = {"question": "очень " * 180_000 + "длинный вопрос?", "category": "Юмор", "responses": ["да уж", "ага"]}
    lines = [GOOD_LINE, json.dumps(huge, ensure_ascii=False), GOOD_LINE]
    result, out, metrics = run_prepare(tmp_path, write_bytes(tmp_path / "qa.jsonl", "\n".join(lines).encode()))
    assert result.exit_code == 0, result.output
    m = json.loads(metrics.read_text())
    assert len(lines[1].encode()) > 1_000_000
    assert m["read"]["qa"]["records_ok"] == 3 and m["pairs_in"] == 6
    assert m["pairs_dropped"] == {"question_too_long_chars": 2} and m["pairs_out"] == 4


def test_zip_with_several_members_reads_every_jsonl_member_in_name_order(tmp_path):
    path = tmp_path / "qa.jsonl.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("b.jsonl", GOOD_LINE + "\n" + '{"question": "обрыв')
        z.writestr("README.txt", "not data")
        z.writestr("__MACOSX/._b.jsonl", b"\x00\x05\x16\x07 resource fork")  # zipped on a Mac
        z.writestr("a.jsonl", GOOD_LINE.replace("Как дела", "Где ты") + "\n")
    records, report = read(path)
    assert [r.question[:6] for r in records] == ["Где ты", "Как де"]
    assert [r.line for r in records] == [1, 2]  # line numbers run on through the members
    assert report.members == {"a.jsonl": 1, "b.jsonl": 2}
    assert report.skipped_lines == {"malformed_json": [3]}


def test_tsv_line_without_a_tab(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("Как дела?\tХорошо\nстрока без табуляции\n\nПривет\tЗдорово\tЮмор\n", encoding="utf-8")
    df, reports = read_inputs([InputSpec(str(path))])
    assert df["answer"].to_list() == ["Хорошо", "Здорово"]
    assert reports["pairs"].skipped == {"no_tab": 1} and reports["pairs"].skipped_lines == {"no_tab": [2]}


def test_one_turn_dialogues_are_counted_and_a_file_of_only_those_is_fatal(tmp_path):
    path = tmp_path / "dialogues.txt"
    path.write_text("- Один.\n\n- Два?\n- Три!\n\n- Четыре.\n", encoding="utf-8")
    df, reports = read_inputs([InputSpec(str(path), "dialogues")])
    assert df.select("question", "answer").rows() == [("Два?", "Три!")]
    assert reports["dialogues"].skipped == {"one_turn_dialogue": 2}
    assert reports["dialogues"].skipped_lines == {"one_turn_dialogue": [1, 6]}
    only = tmp_path / "only.txt"
    only.write_text("- Один.\n\n- Два.\n", encoding="utf-8")
    result, out, metrics = run_prepare(tmp_path, {"path": str(only), "format": "dialogues"})
    assert result.exit_code == 1 and "no pairs left after filtering (0 read)" in result.output
    assert not out.exists() and not metrics.exists()


# ---------------------------------------------------------------- fatal: one line, exit 1, nothing written

def _zip_without_jsonl(p):
    with zipfile.ZipFile(p / "qa.jsonl.zip", "w") as z:
        z.writestr("notes.txt", "hi")
    return p / "qa.jsonl.zip"


def _corrupt_zip(p):
    good = write_bytes(p / "good.jsonl.zip", (GOOD_LINE + "\n").encode() * 2000).read_bytes()
    (p / "qa.jsonl.zip").write_bytes(good[: len(good) // 2])  # cut: no central directory
    return p / "qa.jsonl.zip"


def _bad_crc_zip(p):
    data = bytearray(write_bytes(p / "qa.jsonl.zip", (GOOD_LINE + "\n").encode() * 10).read_bytes())
    with zipfile.ZipFile(p / "qa.jsonl.zip") as z:
        info = z.infolist()[0]
    data[info.header_offset + 14] ^= 0xFF  # the member's CRC-32 in its local header... and below, the central one
    data[data.rfind(b"PK\x01\x02") + 16] ^= 0xFF
    (p / "qa.jsonl.zip").write_bytes(bytes(data))
    return p / "qa.jsonl.zip"


def _garbled_zip(p):
    """The deflated data starts with bytes that are no deflate block: the inflater fails."""
    data = bytearray(write_bytes(p / "qa.jsonl.zip", (GOOD_LINE + "\n").encode() * 3000).read_bytes())
    start = 30 + int.from_bytes(data[26:28], "little") + int.from_bytes(data[28:30], "little")
    data[start: start + 8] = b"\xff" * 8  # block type 3 does not exist
    (p / "qa.jsonl.zip").write_bytes(bytes(data))
    return p / "qa.jsonl.zip"


def _truncated_gz(p):
    path = write_bytes(p / "qa.jsonl.gz", (GOOD_LINE + "\n").encode() * 3000)
    path.write_bytes(path.read_bytes()[:-100])
    return path


def _empty(p):
    (p / "qa.jsonl").write_bytes(b"")
    return p / "qa.jsonl"


def _blank_lines_only(p):
    (p / "qa.jsonl").write_bytes(b"\r\n  \n\t\n")
    return p / "qa.jsonl"


@pytest.mark.parametrize("make, problem", [
    (_zip_without_jsonl, "archive has no .jsonl member (members: notes.txt)"),
    (_corrupt_zip, "not a valid zip archive"),
    (_bad_crc_zip, "corrupt zip member (Bad CRC-32"),
    (_garbled_zip, "compressed stream is truncated or corrupt after line 0"),
    (_truncated_gz, "compressed stream is truncated or corrupt after line"),
    (_empty, "file is empty"),
    (_blank_lines_only, "file has no records (only blank lines)"),
    (lambda p: p / "missing.jsonl", "input file not found"),
])
def test_fatal_input_is_one_line_exit_1_and_no_output(tmp_path, make, problem):
    source = make(tmp_path)
    result, out, metrics = run_prepare(tmp_path, source)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"prepare: error: {source}: {problem}"), result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not metrics.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # no temp file left


# ---------------------------------------------------------------- the vectorized paths equal the rules

HOSTILE_LINES = [
    GOOD_LINE, '{"question": "q", "responses": ["a", "b"], "extra": {"question": 1, "responses": "x"}}',
    '{"question": 5, "responses": ["a"]}', '{"question": true, "responses": ["a"]}', '{"question": null, "responses": ["a"]}',
    '{"question": ["q"], "responses": ["a"]}', '{"question": {"t": "q"}, "responses": ["a"]}', '{"responses": ["a"]}',
    '{"question": "q", "responses": 5}', '{"question": "q", "responses": {"a": 1}}', '{"question": "q", "responses": [["a"]]}',
    '{"question": "q", "responses": ["a", {"b": 1}]}', '{"question": "q", "responses": ["a\\"]", 2]}',
    '{"question": "q", "responses": ["a", "b"], "category": ["c"]}', '{"question": "q", "responses": ["a"], "category": 1.5}',
    '{"\\u0071uestion": 5, "responses": ["a"]}', '{"question": "q", "\\u0072esponses": "x"}',
    '{"question": "q\\ud800", "responses": ["\\udc00a", "\\ud83d\\ude00"]}', '{"question": "q", "score": NaN, "responses": ["a"]}',
    '{"question": "q", "x": 1e999, "responses": ["a"]}', '{"question": "q", "responses": ["a"]} trailing',
    '{"question": "q", "responses": ["a"]}{"question": "r"}', "[1, 2]", '"just a string"', "42", "null", "{}",
    '{"question": "q", "responses": ["a",]}', "{" * 5000 + "}" * 5000, '\ufeff{"question": "q", "responses": ["a"]}',
    '  {"question" : "q" , "responses" : [ "a" , "b" ] }  ', '{"question": "q", "responses": ["a"], "category": "  "}',
    '{"question": "q", "responses": ["a"], "question": 5}', '{"question": "\\"question\\": 5", "responses": ["a"]}',
    '{"question": "q", "responses": ["\\u0430\\u0431", "x\\/y"], "category": "\\u042e\\u043c\\u043e\\u0440"}',
]


def _mixed_lines() -> list[str]:
    rng = random.Random(1)
    return [rng.choice(HOSTILE_LINES) for _ in range(3000)] + HOSTILE_LINES


@pytest.mark.parametrize("lines", [[GOOD_LINE, line] for line in HOSTILE_LINES] + [_mixed_lines()],
                         ids=[f"line{i}" for i in range(len(HOSTILE_LINES))] + ["mixed"])
def test_vectorized_qa_parser_agrees_with_json_loads_line_by_line(lines):
    """Alone (so polars decodes it, no neighbour sends its batch to json.loads) and all mixed."""
    frame = pl.DataFrame({"text": lines}).with_row_index("line", 1)
    report = ReadReport()
    got = parse_qa_lines(frame, report).rows()
    expected, reasons, bad = [], {}, 0
    for line, text in frame.iter_rows():
        row = qa_jsonl._parse(line, text)
        bad += row[5]
        if row[4]:
            reasons[row[4]] = reasons.get(row[4], 0) + 1
        else:
            expected.append(row[:4])
    assert got == expected
    assert dict(report.skipped) == reasons and report.responses_skipped["not_a_string"] == bad
    assert report.records_ok == len(expected)


def test_line_chunks_match_line_by_line_reading_across_block_boundaries(tmp_path):
    data = b"\xef\xbb\xbf" + "\n".join([GOOD_LINE, "", "  ", "x" * 50, GOOD_LINE + "\r", "последняя"]).encode()
    path = write_bytes(tmp_path / "qa.jsonl.gz", data)
    for chunk_bytes in (7, 64, 1 << 20):
        chunks = list(iter_line_chunks(path, chunk_bytes=chunk_bytes))
        got = [(c.first_line + i, line) for c in chunks for i, line in enumerate(c.lines.to_list())]
        assert got == [(n, raw.decode()) for n, raw in iter_lines(path)]


def test_a_tiny_chunk_size_gives_the_same_pairs(tmp_path, qa_records, monkeypatch):
    path = write_bytes(tmp_path / "qa.jsonl.zip", "\n".join([GOOD_LINE] + [json.dumps(r) for r in qa_records] * 40
                                                            + ['{"question": "обрыв']).encode())
    whole, reports = read_inputs([InputSpec(str(path))])
    monkeypatch.setattr(lines_module, "CHUNK_BYTES", 100)
    chunked, chunked_reports = read_inputs([InputSpec(str(path))])
    assert chunked.equals(whole) and chunked["qid"].is_sorted() and chunked["qid"].max() == 120
    assert chunked_reports["qa"].as_dict() == reports["qa"].as_dict()


TRICKY = [
    "  Что&nbsp;такое  &quot;ёлка&quot;? ", "&amp;quot;двойное&amp;quot;", "&amp;amp;", "AT&T", "&notit;", "&ampx", "&&quot;",
    "&#8212; тире &hellip;", "&#x41;&#039;", "&quot", "&#", "&Ouml;", "строка<br>вторая", "<b>жир</b> <a href='x'>ссылка</a>",
    "<3 сердце", "<br/>x<BR />", "</>", "< b>", "a\x1cb\x1dc\x1ed\x1fe", "таб\tи\nперевод\r\n", "\u3000широкий\u3000пробел",
    "\xa0\xa0x\xa0", "a\u2028b\u2029c\x85d", "zero\u200bwidth\u200c\u200d\u2060\ufeffx\x00", "й", "и\u0306", "е\u0308лка",
    "e\u0301", "\u1100\u1161\u11a8", "ΟΔΟΣ ΣΑΣ", "İstanbul", "Ёжик ЁЛКА", "emoji 😀👍🏻", "\u1c89 новая буква", "", "   ",
]


@pytest.mark.parametrize("lowercase, yo_to_e", [(False, False), (True, True), (True, False)])
def test_normalize_series_equals_normalize_text(lowercase, yo_to_e):
    rng = random.Random(0)
    alphabet = list("аеёЁЖжabAB \t\n&;#<>/x0uqtmplnbs") + ["&quot;", "&amp;", "<br>", "&#39;", "&nbsp;", "&hellip;",
                                                         "</p>", "&lt;", "ΣΑΣ", "😀", "\u200b", "\u0301", "\xa0", "\x1c"]
    texts = TRICKY + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25))) for _ in range(20_000)]
    got = normalize_series(pl.Series(texts), lowercase, yo_to_e).to_list()
    assert got == [normalize_text(t, lowercase, yo_to_e) for t in texts]


def test_only_rare_characters_can_tell_polars_and_python_apart():
    """Outside the rare class (which normalize_series hands to normalize_text), polars lower-cases and
    NFC-normalizes every character exactly as Python does: the vectorized path needs no NFC."""
    chars = pl.Series([chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF])
    common = chars.filter(~chars.str.contains(_rare_chars_rs())).to_list()
    assert len(common) > 100_000  # every assigned character but the rare ones
    lowered = pl.Series(common).str.to_lowercase().to_list()
    assert [c.lower() for c in common] == lowered
    assert all(unicodedata.is_normalized("NFC", c) for c in common)
    assert pl.Series(common).str.normalize("NFC").to_list() == common


def _reference_reason(cfg) -> pl.Expr:
    """drop_reason as first written: every word counted with count_matches(\\S+) on every row."""
    from chitchat.data.filters import LINK_ONLY, _bounds
    from chitchat.data.normalize import word_count

    q, a = pl.col("question"), pl.col("answer")
    rules = [(q.str.len_chars() == 0, "empty_question"), (a.str.len_chars() == 0, "empty_answer"),
             (a.str.contains(LINK_ONLY), "link_only_answer")]
    _bounds(rules, "question", q.str.len_chars(), cfg.min_question_chars, cfg.max_question_chars, "chars")
    _bounds(rules, "question", word_count(q), cfg.min_question_words, cfg.max_question_words, "words")
    _bounds(rules, "answer", a.str.len_chars(), cfg.min_answer_chars, cfg.max_answer_chars, "chars")
    _bounds(rules, "answer", word_count(a), cfg.min_answer_words, cfg.max_answer_words, "words")
    expr = pl.when(rules[0][0]).then(pl.lit(rules[0][1]))
    for cond, reason in rules[1:]:
        expr = expr.when(cond).then(pl.lit(reason))
    return expr.otherwise(pl.lit(None, dtype=pl.String))


@pytest.mark.parametrize("regex_words", [1000, 2])  # 2: the larger bounds count with count_matches
@pytest.mark.parametrize("words", [(1, 3, 1, 4), (2, 0, 3, 6), (0, 5, 1, 0), (4, 9, 5, 12)])
def test_word_filters_count_only_where_needed_yet_agree_with_counting_everywhere(words, regex_words, monkeypatch):
    import chitchat.data.filters as filters
    from chitchat.data.filters import FilterConfig, drop_reason

    monkeypatch.setattr(filters, "REGEX_WORDS", regex_words)

    rng = random.Random(2)
    pieces = ["а", "слово", "x", " ", "  ", "\t", "\u3000", "\x1c", "\n", "https://x.ru", "!"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(4000)]
    df = pl.DataFrame({"question": texts, "answer": texts[::-1]})
    cfg = FilterConfig(min_question_words=words[0], max_question_words=words[1], min_answer_words=words[2],
                       max_answer_words=words[3], min_question_chars=0, min_answer_chars=0)
    got = df.select(drop_reason(cfg))["drop_reason"]
    assert got.to_list() == df.select(_reference_reason(cfg).alias("r"))["r"].to_list()
    assert got.null_count() < len(texts) and got.n_unique() > 3  # the test exercises several reasons


@pytest.mark.parametrize("words", [(1, 3, 1, 4), (2, 0, 3, 6), (0, 5, 1, 0), (4, 9, 5, 12)])
def test_apply_filters_drops_what_drop_reason_names(words):
    """apply_filters evaluates the upper word bounds only on texts long enough to fail them: the
    rows it keeps and the counts per reason are drop_reason's, text paragraphs included."""
    from chitchat.data.filters import FilterConfig, apply_filters, drop_reason
    from chitchat.data.prose import TEXT_MARKER

    rng = random.Random(3)
    pieces = ["а", "слово", "x", " ", "  ", "\t", "\u3000", "\x1c", "\n", "https://x.ru", "!"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 30))) for _ in range(4000)]
    texts += [sep.join("а" * k) for k in range(15) for sep in (" ", "\u3000")]  # the shortest k-word texts
    questions = [f"{TEXT_MARKER} {t}" if i % 7 == 0 else t for i, t in enumerate(texts)]
    df = pl.DataFrame({"question": questions, "answer": texts[::-1], "category": "c"})
    cfg = FilterConfig(min_question_words=words[0], max_question_words=words[1], min_answer_words=words[2],
                       max_answer_words=words[3], min_question_chars=0, min_answer_chars=0, max_text_chars=40)
    reasons = df.select(drop_reason(cfg))["drop_reason"]
    kept, dropped = apply_filters(df, cfg)
    assert kept.equals(df.filter(reasons.is_null()))
    assert dropped == dict(sorted(reasons.drop_nulls().value_counts().iter_rows()))
    assert any(reason.endswith("too_long_words") for reason in dropped) == (words[1] + words[3] > 0)


def test_an_interrupted_sink_stops_at_the_next_chunk_and_leaves_no_file(tmp_path):
    """Ctrl-C reaches the main thread while polars sinks in another: the source stops, the error rises."""
    import _thread
    import signal
    import threading
    import time

    from polars.io.plugins import register_io_source

    stop, served = threading.Event(), []

    def slow_source(*_):
        for i in range(100):
            if stop.is_set():
                raise KeyboardInterrupt
            served.append(i)
            time.sleep(0.05)
            yield pl.DataFrame({"x": [i]})

    # Ctrl-C as the stage meets it in its own process: Python's default handler. An earlier test in
    # this process may leave another one behind (an asyncio loop's), which would swallow the interrupt.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.3, _thread.interrupt_main).start()
        out = tmp_path / "pairs.parquet"
        with pytest.raises(KeyboardInterrupt):
            with atomic_path(out) as tmp:
                prepare_stage.sink_interruptibly(register_io_source(slow_source, schema={"x": pl.Int64}), tmp, stop)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stop.is_set() and 0 < len(served) < 100
    assert list(tmp_path.iterdir()) == []
