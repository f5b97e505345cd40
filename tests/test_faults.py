"""Faults from outside the code: a damaged model folder, a full disk or a read-only output folder, a
stage killed with SIGKILL mid-write.

A damaged model file ends `chitchat ask/chat/serve/bot` with one line naming the file and what to
run; a write that fails ends a stage with one line naming the output, whose previous content stays;
a killed stage leaves no partial file at an output's name, and the next `dvc repro` redoes it.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

from chitchat.answering.checkpoint import (CHECKPOINT_NAME, REPAIR, RETRIEVAL_DIR, save_checkpoint,
                                          save_retrieval_checkpoint)
from chitchat.answering.retrieval import RetrievalConfig, RetrievalIndex
from chitchat.cli import app as cli_app
from chitchat.cli.common import one_line_errors
from chitchat.core import io as core_io
from chitchat.core.io import OutputError, atomic_path, write_json
from chitchat.core.stage import stage_errors
from chitchat.models import ModelConfig, build_model
from conftest import REPO, write_jsonl
from test_inference import PAIRS, build_tiny_model

TOKEN = "123456:ABC-def"  # shaped like a bot token; the bot must fail on the model before it uses it
INDEX_HINT = "rerun `dvc repro -f train`"  # what RetrievalIndex.load says to run


# ============================================================ damaged model folder: ask, chat, serve, bot

@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A tiny GRU with its tokenizer and retrieval index, and the retrieval baseline (model.type
    retrieval: the index is read when the model loads), as the train stage writes them."""
    root = tmp_path_factory.mktemp("faults")
    rows = [(q, a, c) for c, items in PAIRS.items() for q, a in items]
    index = RetrievalIndex.fit(pl.DataFrame(rows, schema=["question", "answer", "category"], orient="row"),
                               RetrievalConfig())
    gru = build_tiny_model(root / "gru", steps=2)
    index.save(gru / RETRIEVAL_DIR)
    baseline = root / "retrieval"
    index.save(baseline / RETRIEVAL_DIR)
    save_retrieval_checkpoint(baseline / CHECKPOINT_NAME, prepare={"max_history": 0})
    return {"gru": gru, "retrieval": baseline}


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(max(path.stat().st_size, 64)))


def truncated_checkpoint(d: Path) -> Path:
    _cut(d / CHECKPOINT_NAME)
    return d / CHECKPOINT_NAME


def garbage_checkpoint(d: Path) -> Path:
    _garbage(d / CHECKPOINT_NAME)
    return d / CHECKPOINT_NAME


def wrong_shape_checkpoint(d: Path) -> Path:
    """A valid torch file whose weights do not fit its model_config: one tensor gone, one resized."""
    ckpt = torch.load(d / CHECKPOINT_NAME, weights_only=True)
    weights = ckpt["state_dict"]
    del weights[sorted(weights)[-1]]
    first = sorted(weights)[0]
    weights[first] = torch.zeros(3, 3)
    torch.save(ckpt, d / CHECKPOINT_NAME)
    return d / CHECKPOINT_NAME


def truncated_tokenizer_meta(d: Path) -> Path:
    _cut(d / "tokenizer" / "tokenizer_meta.json")
    return d / "tokenizer"


def garbage_tokenizer_json(d: Path) -> Path:
    _garbage(d / "tokenizer" / "tokenizer.json")
    return d / "tokenizer"


def truncated_index_pairs(d: Path) -> Path:
    _cut(d / RETRIEVAL_DIR / "pairs.parquet")
    return d / RETRIEVAL_DIR


def garbage_index_vectors(d: Path) -> Path:
    _garbage(d / RETRIEVAL_DIR / "questions" / "data.npy")
    return d / RETRIEVAL_DIR


MODEL_DAMAGE = [  # (damage, what the line says, what it says to run)
    (truncated_checkpoint, "damaged checkpoint, cannot load it", REPAIR),
    (garbage_checkpoint, "damaged checkpoint, cannot load it", REPAIR),
    (wrong_shape_checkpoint, "its weights do not fit its model_config (tensors missing: 1", REPAIR),
    (truncated_tokenizer_meta, "damaged tokenizer, cannot load it (JSONDecodeError)", REPAIR),
    (garbage_tokenizer_json, "damaged tokenizer, cannot load it", REPAIR),
]
INDEX_DAMAGE = [
    (truncated_index_pairs, "damaged retrieval index (ComputeError", INDEX_HINT),
    (garbage_index_vectors, "damaged retrieval index (ValueError", INDEX_HINT),
]
COMMANDS = ["ask", "chat", "serve", "bot"]


def run_command(command: str, model: Path, monkeypatch, *extra: str):
    """`chitchat <command>` on `model` through CliRunner; serve's uvicorn and the bot's polling
    (its first use of the network) are replaced by recorders: the list says whether they ran."""
    started: list[str] = []
    import uvicorn

    import chitchat.serve.bot as bot_module

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append("uvicorn.run"))
    monkeypatch.setattr(bot_module, "run_bot", lambda *a, **k: started.append("run_bot"))
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    threads = ["--threads", str(torch.get_num_threads())]  # serve and bot set torch's threads: keep them
    args = {"ask": ["ask", "Привет"], "chat": ["chat"], "serve": ["serve", *threads], "bot": ["bot", *threads]}[command]
    result = CliRunner().invoke(cli_app, [*args, "--model", str(model), *extra], input="Привет\n/quit\n")
    return result, started


def assert_one_line(result, started, damaged: Path, problem: str, hint: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not an exception CliRunner caught
    assert "Traceback" not in result.output and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"chitchat: error: {damaged}: {problem}"), lines[0]
    assert lines[0].endswith(f"; {hint}"), lines[0]
    assert started == []  # failed on the model: no server started, no Telegram call made


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage, problem, hint", MODEL_DAMAGE, ids=[d[0].__name__ for d in MODEL_DAMAGE])
def test_a_damaged_model_file_is_one_line_naming_it_and_what_to_run(models, tmp_path, monkeypatch, command,
                                                                  damage, problem, hint):
    model = shutil.copytree(models["gru"], tmp_path / "model")
    damaged = damage(model)
    assert_one_line(*run_command(command, model, monkeypatch), damaged, problem, hint)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("damage, problem, hint", INDEX_DAMAGE, ids=[d[0].__name__ for d in INDEX_DAMAGE])
def test_a_damaged_index_of_the_retrieval_baseline_is_one_line(models, tmp_path, monkeypatch, command,
                                                               damage, problem, hint):
    model = shutil.copytree(models["retrieval"], tmp_path / "model")
    damaged = damage(model)
    assert_one_line(*run_command(command, model, monkeypatch), damaged, problem, hint)


@pytest.mark.parametrize("command", ["ask", "chat"])
@pytest.mark.parametrize("damage, problem, hint", INDEX_DAMAGE, ids=[d[0].__name__ for d in INDEX_DAMAGE])
def test_rerank_k_with_a_damaged_index_is_one_line(models, tmp_path, monkeypatch, command, damage, problem, hint):
    """The index beside a network model is read on the first rerank: chat reads it at the start
    when --rerank-k asks for it, so it fails there, before the first question."""
    model = shutil.copytree(models["gru"], tmp_path / "model")
    damaged = damage(model)
    assert_one_line(*run_command(command, model, monkeypatch, "--rerank-k", "3"), damaged, problem, hint)


def test_chat_reports_a_damaged_index_met_mid_conversation_and_goes_on(models, tmp_path):
    model = shutil.copytree(models["gru"], tmp_path / "model")
    damaged = truncated_index_pairs(model)
    result = CliRunner().invoke(cli_app, ["chat", "--model", str(model)],
                                input="/set rerank_k=3\nКак дела?\n/set rerank_k=0\nКак дела?\n/quit\n")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {damaged}: damaged retrieval index"), result.stderr
    assert errors[0].endswith(INDEX_HINT)
    assert result.stdout.count("bot> ") == 1  # the question after /set rerank_k=0 is answered


def test_serve_and_bot_meet_a_damaged_index_on_first_rerank_with_one_line_and_go_on(models, tmp_path, caplog):
    """serve and bot read rerank_k's index on the first request that asks for it: that request gets
    a one-line 503 (the bot: a one-line reply), the log one line without a traceback, and requests
    without rerank_k are answered as before."""
    from fastapi.testclient import TestClient

    from chitchat.answering.service import ChatService
    from chitchat.serve.app import create_app
    from test_bot import Harness

    model = shutil.copytree(models["gru"], tmp_path / "model")
    damaged = truncated_index_pairs(model)
    with TestClient(create_app(ChatService.load(model))) as client:
        caplog.clear()
        bad = client.post("/api/answer", json={"question": "Как дела?", "decoding": {"rerank_k": 3}})
        assert bad.status_code == 503
        assert bad.json()["detail"].startswith(f"{damaged}: damaged retrieval index") and "\n" not in bad.json()["detail"]
        assert "Traceback" not in caplog.text and str(damaged) in caplog.text
        assert client.post("/api/answer", json={"question": "Как дела?"}).status_code == 200
    tg = Harness(ChatService.load(model))
    assert tg.say("/strategy greedy rerank_k=3").startswith("Strategy: greedy")
    reply = tg.say("Как дела?")
    assert reply.startswith("error: the server cannot answer with these options now")
    tg.say("/reset")
    assert not tg.say("Как дела?").startswith("error")


def test_the_console_script_on_a_truncated_checkpoint_prints_no_traceback(models, tmp_path):
    """As a user runs it: a process of its own, stderr as the terminal shows it."""
    model = shutil.copytree(models["gru"], tmp_path / "model")
    damaged = truncated_checkpoint(model)
    proc = subprocess.run([sys.executable, "-m", "chitchat.cli", "ask", "Привет", "--model", str(model)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == f"chitchat: error: {damaged}: damaged checkpoint, cannot load it (RuntimeError); {REPAIR}\n"


def test_weights_that_fit_load_and_the_check_names_each_kind_of_misfit():
    from chitchat.answering.checkpoint import _weights_problem

    model = build_model(ModelConfig(type="gru", emb_dim=8, hidden_dim=8, vocab_size=20, pad_id=0))
    expected = model.state_dict()
    assert _weights_problem(expected, dict(expected)) is None
    keys = sorted(expected)
    extra = {**expected, "stray.weight": torch.zeros(1)}
    del extra[keys[1]]
    extra[keys[0]] = torch.zeros(1)
    assert _weights_problem(expected, extra) == (
        f"its weights do not fit its model_config (tensors missing: 1, e.g. {keys[1]}; unexpected: 1, "
        f"e.g. stray.weight; of the wrong shape: 1, e.g. {keys[0]})")
    assert _weights_problem(expected, None) == "damaged checkpoint, no weights (state_dict)"


# ============================================================ a full disk, a read-only output folder

def _load_stage(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_stage", REPO / "pipeline" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAGES = {name: _load_stage(name) for name in ("prepare", "dedup", "split")}
RECORDS = [{"question": f"Как дела номер {i}?", "category": ["Юмор", "Авто, Мото", "Еда"][i % 3],
            "responses": [f"Хорошо, спасибо {i}", f"Отлично {i}!"]} for i in range(120)]


def stage_args(root: Path) -> dict[str, list[str]]:
    """Each stage's command line with every path in `root` (params.yaml, its outputs, its metrics)."""
    params = ["--params", str(root / "params.yaml")]
    return {
        "prepare": [*params, "--out", str(root / "prepared" / "pairs.parquet"),
                    "--metrics", str(root / "metrics" / "prepare.json")],
        "dedup": [*params, "--pairs", str(root / "prepared" / "pairs.parquet"),
                  "--out", str(root / "dedup" / "pairs.parquet"), "--metrics", str(root / "metrics" / "dedup.json")],
        "split": [*params, "--pairs", str(root / "dedup" / "pairs.parquet"), "--out-dir", str(root / "split"),
                  "--metrics", str(root / "metrics" / "split.json")],
    }


def run_stage_app(stage: str, root: Path):
    return CliRunner().invoke(STAGES[stage].app, stage_args(root)[stage])


@pytest.fixture
def project(tmp_path) -> Path:
    """prepare, dedup and split run once on a small QA file: every output in place."""
    source = write_jsonl(tmp_path / "qa.jsonl", RECORDS)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["prepare"]["inputs"] = [{"path": str(source)}]
    params["split"].update(valid_fraction=0.1, test_fraction=0.1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    for stage in STAGES:
        result = run_stage_app(stage, tmp_path)
        assert result.exit_code == 0, result.output
    return tmp_path


def snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file in the folders, temporary files included, by path."""
    return {str(p): p.read_bytes() for folder in folders for p in sorted(folder.iterdir()) if p.is_file()}


def read_only(monkeypatch, folder: Path) -> str:
    """Make `folder` refuse new files (chmod 555); the reason the stage will give. Root (or any
    process with CAP_DAC_OVERRIDE) writes there all the same: then creating a file in it fails
    as on a read-only mount (EROFS)."""
    folder.chmod(0o555)
    try:
        (folder / ".probe").touch()
    except PermissionError:
        return os.strerror(errno.EACCES)
    (folder / ".probe").unlink()
    folder.chmod(0o755)
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == folder:
            name = Path(dir) / f"{kwargs.get('prefix', '')}xxxxxxxx{kwargs.get('suffix', '')}"
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(name))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(core_io.tempfile, "mkstemp", mkstemp)
    return os.strerror(errno.EROFS)


def full_disk(monkeypatch, *outputs: Path) -> None:
    """The temporary files of `outputs` are /dev/full: every write to them fails with ENOSPC in the
    kernel, through the stages' own writers (polars, pyarrow, json, torch)."""
    real_mkstemp = tempfile.mkstemp
    names = {f".{p.name}." for p in outputs}

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        if kwargs.get("prefix") in names and Path(kwargs.get("dir")) in {p.parent for p in outputs}:
            os.close(fd)
            os.unlink(name)
            os.symlink("/dev/full", name)
            fd = os.open(name, os.O_WRONLY)
        return fd, name

    monkeypatch.setattr(core_io.tempfile, "mkstemp", mkstemp)


needs_dev_full = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")

# (stage, the outputs whose writes fail, relative to the project)
WRITES = [
    ("prepare", ["prepared/pairs.parquet"]),  # polars' streaming sink
    ("prepare", ["metrics/prepare.json"]),  # write_json, after the table is in place
    ("dedup", ["dedup/pairs.parquet"]),
    ("split", ["split/train.parquet", "split/valid.parquet", "split/test.parquet"]),  # pyarrow, three at once
]


def assert_stage_line(result, stage: str, root: Path, outputs: list[str], reason: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr  # prepare's transient progress bar leaves a blank line off a terminal
    named = "|".join(re.escape(str(root / o)) for o in outputs)  # split: the three share the disk; any is right
    assert re.fullmatch(rf"{stage}: error: ({named}): cannot write \({re.escape(reason)}\)", lines[0]), lines[0]


@needs_dev_full
@pytest.mark.parametrize("stage, outputs", WRITES, ids=[f"{s}:{o[0]}" for s, o in WRITES])
def test_a_full_disk_is_one_line_and_the_previous_output_stays(project, monkeypatch, stage, outputs):
    folders = {(project / o).parent for o in outputs}
    before = snapshot(*folders)
    full_disk(monkeypatch, *(project / o for o in outputs))
    result = run_stage_app(stage, project)
    assert_stage_line(result, stage, project, outputs, os.strerror(errno.ENOSPC))
    assert snapshot(*folders) == before  # the previous files, byte for byte, and no temporary file left


@pytest.mark.parametrize("stage, outputs", WRITES, ids=[f"{s}:{o[0]}" for s, o in WRITES])
def test_a_read_only_output_folder_is_one_line_and_the_previous_output_stays(project, monkeypatch, stage, outputs):
    folder = (project / outputs[0]).parent
    before = snapshot(folder)
    try:
        reason = read_only(monkeypatch, folder)
        result = run_stage_app(stage, project)
    finally:
        folder.chmod(0o755)
    assert_stage_line(result, stage, project, outputs, reason)
    assert snapshot(folder) == before


@needs_dev_full
def test_a_checkpoint_on_a_full_disk_is_an_output_error_and_the_previous_one_stays(tmp_path, monkeypatch):
    """torch wraps the ENOSPC in a RuntimeError ("unexpected pos"); the error it was raised during names it."""
    cfg = ModelConfig(type="gru", emb_dim=8, hidden_dim=8, vocab_size=20, pad_id=0)
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, build_model(cfg), cfg, max_src_len=8)
    before = snapshot(tmp_path)
    full_disk(monkeypatch, path)
    with pytest.raises(OutputError) as caught:
        save_checkpoint(path, build_model(cfg), cfg, max_src_len=8)
    assert str(caught.value) == f"{path}: cannot write (No space left on device)"
    assert snapshot(tmp_path) == before


def _raise(exc: BaseException):
    def block():
        raise exc
    return block


@pytest.mark.parametrize("exc, line", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/raw/qa.jsonl"), "/data/raw/qa.jsonl: Permission denied"),
    (OSError(errno.EIO, "Input/output error"), "Input/output error"),
    (pl.exceptions.ComputeError("parquet: underlying IO error: No space left on device (os error 28)"),
     "cannot write (No space left on device): parquet: underlying IO error: No space left on device (os error 28)"),
    (ValueError("first line\n  second line"), "first line; second line"),
], ids=["unreadable_input", "io_error", "full_disk_outside_an_output", "multiline_message"])
def test_stage_errors_turn_os_errors_and_full_disks_into_one_line(capsys, exc, line):
    with pytest.raises(SystemExit) as caught, stage_errors("prepare"):
        _raise(exc)()
    assert caught.value.code == 1
    assert capsys.readouterr().err == f"prepare: error: {line}\n"


def test_stage_errors_leave_interrupts_bugs_and_debug_mode_as_they_were(capsys, monkeypatch):
    with pytest.raises(SystemExit) as caught, stage_errors("prepare"):
        raise KeyboardInterrupt
    assert caught.value.code == 130 and capsys.readouterr().err == "prepare: interrupted; no output was written\n"
    with pytest.raises(RuntimeError, match="boom"), stage_errors("prepare"):  # a bug keeps its traceback
        raise RuntimeError("boom")
    monkeypatch.setenv("CHITCHAT_DEBUG", "1")
    with pytest.raises(PermissionError), stage_errors("prepare"):
        raise PermissionError(errno.EACCES, "Permission denied", "/x")
    assert capsys.readouterr().err == ""


def test_the_chitchat_commands_turn_os_errors_into_one_line(capsys):
    with pytest.raises(typer.Exit) as caught, one_line_errors():
        raise PermissionError(errno.EACCES, "Permission denied", "data/model/model.pt")
    assert caught.value.exit_code == 1
    assert capsys.readouterr().err == "chitchat: error: data/model/model.pt: Permission denied\n"
    with pytest.raises(RuntimeError), one_line_errors():
        raise RuntimeError("a bug")


def test_atomic_path_tells_a_failed_write_from_a_failed_read(tmp_path):
    """Inside the block, a permission error on another file (an input) is no output error; a full
    disk is, though the error names no file; either way the previous file stays, no temp is left."""
    out = tmp_path / "out" / "pairs.json"
    write_json(out, {"old": 1})
    with pytest.raises(PermissionError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "input.jsonl"))
    with pytest.raises(OutputError, match=re.escape(f"{out}: cannot write (No space left on device)")):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OutputError, match="cannot write \\(Permission denied\\)"):
        with atomic_path(out) as tmp:
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp))
    assert json.loads(out.read_text()) == {"old": 1} and [p.name for p in out.parent.iterdir()] == ["pairs.json"]


def test_a_killed_runs_temporary_files_go_when_the_output_is_written_again(tmp_path):
    stale_file = tmp_path / ".pairs.parquet.k1ll3d_9.tmp"
    stale_dir = tmp_path / ".pairs.parquet.x7y8z9ab.tmp"
    others = [tmp_path / ".pairs.parquet.buckets.abc12345", tmp_path / ".other.parquet.k1ll3d_9.tmp",
              tmp_path / ".pairs.parquet.short.tmp"]
    stale_file.write_bytes(b"PAR1 half")
    (stale_dir / "sub").mkdir(parents=True)
    for p in others:
        p.write_bytes(b"")
    with atomic_path(tmp_path / "pairs.parquet") as tmp:
        tmp.write_bytes(b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["pairs.parquet", *(p.name for p in others)])


# ============================================================ kill -9 mid-write, then dvc repro

KILL_RECORDS = 150_000  # 300,000 pairs: each stage writes its table for some tenths of a second
SYLLABLES = "ка ро ми на то ли ве ду са пе ры зо бу гэ ча щи жу фа ло те".split()
OUTPUTS = {  # what each stage writes, relative to the project
    "prepare": ["data/prepared/pairs.parquet", "metrics/prepare.json"],
    "dedup": ["data/dedup/pairs.parquet", "metrics/dedup.json"],
    "split": ["data/split/train.parquet", "data/split/valid.parquet", "data/split/test.parquet", "metrics/split.json"],
}
TABLES = {"prepare": "data/prepared", "dedup": "data/dedup", "split": "data/split"}  # where their temporary tables are
DVC_ENV = {**os.environ, "DVC_NO_ANALYTICS": "1"}


def synthetic_qa(path: Path, records: int) -> Path:
    """QA lines of made-up words that no filter or dedup rule drops, the same for the same count."""
    rng = random.Random(7)
    words = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(5000)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(records):
            question = " ".join(rng.choices(words, k=rng.randint(3, 9))).capitalize()
            first, second = (" ".join(rng.choices(words, k=rng.randint(2, 12))) for _ in range(2))
            fh.write(f'{{"question": "{question} {i}?", "category": "Категория {i % 12}", '
                     f'"responses": ["{first}", "{second}"]}}\n')
    return path


def kill_project(root: Path, source: Path) -> Path:
    """A DVC project (no Git) whose dvc.yaml runs the repository's prepare, dedup and split scripts
    with their default paths on `source`, as the repository's dvc.yaml does."""
    (root / "data" / "raw").mkdir(parents=True)
    os.symlink(source, root / "data" / "raw" / "qa.jsonl")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["prepare"]["inputs"] = [{"path": "data/raw/qa.jsonl"}]
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    deps = {"prepare": "data/raw/qa.jsonl", "dedup": "data/prepared/pairs.parquet", "split": "data/dedup/pairs.parquet"}
    stages = {stage: {"cmd": f"{sys.executable} {REPO / 'pipeline' / f'{stage}.py'}", "deps": [deps[stage]],
                      "params": [stage], "outs": ["data/split" if stage == "split" else OUTPUTS[stage][0]],
                      "metrics": [{OUTPUTS[stage][-1]: {"cache": False}}]} for stage in OUTPUTS}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False), encoding="utf-8")
    return root


def outputs(root: Path) -> dict[str, bytes | None]:
    return {rel: (root / rel).read_bytes() if (root / rel).is_file() else None
            for rels in OUTPUTS.values() for rel in rels}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """The synthetic input, and the outputs of the three stage scripts run once, undisturbed."""
    root = tmp_path_factory.mktemp("kill")
    source = synthetic_qa(root / "qa.jsonl", KILL_RECORDS)
    ref = kill_project(root / "clean", source)
    for stage in OUTPUTS:
        proc = subprocess.run(script(stage), cwd=ref, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    expected = outputs(ref)
    assert all(expected.values())
    return source, expected


def stage_process(stage: str, cwd: Path) -> int | None:
    """The pid of the python process that runs pipeline/<stage>.py in `cwd` (dvc repro's child)."""
    script, cwd = str(REPO / "pipeline" / f"{stage}.py"), cwd.resolve()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
                if args[1:2] == [script.encode()] and Path(os.readlink(entry / "cwd")) == cwd:
                    return int(entry.name)
            except OSError:  # ended meanwhile, or not ours to read
                continue
    return None


def temporary_tables(folder: Path) -> dict[Path, int]:
    sizes = {}
    for path in folder.glob(".*.parquet.*.tmp") if folder.is_dir() else ():
        try:
            sizes[path] = path.stat().st_size
        except FileNotFoundError:  # renamed into place meanwhile
            pass
    return sizes


def kill_mid_write(project: Path, stage: str, command: list[str], min_bytes: int) -> tuple[Path, int, str] | None:
    """Run `command` (dvc, or the stage's script); once `stage` runs and one of its temporary tables
    holds `min_bytes` or more, SIGKILL the stage. The temporary file, its size at the kill and the
    command's output; None when the kill did not land mid-write (the file was renamed into place
    already, or the stage never ran)."""
    folder = project / TABLES[stage]
    before = set(temporary_tables(folder))  # a killed run's, removed when the stage starts again
    proc = subprocess.Popen(command, cwd=project, env=DVC_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    caught, pid, deadline = None, None, time.monotonic() + 300
    try:
        while caught is None and proc.poll() is None and time.monotonic() < deadline:
            pid = pid or stage_process(stage, project)
            if pid is None:
                time.sleep(0.01)
                continue
            written = [(path, size) for path, size in temporary_tables(folder).items()
                       if path not in before and size >= min_bytes]
            if written:
                os.kill(pid, signal.SIGKILL)
                caught = written[0]
            else:
                time.sleep(0.001)
    finally:
        log = proc.communicate(timeout=300)[0]
    if caught is None or not caught[0].exists():
        return None
    assert proc.returncode != 0, log  # the stage died (and dvc saw it)
    return caught[0], caught[1], log


def script(stage: str) -> list[str]:
    return [sys.executable, str(REPO / "pipeline" / f"{stage}.py")]


DVC = [sys.executable, "-m", "dvc"]


def dvc(project: Path, *args: str) -> str:
    proc = subprocess.run([*DVC, *args], cwd=project, env=DVC_ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="finds the stage's process in /proc (Linux)")
def test_kill_9_mid_write_then_dvc_repro_gives_the_clean_runs_outputs(tmp_path, clean_run):
    """`dvc repro` is run and prepare killed with SIGKILL while its table is half written (its
    temporary file holds bytes, the process runs); then again, dedup killed so; then split. After
    each kill the table is not at its name, half written (DVC removed the stage's outputs before it
    ran them and records nothing for a failed stage), only the killed process's temporary file is
    left, and `dvc status` names the stage. The next `dvc repro` redoes it (no cache to take it
    from: it never finished), removes the temporary files, and every output is byte-identical to
    the scripts' run undisturbed. A kill that lands after the rename is retried once with `dvc
    repro -f -s <stage>` killed as soon as the temporary file appears; never landing fails."""
    source, expected = clean_run
    project = kill_project(tmp_path / "project", source)
    dvc(project, "init", "--no-scm", "-q")
    with (project / ".dvc" / "config").open("a", encoding="utf-8") as config:
        config.write("    check_update = false\n    analytics = false\n")  # never the network
    for stage in OUTPUTS:
        landed = (kill_mid_write(project, stage, [*DVC, "repro"], min_bytes=4096)
                  or kill_mid_write(project, stage, [*DVC, "repro", "-f", "-s", stage], min_bytes=0))
        assert landed, f"{stage} was never killed mid-write"
        temporary, size, log = landed
        assert f"failed to reproduce '{stage}'" in log, log
        table = temporary.with_name(re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}\.tmp", temporary.name)[1])
        assert not table.exists(), f"{table} at its name after the kill"  # never a half-written file there
        now = outputs(project)
        for rel in OUTPUTS[stage]:  # split's other tables may be in place already: complete, then
            assert now[rel] is None or now[rel] == expected[rel], rel
        for before in list(OUTPUTS)[: list(OUTPUTS).index(stage)]:  # the stages before it finished
            assert all(now[rel] == expected[rel] for rel in OUTPUTS[before]), before
        assert temporary.exists() and size <= temporary.stat().st_size  # the killed process's own
        assert stage in json.loads(dvc(project, "status", "--json"))  # the next repro redoes it
    dvc(project, "repro")
    assert outputs(project) == expected
    assert json.loads(dvc(project, "status", "--json")) == {}
    assert sorted(p.name for p in (project / "data").rglob("*.tmp")) == []


@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="finds the stage's process in /proc (Linux)")
@pytest.mark.parametrize("stage", list(OUTPUTS))
def test_kill_9_of_a_stage_script_mid_write_keeps_the_previous_table(tmp_path, clean_run, stage):
    """Run without DVC (which would have removed them first), a stage killed mid-write leaves its
    previous outputs as they were: the new table only ever was a temporary sibling. Run again, it
    writes the undisturbed run's outputs and removes the killed run's temporary file."""
    source, expected = clean_run
    project = kill_project(tmp_path, source)
    order = list(OUTPUTS)
    for before in order[: order.index(stage)]:  # its input, as the stages before it wrote it
        for rel in OUTPUTS[before]:
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            (project / rel).write_bytes(expected[rel])
    previous = {}
    for rel in OUTPUTS[stage]:  # a previous run's outputs: complete, and not what this run writes
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".parquet"):
            pl.read_parquet(io.BytesIO(expected[rel])).head(100).write_parquet(project / rel)
        else:
            (project / rel).write_text('{"previous": true}\n', encoding="ascii")
        previous[rel] = (project / rel).read_bytes()
    landed = (kill_mid_write(project, stage, script(stage), min_bytes=4096)
              or kill_mid_write(project, stage, script(stage), min_bytes=0))
    assert landed, f"{stage} was never killed mid-write"
    temporary, _, log = landed
    table = temporary.with_name(re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}\.tmp", temporary.name)[1])
    assert table.read_bytes() == previous[str(table.relative_to(project))], log
    for rel in OUTPUTS[stage]:  # split's other tables may be in place already: complete, then
        assert (project / rel).read_bytes() in (previous[rel], expected[rel]), rel
    proc = subprocess.run(script(stage), cwd=project, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for rel in OUTPUTS[stage]:
        assert (project / rel).read_bytes() == expected[rel], rel
    assert not temporary.exists() and list((project / TABLES[stage]).glob("*.tmp")) == []
