"""params.yaml against its schema: the two list the same keys, and a bad value stops a stage with
one line naming key, value and what is allowed, before any work."""

import copy
import subprocess
import sys

import pytest
import yaml

from chitchat.core.params_schema import Params, check_params
from conftest import REPO

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))


def _keys(node, model, prefix=""):
    """(keys of the params mapping, keys of the schema) below `prefix`, dotted."""
    got, want = set(), set()
    for name, field in model.model_fields.items():
        want.add(prefix + name)
        sub = next((a for a in getattr(field.annotation, "__args__", ()) if isinstance(a, type)
                    and issubclass(a, Params.__mro__[1])), None)
        if sub is not None and isinstance(node.get(name), dict):
            g, w = _keys(node[name], sub, f"{prefix}{name}.")
            got |= g
            want |= w
    got |= {prefix + k for k in node}
    return got, want


def test_the_schema_and_params_yaml_have_the_same_keys():
    got, want = _keys(PARAMS, Params)
    assert got == want
    check_params(PARAMS, "params.yaml")  # and the repository's file passes


def _with(path: str, value):
    params = copy.deepcopy(PARAMS)
    node = params
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return params


@pytest.mark.parametrize("path, value, message", [
    ("train.lr", "abc", "train.lr = 'abc': must be a number"),
    ("train.epochs", "ten", "train.epochs = 'ten': must be a whole number"),
    ("model.emb_dim", -8, "model.emb_dim = -8: must be a number >= 1"),
    ("train.checkpoint_every", -1, "train.checkpoint_every = -1: must be a number >= 0"),
    ("train.lr", "0.1", "train.lr = '0.1': must be a number"),  # strict: a quoted number is text
    ("model.type", "rnn", "model.type = 'rnn': must be one of 'gru', 'lstm'"),
    ("split.test_fraction", 0.995, "split.valid_fraction + split.test_fraction must be below 1"),
    ("model.heads", 5, None),  # the default gru has no heads to divide by
    ("dedup.near.casefold", "yes", "dedup.near.casefold = 'yes': must be true or false"),
    ("train.lrr", 1, "train.lrr: unknown key"),
    ("prepare.max_answer_chars", 1, "prepare.max_answer_chars (1) is below prepare.min_answer_chars (2)"),
    ("prepare.lowercase", None, "prepare.lowercase has no value"),
    ("tokenizer.vocab_size", 5, "tokenizer.vocab_size = 5: must be a number >= 16"),
    ("evaluate.decoding.top_p", 1.5, "evaluate.decoding.top_p = 1.5: must be a number <= 1"),
])
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(path, value, message):
    if message is None:
        check_params(_with(path, value), "params.yaml")
        return
    with pytest.raises(ValueError) as caught:
        check_params(_with(path, value), "params.yaml")
    line = str(caught.value)
    assert line.startswith("params.yaml: ") and message in line and "\n" not in line


def test_cross_key_rules_of_the_transformer():
    params = _with("model.type", "transformer")
    params["model"]["heads"] = 5
    with pytest.raises(ValueError, match=r"model.emb_dim \(128\) must divide by model.heads \(5\)"):
        check_params(params, "params.yaml")
    params["model"]["heads"], params["train"]["max_src_len"] = 4, 200
    with pytest.raises(ValueError, match=r"train.max_src_len \(200\) exceeds model.max_len \(128\)"):
        check_params(params, "params.yaml")


@pytest.mark.parametrize("stage", ["prepare", "split", "train"])
def test_a_stage_stops_with_one_line_before_any_work(tmp_path, stage):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with("train.lr", "abc"), allow_unicode=True), encoding="utf-8")
    done = subprocess.run([sys.executable, str(REPO / "pipeline" / f"{stage}.py"), "--params", str(tmp_path / "params.yaml")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"{stage}: error: {tmp_path / 'params.yaml'}: train.lr = 'abc': must be a number"]
    assert list(tmp_path.iterdir()) == [tmp_path / "params.yaml"]  # nothing written
