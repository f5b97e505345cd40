"""The `chitchat` console script: ask, chat and categories on a tiny model, through CliRunner."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from chitchat.cli import app
from test_inference import PAIRS, tiny_model  # noqa: F401  (the module-scoped model fixture)

runner = CliRunner()


def invoke(*args: str, model: Path | None = None, input: str | None = None):
    extra = ["--model", str(model)] if model is not None else []
    return runner.invoke(app, [*args, *extra], input=input)


def ask_json(model: Path, *args: str) -> dict:
    result = invoke("ask", *args, "--json", model=model)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_ask_prints_an_answer(tiny_model):
    result = invoke("ask", "Как дела?", "--category", "Юмор", model=tiny_model)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "Нормально, а у тебя?"


def test_json_has_the_documented_keys(tiny_model):
    out = ask_json(tiny_model, "Что приготовить на ужин?")
    assert set(out) == {"question", "category", "decoding", "answers", "truncated", "latency_ms"}
    assert out["question"] == "Что приготовить на ужин?" and out["category"] is None
    assert out["decoding"]["strategy"] == "greedy" and out["latency_ms"] >= 0
    assert [set(a) for a in out["answers"]] == [{"text", "score"}]


def test_json_keeps_cyrillic_readable(tiny_model):
    result = invoke("ask", "Как дела?", "--json", model=tiny_model)
    assert "Как дела?" in result.stdout and "\\u" not in result.stdout


def test_beam_n_best_sorted_by_score(tiny_model):
    out = ask_json(tiny_model, "Как сварить борщ?", "--strategy", "beam", "--beam-size", "5", "--n", "3")
    scores = [a["score"] for a in out["answers"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    text = invoke("ask", "Как сварить борщ?", "-s", "beam", "--n", "3", model=tiny_model).stdout
    assert [line.split(".")[0] for line in text.splitlines()] == ["1", "2", "3"]


def test_same_seed_same_nucleus_text(tiny_model):
    args = ("Расскажи анекдот!", "--strategy", "nucleus", "--top-p", "0.95", "--temperature", "1.5",
            "--n", "2", "--seed", "11")
    assert ask_json(tiny_model, *args)["answers"] == ask_json(tiny_model, *args)["answers"]


def test_category_matches_case_and_spaces(tiny_model):
    assert ask_json(tiny_model, "Как дела?", "--category", "  авто,   МОТО ")["category"] == "Авто, Мото"


def test_truncated_question_is_answered_with_a_note(tiny_model):
    long = "Как завести машину в мороз, если аккумулятор сел и стартер не крутит?"
    assert ask_json(tiny_model, long)["truncated"] is True
    result = invoke("ask", long, model=tiny_model)
    assert result.exit_code == 0 and "note: the question was cut" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["   "], "question is empty"),
    (["а" * 1001], "question is too long"),
    (["Как дела?", "--category", "Спорт"], "known: Авто, Мото; Еда, Кулинария; Юмор"),
    (["Как дела?", "--top-p", "1.5"], "top_p"),
    (["Как дела?", "--beam-size", "0"], "beam_size"),
    (["Как дела?", "-s", "beam", "--beam-size", "2", "--n", "3"], "n must be <= beam_size"),
    (["Как дела?", "--strategy", "sampling"], "strategy"),
    (["Как дела?", "--device", "tpu"], "device"),
])
def test_bad_input_is_one_line_and_non_zero(tiny_model, args, message):
    result = invoke("ask", *args, model=tiny_model)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


def test_missing_model_says_run_dvc_repro(tmp_path):
    for command in (["ask", "Как дела?"], ["chat"], ["categories"]):
        result = invoke(*command, model=tmp_path / "none", input="")
        assert result.exit_code == 1
        assert "run `dvc repro` first" in result.stderr and result.stderr.count("\n") == 1


def test_categories_lists_them(tiny_model):
    result = invoke("categories", model=tiny_model)
    assert result.exit_code == 0 and result.stdout.splitlines() == sorted(PAIRS)


def test_chat_session(tiny_model):
    script = "Как дела?\n/category юмор\n/strategy beam\nКак дела?\n/help\n/reset\n/quit\nне дойдёт\n"
    result = invoke("chat", model=tiny_model, input=script)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.count("bot> ") == 2 and "bot> Нормально, а у тебя?" in out
    assert "(category: Юмор)" in out and "(strategy: beam)" in out
    assert "/set KEY=VALUE" in out and "(conversation reset)" in out
    assert "не дойдёт" not in out


def test_chat_errors_do_not_end_the_session(tiny_model):
    script = ("/category Спорт\n/strategy sampling\n/set top_p=2\n/set nope=1\n/set n=x\n/frobnicate\n"
              "   \n\n/set strategy=nucleus\n/set n=2\nПривет, как жизнь?\n/category\n")  # ends with EOF
    result = invoke("chat", model=tiny_model, input=script)
    assert result.exit_code == 0, result.output
    errors = result.stderr.splitlines()
    assert len(errors) == 6 and all(e.startswith("error: ") for e in errors)
    assert "known: Авто, Мото" in errors[0] and "unknown command /frobnicate" in errors[5]
    assert "bot> 1. " in result.stdout and "bot> 2. " in result.stdout
    assert "  Юмор" in result.stdout  # /category alone lists them


def test_chat_rejects_bad_start_options(tiny_model):
    result = invoke("chat", "--category", "Спорт", model=tiny_model, input="")
    assert result.exit_code == 1 and "unknown category" in result.stderr


def test_installed_script_answers(tiny_model):
    """The console script that `pip install` puts next to the interpreter, run for real."""
    script = Path(sys.executable).parent / "chitchat"
    script = str(script) if script.exists() else shutil.which("chitchat")
    assert script, "the chitchat console script is not installed (pip install -e .)"
    done = subprocess.run([script, "ask", "Как дела?", "--category", "юмор", "--json", "--model", str(tiny_model)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["answers"][0]["text"] == "Нормально, а у тебя?"
    missing = subprocess.run([script, "ask", "Как дела?", "--model", str(tiny_model / "nope")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr


def test_answering_does_not_import_the_pipeline_libraries(tiny_model):
    """Cold start: `chitchat ask` loads torch and the tokenizer, not polars, dvclive or sklearn."""
    code = ("import sys; from typer.testing import CliRunner; from chitchat.cli import app; "
            f"r = CliRunner().invoke(app, ['ask', 'Как дела?', '--model', {str(tiny_model)!r}]); "
            "assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('polars', 'dvclive', 'sklearn', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
