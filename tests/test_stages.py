"""The stage scripts as a user runs them: bad input is one line on stderr, exit 1, nothing written."""

import subprocess
import sys
import zipfile

import pytest
import yaml

from chitchat.core.io import atomic_path, write_json
from conftest import REPO, write_jsonl


def run_prepare(tmp_path, source):
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["prepare"]["inputs"] = [{"path": str(source)}]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    out, metrics = tmp_path / "out" / "pairs.parquet", tmp_path / "m" / "prepare.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "pipeline" / "prepare.py"), "--params", str(tmp_path / "params.yaml"),
         "--out", str(out), "--metrics", str(metrics)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    return proc, out, metrics


def make_missing(p):
    return p / "nope.jsonl.zip"


def make_empty(p):
    (p / "qa.jsonl").write_bytes(b"")
    return p / "qa.jsonl"


def make_corrupt_zip(p):
    (p / "qa.jsonl.zip").write_bytes(b"PK\x03\x04garbage")
    return p / "qa.jsonl.zip"


def make_zip_without_jsonl(p):
    with zipfile.ZipFile(p / "qa.jsonl.zip", "w") as z:
        z.writestr("notes.txt", "hi")
    return p / "qa.jsonl.zip"


def make_all_filtered(p):
    return write_jsonl(p / "qa.jsonl", [{"question": "Вопрос?", "responses": ["", "   "]}])


@pytest.mark.parametrize("make, problem", [
    (make_missing, "input file not found"), (make_empty, "file is empty"),
    (make_corrupt_zip, "not a valid zip archive"), (make_zip_without_jsonl, "archive has no .jsonl member"),
    (make_all_filtered, "no pairs left after filtering"),
])
def test_fatal_input_is_one_line_exit_1_and_nothing_written(tmp_path, make, problem):
    source = make(tmp_path)
    proc, out, metrics = run_prepare(tmp_path, source)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0].startswith("prepare: error: ") and str(source) in lines[0] and problem in lines[0]
    assert not out.exists() and not metrics.exists()


def test_bad_records_are_counted_in_metrics_and_the_stage_goes_on(tmp_path, qa_records):
    source = write_jsonl(tmp_path / "qa.jsonl", qa_records, ['{"question": "x"', '{"question": "нет ответов"}'])
    proc, out, metrics = run_prepare(tmp_path, source)
    assert proc.returncode == 0, proc.stderr
    import json

    report = json.loads(metrics.read_text())
    assert report["read"]["qa"]["records_skipped"] == {"malformed_json": 1, "missing_responses": 1}
    assert report["read"]["qa"]["records_skipped_first_lines"] == {"malformed_json": [4], "missing_responses": [5]}
    assert report["pairs_dropped"] == {"empty_answer": 1, "link_only_answer": 1}
    assert report["pairs_out"] == 5 and out.exists()


def test_atomic_path_leaves_nothing_when_interrupted(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"old": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise KeyboardInterrupt
    assert target.read_text() == '{\n  "old": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_metrics_json_is_ascii_for_dvc(tmp_path):
    import json

    target = tmp_path / "split.json"
    write_json(target, {"categories": {"Авто, Мото": 3, "Юмор": 1}})
    raw = target.read_bytes()
    raw.decode("ascii")  # DVC calls mostly-non-ASCII files binary and refuses them as metrics
    assert json.loads(raw) == {"categories": {"Авто, Мото": 3, "Юмор": 1}}


RUN_STAGE_APP = '''
import sys, typer
from chitchat.core.stage import run_stage
app = typer.Typer(add_completion=False)

@app.command()
def main(how: str) -> None:
    sys.stdout.write("partial line, not flushed")  # still buffered when the app returns
    sys.stderr.write("to stderr")
    if how == "exit3":
        raise typer.Exit(3)
    if how == "message":
        sys.exit("stage: error: bad")
    if how == "crash":
        raise RuntimeError("boom")

run_stage(app)
'''


@pytest.mark.parametrize("how, code", [("ok", 0), ("exit3", 3), ("message", 1), ("crash", 1)])
def test_run_stage_ends_with_the_apps_status_and_loses_no_output(tmp_path, how, code):
    script = tmp_path / "stage.py"
    script.write_text(RUN_STAGE_APP, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "partial line, not flushed" and proc.stderr.startswith("to stderr")
    if how == "message":
        assert proc.stderr.endswith("stage: error: bad\n")
    if how == "crash":  # not a SystemExit: Python's own handling, traceback and all
        assert "RuntimeError: boom" in proc.stderr
