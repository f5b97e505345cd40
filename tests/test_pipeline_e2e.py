"""The whole pipeline in a throwaway copy of the repository: `dvc repro` with tiny params, every
metrics file, determinism, and an experiment compared with `dvc metrics diff`."""

import json
import os
import shutil
import subprocess

import polars as pl
import pytest
import yaml

from conftest import ANEKDOT_REL, REPO

TINY = {  # the QA sample alone, so the copy reproduces in about a minute
    "prepare": {"inputs": [{"path": "data/raw/qa_data.jsonl.zip", "format": "auto"}]},
    "split": {"valid_fraction": 0.1, "test_fraction": 0.1},
    "tokenizer": {"vocab_size": 500},
    "model": {"emb_dim": 16, "hidden_dim": 32},
    "train": {"epochs": 2, "max_tokens": 512, "eval_every": 5, "warmup_steps": 5},
    "evaluate": {"num_examples": 5, "decoding": {"max_new_tokens": 12}},
}
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "DVC_NO_ANALYTICS": "1"}


def sh(*cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV})
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def reproduced_copy(root, overrides: dict):
    """A git + DVC copy of the repository's tracked and unignored files in `root`, params.yaml
    updated with `overrides` ({section: {key: value or {subkey: value}}}), after `dvc repro`."""
    files = sh("git", "ls-files", "-co", "--exclude-standard", cwd=REPO).splitlines()
    for rel in files:
        if (REPO / rel).is_file() and not rel.startswith("metrics/"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, root / rel)
    (root / "dvc.lock").unlink(missing_ok=True)
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    for name, values in overrides.items():
        for key, value in values.items():
            if isinstance(value, dict):
                params[name][key].update(value)
            else:
                params[name][key] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    sh("git", "init", "-q", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "copy", cwd=root)
    sh("dvc", "repro", cwd=root)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The repository with tiny params, reproduced."""
    return reproduced_copy(tmp_path_factory.mktemp("project"), TINY)


def load(root, name):
    return json.loads((root / "metrics" / name).read_text())


@pytest.mark.slow
def test_repro_writes_every_metric(project):
    prepare, dedup, split = load(project, "prepare.json"), load(project, "dedup.json"), load(project, "split.json")
    assert prepare["pairs_out"] > 1000 and prepare["pairs_dropped_total"] > 0
    assert dedup["pairs_in"] == prepare["pairs_out"] and dedup["removed"]["answer_equals_question"] > 0
    assert sum(split["pairs"].values()) == dedup["pairs_out"]
    assert load(project, "tokenizer.json")["vocab_size"] <= 500
    train = load(project, "train.json")
    assert train["device"] == "cpu" and train["steps"] > 0 and train["tokens_per_second"] > 0
    ev = load(project, "eval.json")
    for key in ("ppl_token", "ppl_word", "bleu", "chrf", "rouge1", "rouge2", "rougeL", "distinct_1", "distinct_2"):
        assert isinstance(ev[key], float), key
    assert ev["ppl_word"] > ev["ppl_token"] > 1
    assert "tok:intl" in ev["bleu_signature"] and ev["decoding"]["strategy"] == "greedy"
    assert (project / "metrics" / "examples.md").read_text(encoding="utf-8").count("\n") == 2 + 5
    assert (project / "metrics/live/plots/metrics/valid/loss.tsv").read_text().startswith("step\tloss")
    data = load(project, "data.json")  # the report describes the same pairs and tokenizer
    assert data["pairs"]["total"] == dedup["pairs_out"]
    assert data["unk_rate"]["valid"] == load(project, "tokenizer.json")["valid"]["unk_rate"]
    plots = json.loads(sh("dvc", "plots", "show", "--json", cwd=project))
    assert not plots.get("errors") and {"answer_tokens", "categories", "token_frequency", "unknown_tokens"} <= set(plots["data"])
    shown = json.loads(sh("dvc", "metrics", "show", "--json", cwd=project))
    assert any("metrics/eval.json" in str(v) for v in shown.values())
    assert "up to date" in sh("dvc", "status", cwd=project)


@pytest.mark.slow
def test_retraining_gives_byte_identical_eval(project):
    before = (project / "metrics" / "eval.json").read_bytes()
    sh("dvc", "repro", "-f", "-s", "train", cwd=project)
    sh("dvc", "repro", "-f", "-s", "evaluate", cwd=project)
    assert (project / "metrics" / "eval.json").read_bytes() == before


@pytest.mark.slow
def test_experiment_changes_metrics_and_diff_shows_them(project):
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "baseline", cwd=project)
    sh("dvc", "exp", "run", "-S", "train.lr=0.01", cwd=project)
    diff = json.loads(sh("dvc", "metrics", "diff", "--json", cwd=project))
    assert "metrics/eval.json" in diff and "ppl_token" in diff["metrics/eval.json"]
    assert diff["metrics/eval.json"]["ppl_token"]["diff"] != 0
    params = json.loads(sh("dvc", "params", "diff", "--json", cwd=project))
    assert params["params.yaml"]["train.lr"]["new"] == 0.01


@pytest.mark.slow
def test_decoding_experiment_reruns_only_evaluate(project):
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "before beam", cwd=project)
    before = load(project, "eval.json")
    out = sh("dvc", "exp", "run", "-S", "evaluate.decoding.strategy=beam", "-S", "evaluate.decoding.beam_size=3",
             cwd=project)
    assert "Running stage 'evaluate'" in out
    for stage in ("prepare", "dedup", "split", "tokenizer", "train"):
        assert f"Running stage '{stage}'" not in out, stage
    after = load(project, "eval.json")
    assert after["decoding"]["strategy"] == "beam" and after["decoding"]["beam_size"] == 3
    assert before["decoding"]["strategy"] == "greedy"
    assert after["ppl_token"] == before["ppl_token"]  # same model: teacher-forced scores cannot move
    assert after["decoding"]["max_new_tokens"] == 12


@pytest.mark.slow
def test_the_sample_and_the_shared_dialogues_run_through_repro_together(tmp_path):
    """Two inputs of different formats, the embedded QA sample and the shared anekdot dialogues,
    make one table with a `source` column that every stage carries through to the metrics."""
    inputs = [{"path": "data/raw/qa_data.jsonl.zip"},
              {"path": ANEKDOT_REL, "format": "dialogues", "name": "anekdots", "category": "Анекдоты"}]
    overrides = {**TINY, "prepare": {"inputs": inputs}, "split": {"valid_fraction": 0.02, "test_fraction": 0.02},
                 "train": {**TINY["train"], "epochs": 1, "max_tokens": 8192}}
    root = reproduced_copy(tmp_path, overrides)
    prepare, dedup = load(root, "prepare.json"), load(root, "dedup.json")
    assert set(prepare["read"]) == {"qa_data", "anekdots"}
    per_source = prepare["pairs_out_per_source"]
    assert per_source["qa_data"] > 1000 and per_source["anekdots"] > 150_000  # 164,774 turn pairs before filters
    train = pl.read_parquet(root / "data" / "split" / "train.parquet", columns=["source", "category"])
    assert set(train["source"].unique()) == {"qa_data", "anekdots"}
    assert train.filter(pl.col("source") == "anekdots")["category"].unique().to_list() == ["Анекдоты"]
    assert sum(load(root, "split.json")["pairs"].values()) == dedup["pairs_out"]
    assert dedup["removed"]["over_max_per_first_phrase"] > 0  # «Алло!» and the like open hundreds of dialogues
    assert load(root, "train.json")["steps"] > 0 and load(root, "eval.json")["ppl_token"] > 1
    assert load(root, "data.json")["pairs"]["total"] == dedup["pairs_out"]
    assert "up to date" in sh("dvc", "status", cwd=root)
