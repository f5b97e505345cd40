"""Text from any user with invalid UTF-8 or control characters: replaced, said in one line where
there is a terminal, and the session goes on (ask, chat, the HTTP API, the Telegram bot)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from chitchat.serve.app import create_app
from chitchat.text.user_text import clean_user_text, replaced_note
from test_bot import tg  # noqa: F401  (the offline Telegram harness)
from test_inference import service, tiny_model  # noqa: F401  (module-scoped fixtures)

ANSWER = "Нормально, а у тебя?"  # the tiny model's answer to «Как дела?»


@pytest.mark.parametrize("text, want, found", [
    ("Как дела?", "Как дела?", []),
    ("Как\udcff дела?", "Как\ufffd дела?", ["invalid UTF-8"]),  # what Python makes of the byte 0xff
    ("\ud83d one half of a pair", "\ufffd one half of a pair", ["invalid UTF-8"]),
    ("Как\x07 де\x00ла?\x1b[31m", "Как дела?[31m", ["control characters"]),
    ("a\tb\r\nc\x85d", "a b  c d", []),  # breaks are spaces, as normalize_text makes them
    ("\udc80\x9b", "\ufffd", ["invalid UTF-8", "control characters"]),
    ("emoji 😀 and ё stay", "emoji 😀 and ё stay", []),
])
def test_clean_user_text(text, want, found):
    assert clean_user_text(text) == (want, found)
    assert clean_user_text(want)[1] == []  # cleaning twice changes nothing more
    want.encode("utf-8")  # printable and tokenizable


def _script() -> str:
    script = Path(sys.executable).parent / "chitchat"
    return str(script) if script.exists() else shutil.which("chitchat")


def test_ask_with_invalid_utf8_in_argv_answers_with_a_note(tiny_model):
    done = subprocess.run([_script(), "ask", b"\xd0\x9a\xd0\xb0\xd0\xba \xd0\xb4\xd0\xb5\xd0\xbb\xd0\xb0?\xff",
                           "--json", "--model", str(tiny_model)], capture_output=True, timeout=120)
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert stderr.strip() == replaced_note(["invalid UTF-8"]) and "Traceback" not in stderr
    out = json.loads(done.stdout)
    assert out["question"] == "Как дела?\ufffd" and out["answers"][0]["text"]


def test_chat_with_invalid_utf8_and_controls_on_stdin_goes_on(tiny_model):
    lines = b"\xff\xfe\nKak\x07\n\xd0\x9a\xd0\xb0\xd0\xba \xd0\xb4\xd0\xb5\xd0\xbb\xd0\xb0?\x00\n/quit\n"
    done = subprocess.run([_script(), "chat", "--category", "юмор", "--model", str(tiny_model)], input=lines,
                          capture_output=True, timeout=120)
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert "Traceback" not in stderr
    notes = [line for line in stderr.splitlines() if line.startswith("(note:")]
    assert notes == [replaced_note(["invalid UTF-8"]), replaced_note(["control characters"]),
                     replaced_note(["control characters"])]
    out = done.stdout.decode()
    assert out.count("bot> ") == 3 and f"bot> {ANSWER}" in out  # every line answered, the last as a clean one


def test_api_refuses_lone_surrogates_in_one_line_and_cleans_control_characters(service):
    with TestClient(create_app(service)) as client:
        for body in ('{"question": "Как дела?\\udcff"}', '{"question": "Как дела?", "history": ["\\ud800"]}'):
            response = client.post("/api/answer", content=body.encode(), headers={"content-type": "application/json"})
            assert response.status_code == 422, response.text
            assert "unable to parse raw data as a unicode string" in response.json()["detail"]
        clean = client.post("/api/answer", json={"question": "Как\u0007 дела?", "category": "юмор\u0000"})
        assert clean.status_code == 200, clean.text  # and the server goes on
        assert clean.json()["question"] == "Как дела?" and clean.json()["answers"][0]["text"] == ANSWER


def test_bot_answers_text_with_control_characters(tg):
    tg.say("/category юмор")
    assert tg.say("Как\x07 дела?\udcff")
    assert tg.say("Как де\x00ла?") == ANSWER
