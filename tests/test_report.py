"""The data report: histograms, frequency-rank curve, unknown rate, and the stage's files."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import polars as pl
import pytest
import yaml

from chitchat.evaluation.data_report import ReportConfig, data_report, frequency_rank
from chitchat.text.tokenizer import SPECIALS, UNKNOWN_CATEGORY, Tokenizer, category_token, train_tokenizer
from conftest import REPO

WORDS = ["a", "b", "c"]


def word_tokenizer() -> Tokenizer:
    """One token per known word, <unk> for any other: token counts can be worked out by hand."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    cats = {"X": category_token("X"), "Y": category_token("Y")}
    vocab = {t: i for i, t in enumerate(SPECIALS + [UNKNOWN_CATEGORY, *cats.values()] + WORDS)}
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Tokenizer("tokenizers", backend, cats)


def frame(rows):
    return pl.DataFrame(rows, schema=["question", "category", "answer"], orient="row")


HAND = {
    # train tokenizer texts: "a b", "b" (distinct questions) + "a", "a c", "c c c" -> c 4, a 3, b 2
    "train": frame([("a b", "X", "a"), ("a b", "X", "a c"), ("b", "Y", "c c c")]),
    # valid: "zzz a b" once + "b yyy yyy" + "c" -> 7 tokens, 3 unknown (10 and 4 if the question counted twice)
    "valid": frame([("zzz a b", "X", "b yyy yyy"), ("zzz a b", "X", "c")]),
    "test": frame([("c", "Y", "a")]),
}


@pytest.fixture(scope="module")
def hand_report():
    return data_report(HAND, word_tokenizer(), ReportConfig(char_bin=2, token_bin=1))


def test_unknown_rate_equals_the_hand_count(hand_report):
    assert hand_report.metrics["unk_rate"] == {"train": 0.0, "valid": 3 / 7, "test": 0.0}
    unknown = hand_report.plots["unknown_tokens"]
    assert unknown["tokens"].to_list() == [9, 7, 2] and unknown["unknown"].to_list() == [0, 3, 0]


def test_token_counts_ranks_and_coverage_by_hand(hand_report):
    curve = hand_report.plots["token_frequency"]
    assert curve["rank"].to_list() == [1, 2, 3] and curve["count"].to_list() == [4, 3, 2]
    assert curve["coverage"].to_list() == [round(400 / 9, 4), round(700 / 9, 4), 100.0]
    tokens = hand_report.metrics["tokens"]
    assert tokens["train_tokens"] == 9 and tokens["train_distinct"] == 3 and tokens["top100_share"] == 1.0


def test_histograms_count_every_pair_once(hand_report):
    pairs = sum(f.height for f in HAND.values())
    for name, unit in [("question_chars", "chars"), ("answer_chars", "chars"),
                       ("question_tokens", "tokens"), ("answer_tokens", "tokens")]:
        hist = hand_report.plots[name]
        assert hist["pairs"].sum() == pairs, name
        step = 2 if unit == "chars" else 1
        assert hist[unit].to_list() == list(range(0, hist[unit].max() + 1, step)), name  # empty bins kept
        for split in HAND:
            assert hist[split].sum() == pytest.approx(100, abs=0.01), (name, split)
    # answers in tokens: 1, 2, 3 (train), 3, 1 (valid), 1 (test)
    assert hand_report.plots["answer_tokens"]["pairs"].to_list() == [0, 3, 1, 2]
    assert hand_report.metrics["lengths"]["train"]["answer_tokens"] == {"mean": 2.0, "median": 2.0, "p95": 3, "max": 3}


def test_pairs_per_category(hand_report):
    cats = hand_report.plots["categories"]
    assert cats.rows() == [("X", 4, 2, 2, 0), ("Y", 2, 1, 0, 1)]
    assert hand_report.metrics["pairs_per_category"] == {"X": 4, "Y": 2}
    assert hand_report.metrics["pairs"] == {"train": 3, "valid": 2, "test": 1, "total": 6}
    assert hand_report.metrics["questions"] == {"train": 2, "valid": 1, "test": 1}


CORPUS = [f"{w} {v}" for w in ("привет", "как дела", "ну да", "щука ест", "ответ 42")
          for v in ("ок", "нет", "да))")]


def test_frequency_rank_curve_is_non_increasing_and_subsampled_on_a_log_grid():
    tok = train_tokenizer(CORPUS * 20, ["X"], vocab_size=300, min_frequency=1)
    ids = pl.Series(tok.encode_batch([f"{a} {b}" for a in CORPUS for b in CORPUS])).explode()
    full, curve = frequency_rank(ids, points=10)
    assert full.height > 10 and full["count"].sum() == ids.len()
    for table in (full, curve):
        counts = table["count"].to_list()
        assert all(x >= y for x, y in zip(counts, counts[1:]))
    assert curve.height <= 10 and curve["rank"][0] == 1 and curve["rank"][-1] == full.height
    assert full["coverage"][-1] == 100.0


def test_bad_params_are_rejected():
    with pytest.raises(ValueError, match="rank_points"):
        ReportConfig(rank_points=1)
    with pytest.raises(ValueError, match="char_bin"):
        ReportConfig(char_bin=0)


# -- the stage as dvc runs it --------------------------------------------------------------------

def declared():
    """(plot files with their columns, every other path) that dvc.yaml says the report stage writes."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    stage = dvc["stages"]["report"]
    paths = [next(iter(o)) if isinstance(o, dict) else o for o in stage["outs"] + stage["metrics"]]
    files = {}
    for plot in dvc["plots"]:
        (props,) = plot.values()
        for path, cols in props["y"].items():
            if path.startswith("metrics/report/"):
                files.setdefault(path, set()).update([props["x"], *([cols] if isinstance(cols, str) else cols)])
    return files, paths


def run_stage(tmp_path, report_params=None):
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["report"].update(report_params or {})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(REPO / "pipeline" / "report.py"), "--split-dir", "split", "--tokenizer-dir", "tok"],
        capture_output=True, text=True, cwd=tmp_path,  # output options left at their defaults: dvc.yaml's paths
    )


@pytest.fixture
def stage_inputs(tmp_path):
    (tmp_path / "split").mkdir()
    for name, part in HAND.items():
        part.write_parquet(tmp_path / "split" / f"{name}.parquet")
    word_tokenizer().save(tmp_path / "tok")
    return tmp_path


def test_stage_writes_every_file_dvc_yaml_declares(stage_inputs):
    proc = run_stage(stage_inputs)
    assert proc.returncode == 0, proc.stderr
    files, paths = declared()
    assert len(files) >= 7 and set(paths) == {"metrics/report", "docs/token_frequency.svg", "metrics/data.json"}
    for path, columns in files.items():
        header = (stage_inputs / path).read_text(encoding="utf-8").splitlines()[0].split(",")
        assert columns <= set(header), (path, columns, header)
    written = {f"metrics/report/{p.name}" for p in (stage_inputs / "metrics/report").iterdir()}
    assert written == set(files)  # no stray or temporary files
    data = json.loads((stage_inputs / "metrics/data.json").read_bytes().decode("ascii"))
    assert data["unk_rate"]["valid"] == 3 / 7 and data["pairs"]["total"] == 6
    ET.fromstring((stage_inputs / "docs/token_frequency.svg").read_text(encoding="utf-8"))  # well-formed
    before = {p: (stage_inputs / p).read_bytes() for p in [*files, "metrics/data.json", "docs/token_frequency.svg"]}
    assert run_stage(stage_inputs).returncode == 0
    assert {p: (stage_inputs / p).read_bytes() for p in before} == before  # same inputs, same bytes


@pytest.mark.parametrize("breakage, problem", [
    (lambda root: (root / "tok" / "tokenizer_meta.json").unlink(), "not a tokenizer directory"),
    (lambda root: (root / "split" / "test.parquet").unlink(), "split file not found"),
    (None, "report.bins: unknown key"),
])
def test_bad_input_is_one_line_and_nothing_written(stage_inputs, breakage, problem):
    if breakage:
        breakage(stage_inputs)
    proc = run_stage(stage_inputs, None if breakage else {"bins": 3})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("report: error: ") and problem in proc.stderr
    assert not (stage_inputs / "metrics").exists() and not (stage_inputs / "docs").exists()
