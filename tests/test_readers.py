import json
import zipfile

import pytest

from chitchat.data.qa_jsonl import read_qa_jsonl
from chitchat.data.read_report import ReadReport
from chitchat.data.sources import InputSpec, read_inputs
from chitchat.core.errors import InputError
from conftest import write_jsonl


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.bz2", ".jsonl.xz", ".jsonl.zst", ".jsonl.zip"])
def test_reads_every_container(tmp_path, qa_records, suffix):
    path = write_jsonl(tmp_path / f"qa{suffix}", qa_records)
    report = ReadReport()
    records = list(read_qa_jsonl(path, report))
    assert [r.question for r in records] == [r["question"] for r in qa_records]
    assert records[2].responses[0] == "Науке это неизвестно…"
    assert report.records_ok == 3 and not report.skipped


def test_bad_records_are_skipped_and_counted_with_line_numbers(tmp_path, qa_records):
    raw = [
        '{"question": "обрыв',  # line 4: malformed
        '["not", "an", "object"]',  # 5
        '{"category": "Юмор", "responses": ["a"]}',  # 6: no question
        '{"question": "q", "responses": "строка"}',  # 7: responses not a list
        '{"question": "q2", "responses": [1, null]}',  # 8: no string responses
        '{"question": "q3", "responses": ["ok", 5], "category": null}',  # 9: kept, one response dropped
        '{"question": "q4"}',  # 10: no responses
    ]
    path = write_jsonl(tmp_path / "qa.jsonl", qa_records, raw)
    report = ReadReport()
    records = list(read_qa_jsonl(path, report))
    assert [r.question for r in records][-1] == "q3"
    assert records[-1].responses == ["ok"] and records[-1].category == ""
    assert dict(report.skipped) == {"malformed_json": 1, "not_an_object": 1, "missing_question": 1,
                                    "responses_not_list": 1, "no_responses": 1, "missing_responses": 1}
    assert report.skipped_lines["malformed_json"] == [4]
    assert report.skipped_lines["missing_responses"] == [10]
    assert report.responses_skipped["not_a_string"] == 3
    assert report.category_missing == 1


def test_invalid_utf8_line_is_counted(tmp_path, qa_records):
    path = write_jsonl(tmp_path / "qa.jsonl", qa_records)
    path.write_bytes(path.read_bytes() + b'{"question": "\xff\xfe", "responses": ["x"]}\n')
    report = ReadReport()
    assert len(list(read_qa_jsonl(path, report))) == 3
    assert report.skipped["invalid_utf8"] == 1


def test_pairs_are_normalized(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [
        {"question": "  Что&nbsp;такое  &quot;ёлка&quot;? ", "category": "Юмор", "responses": ["строка<br>вторая"]}])
    df, _ = read_inputs([InputSpec(str(path))], lowercase=True, yo_to_e=True)
    assert df["question"].to_list() == ['что такое "елка"?']
    assert df["answer"].to_list() == ["строка вторая"]


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "not found"),
    (lambda p: (p.write_bytes(b""), p)[1], "empty"),
    (lambda p: (p.write_text("\n\n  \n"), p)[1], "no records"),
])
def test_fatal_plain_file_problems(tmp_path, make, message):
    path = make(tmp_path / "qa.jsonl")
    with pytest.raises(InputError, match=message) as err:
        list(read_qa_jsonl(path, ReadReport()))
    assert str(path) in str(err.value)


def test_corrupt_zip_is_fatal(tmp_path):
    path = tmp_path / "qa.jsonl.zip"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(InputError, match="not a valid zip"):
        list(read_qa_jsonl(path, ReadReport()))


def test_zip_without_jsonl_member_is_fatal(tmp_path):
    path = tmp_path / "qa.jsonl.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "nothing here")
    with pytest.raises(InputError, match="no .jsonl member.*readme.txt"):
        list(read_qa_jsonl(path, ReadReport()))


def test_truncated_gzip_is_fatal(tmp_path, qa_records):
    path = write_jsonl(tmp_path / "qa.jsonl.gz", qa_records * 50)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError, match="truncated or corrupt"):
        list(read_qa_jsonl(path, ReadReport()))


@pytest.mark.parametrize("suffix", [".bz2", ".xz", ".zst"])
def test_truncated_bz2_xz_and_zst_are_fatal(tmp_path, qa_records, suffix):
    """zstandard's own stream reader ends quietly at a cut inside a frame: ours says so."""
    path = write_jsonl(tmp_path / f"qa.jsonl{suffix}", qa_records * 200)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError, match=f"qa.jsonl{suffix}: compressed stream is truncated or corrupt"):
        list(read_qa_jsonl(path, ReadReport()))


def test_zst_of_several_frames_reads_every_frame(tmp_path, qa_records):
    """The dump's chunks are written a frame at a time: a file of several frames is one stream."""
    import zstandard

    one = write_jsonl(tmp_path / "one.jsonl", qa_records).read_bytes()
    path = tmp_path / "qa.jsonl.zst"
    path.write_bytes(b"".join(zstandard.ZstdCompressor(level=l).compress(one) for l in (1, 3, 19)))
    records = list(read_qa_jsonl(path, ReadReport()))
    assert [r.question for r in records] == [r["question"] for r in qa_records] * 3


def test_a_glob_reads_its_files_in_name_order_as_one_input(tmp_path, qa_records):
    """`data/raw/*.jsonl.zst` as people have the dump: every match, name order, any compression
    mixed; the report counts lines per file and line numbers run on through them."""
    folder = tmp_path / "dump"
    (folder / "sub").mkdir(parents=True)
    write_jsonl(folder / "part-2.jsonl.zst", qa_records[2:])
    write_jsonl(folder / "part-1.jsonl.gz", qa_records[:2])
    write_jsonl(folder / "sub" / "part-3.jsonl.bz2", qa_records[:1])
    (folder / "notes.txt").write_text("not a match")
    pairs, reports = read_inputs([InputSpec(str(folder / "part-*.jsonl.*"), name="otvety")])
    assert pairs.unique("qid", maintain_order=True)["question"].to_list() == [r["question"] for r in qa_records]
    assert reports["otvety"].members == {str(folder / "part-1.jsonl.gz"): 2, str(folder / "part-2.jsonl.zst"): 1}
    deep, reports = read_inputs([InputSpec(str(folder / "**" / "part-*.jsonl.*"), name="otvety")])
    assert deep["qid"].n_unique() == 4 and len(reports["otvety"].members) == 3
    assert pairs["line"].unique().to_list() == [1, 2, 3]


def test_a_glob_that_matches_nothing_or_a_bad_file_names_it(tmp_path, qa_records):
    with pytest.raises(InputError, match=r"nothing-\*\.jsonl: the pattern matches no file"):
        read_inputs([InputSpec(str(tmp_path / "nothing-*.jsonl"))])
    write_jsonl(tmp_path / "a.jsonl.zst", qa_records)
    bad = write_jsonl(tmp_path / "b.jsonl.zst", qa_records * 100)
    bad.write_bytes(bad.read_bytes()[:-30])
    with pytest.raises(InputError, match=r"b\.jsonl\.zst: compressed stream is truncated or corrupt after line 3"):
        read_inputs([InputSpec(str(tmp_path / "*.jsonl.zst"))])


def _glob_of_parts(folder, count: int = 5, records: int = 400):
    """`count` files of a glob, one of each compression, with a zip of two members among them."""
    folder.mkdir()
    suffixes = [".jsonl.gz", ".jsonl.bz2", ".jsonl.xz", ".jsonl.zst", ".jsonl.zip", ".jsonl"]
    for part in range(count):
        rows = [{"question": f"вопрос {part}-{i}", "responses": [f"ответ {i}"]} for i in range(records)]
        path = folder / f"part-{part:02d}{suffixes[part % len(suffixes)]}"
        if path.suffix == ".zip":
            with zipfile.ZipFile(path, "w") as z:
                for half, name in ((rows[: records // 2], "a.jsonl"), (rows[records // 2:], "b.jsonl")):
                    z.writestr(name, "\n".join(json.dumps(r, ensure_ascii=False) for r in half) + "\n")
        else:
            write_jsonl(path, rows)
    return str(folder / "part-*")


@pytest.mark.parametrize("read_parts", [2, 3, 8])
def test_a_globs_files_decompressed_at_once_give_the_chunks_of_one_at_a_time(tmp_path, read_parts):
    """Lines, line numbers and member names are the same whatever the number of files read at once."""
    from chitchat.data.lines import iter_line_chunks

    pattern = _glob_of_parts(tmp_path / "dump")

    def chunks(parts):
        return [(c.first_line, c.member, c.lines.to_list()) for c in iter_line_chunks(pattern, chunk_bytes=3000,
                                                                                    read_parts=parts)]

    one = chunks(1)
    assert len(one) > 20 and one[0][0] == 1
    assert chunks(read_parts) == one
    members = list(dict.fromkeys(member for _, member, _ in one))
    assert members[4].endswith("part-04.jsonl.zip::a.jsonl") and members[5].endswith("part-04.jsonl.zip::b.jsonl")
    assert sum(len(lines) for *_, lines in one) == 5 * 400


def test_files_of_a_glob_are_decompressed_on_threads_at_once_and_all_stop_with_the_reader(tmp_path):
    import threading

    from chitchat.data.lines import iter_line_chunks

    pattern = _glob_of_parts(tmp_path / "dump", count=6, records=3000)

    def readers():
        return [t for t in threading.enumerate() if t.name == "chitchat-reader"]

    before = len(readers())
    stream = iter_line_chunks(pattern, chunk_bytes=2000, read_parts=3)
    first = next(stream)
    assert first.member.endswith("part-00.jsonl.gz")
    assert len(readers()) - before == 3  # this file's and the next two
    stream.close()  # a consumer that stops in the first file
    assert len(readers()) == before


@pytest.mark.parametrize("read_parts", [1, 4])
def test_a_corrupt_file_in_a_glob_read_ahead_is_named_after_the_lines_before_it(tmp_path, read_parts):
    """A later file fails while the reader is still in an earlier one: the error waits its turn,
    names that file and counts the lines of the files before it."""
    from chitchat.data.lines import iter_line_chunks

    pattern = _glob_of_parts(tmp_path / "dump", count=4)
    bad = tmp_path / "dump" / "part-02.jsonl.xz"
    bad.write_bytes(bad.read_bytes()[:-200])
    read = []
    with pytest.raises(InputError, match=r"part-02\.jsonl\.xz: compressed stream is truncated or corrupt after line (\d+)") as err:
        for chunk in iter_line_chunks(pattern, chunk_bytes=3000, read_parts=read_parts):
            read.append(chunk.member)
    line = int(str(err.value).rsplit(" ", 1)[1])
    assert 800 <= line < 1200 and set(read) >= {str(tmp_path / "dump" / f"part-0{i}.jsonl.{s}") for i, s in ((0, "gz"), (1, "bz2"))}


def test_ordered_map_keeps_the_order_raises_in_order_and_bounds_the_work_in_flight():
    import threading
    import time

    from chitchat.data.parallel import ordered_map

    def slow(i):
        time.sleep(0.02 * (i % 3))  # later items often finish first
        return i * i

    assert list(ordered_map(slow, range(12), workers=3)) == [i * i for i in range(12)]
    assert list(ordered_map(slow, range(5), workers=1)) == [0, 1, 4, 9, 16]

    def failing(i):
        if i == 4:
            raise ValueError("item 4")
        return i

    results = []
    with pytest.raises(ValueError, match="item 4"):
        for value in ordered_map(failing, range(10), workers=3):
            results.append(value)
    assert results == [0, 1, 2, 3]  # everything before the failing item, nothing after

    started, lock = [], threading.Lock()

    def tracked(i):
        with lock:
            started.append(i)
        return i

    pulled = iter(range(1000))
    stream = ordered_map(tracked, pulled, workers=2)
    assert next(stream) == 0
    stream.close()  # a consumer that stops: no more items are taken from the input
    assert len(started) <= 3 and next(pulled) <= 3


def test_chunks_parsed_on_several_threads_give_the_same_table_and_reports(tmp_path, qa_records, monkeypatch):
    """Many small chunks, bad lines spread over them: pairs, qids and every count and first line
    number are the same with one worker and with four."""
    import chitchat.data.lines as lines_module

    raw = ['{"question": "обрыв', '{"question": "q", "responses": "строка"}', '{"question": "q3", "responses": ["ok", 5]}',
           "\x00{bad", '{"question": "  ", "responses": ["a"]}'] * 40
    lines = [json.dumps(r, ensure_ascii=False) for r in qa_records] * 30
    mixed = [x for pair in zip(lines, raw) for x in pair]
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(mixed) + "\n", encoding="utf-8")
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("\n".join(f"вопрос {i}\tответ {i}" if i % 7 else f"без табуляции {i}" for i in range(600)),
                   encoding="utf-8")
    monkeypatch.setattr(lines_module, "CHUNK_BYTES", 700)  # dozens of chunks
    specs = [InputSpec(str(path)), InputSpec(str(tsv))]
    one, reports_one = read_inputs(specs, workers=1)
    four, reports_four = read_inputs(specs, workers=4)
    assert one.equals(four)
    assert {k: r.as_dict() for k, r in reports_one.items()} == {k: r.as_dict() for k, r in reports_four.items()}
    assert one["qid"].n_unique() == reports_one["qa"].records_ok + reports_one["pairs"].records_ok
    assert reports_one["qa"].skipped_lines["malformed_json"] == [2, 8, 12, 18, 22]  # NUL removed, "{bad" too
    assert reports_one["pairs"].skipped["no_tab"] == 86


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_zip_members_read_alike_whatever_their_compression(tmp_path, method, monkeypatch):
    """Deflated members go through ISA-L, the others through zipfile: the same lines either way,
    read in many small blocks (a block ends inside the deflated data, and inside a line)."""
    import chitchat.data.lines as lines_module
    from chitchat.data.archives import open_zip_member
    from chitchat.data.lines import iter_line_chunks, iter_lines

    lines = [json.dumps({"question": f"вопрос {i}", "responses": [f"ответ {i * 7919 % 1000}"] * (i % 4 + 1)},
                        ensure_ascii=False) for i in range(5000)]
    path = tmp_path / "qa.jsonl.zip"
    with zipfile.ZipFile(path, "w", method) as z:
        z.writestr("a.jsonl", "\n".join(lines[:3000]) + "\n")
        z.writestr("b.jsonl", "\n".join(lines[3000:]))  # no line end at the end
    monkeypatch.setattr(lines_module, "CHUNK_BYTES", 4099)
    read = [line for chunk in iter_line_chunks(path) for line in chunk.lines.to_list()]
    assert read == lines
    assert [raw.decode() for _, raw in iter_lines(path)] == lines
    with zipfile.ZipFile(path) as z:
        want = z.read("a.jsonl")
        with open_zip_member(z, path, "a.jsonl") as member:  # all at once
            assert member.read() == want
        for size in (1, 8192, 1 << 20):  # small reads drain what the inflater holds back
            with open_zip_member(z, path, "a.jsonl") as member:
                assert b"".join(iter(lambda: member.read(size), b"")) == want


def test_a_zst_file_read_to_its_end_stays_at_its_end(tmp_path):
    """After the last byte every read is empty: a reader that handed its last block out again
    would never end (a review mend once did exactly that)."""
    import zstandard

    from chitchat.data.archives import _zstd_open

    data = b"".join(f"line {i}\n".encode() for i in range(50_000))
    path = tmp_path / "x.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(data[:200_000]) + zstandard.ZstdCompressor().compress(data[200_000:]))
    with _zstd_open(path) as f:
        assert f.read() == data
        assert f.read() == b"" and f.read(10) == b""
