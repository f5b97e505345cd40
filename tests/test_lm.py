"""Style continuation (model.task lm): the decoder-only transformer, the `text` reader, training
windows, decoding through chitchat.answering.decoding, the stages end to end and `chitchat continue`."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from typer.testing import CliRunner

from chitchat.answering.checkpoint import CHECKPOINT_NAME, save_checkpoint
from chitchat.cli import app
from chitchat.answering.continuation import continue_texts
from chitchat.data.dedup import DedupConfig, dedup_pairs
from chitchat.data.filters import FilterConfig, apply_filters
from chitchat.data.prose import TEXT_MARKER
from chitchat.data.sources import InputSpec, read_inputs
from chitchat.data.split import SplitConfig, split_pairs
from chitchat.answering.decoding import DecodingConfig, generate
from chitchat.core.errors import InputError
from chitchat.models import ModelConfig, build_model
from chitchat.text.tokenizer import train_tokenizer
from chitchat.training.batching import encode_text_windows
from chitchat.training.loop import TrainConfig, train
from conftest import REPO

VOCAB, PAD, BOS, EOS = 40, 0, 2, 3
TALES = [
    "Жили-были дед да баба, и была у них курочка Ряба. Снесла курочка яичко, не простое, а золотое.",
    "Стоит в поле теремок. Бежит мимо мышка-норушка, увидела теремок, остановилась и спрашивает.",
]
runner = CliRunner()


def tiny_lm(context: int = 0, max_len: int = 24, **extra):
    torch.manual_seed(0)
    cfg = ModelConfig(task="lm", type="transformer", emb_dim=16, hidden_dim=32, heads=2, layers=2, dropout=0.0,
                      max_len=max_len, context=context, vocab_size=VOCAB, pad_id=PAD, **extra)
    return build_model(cfg).eval()


def random_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    ids = torch.randint(5, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = BOS
    return ids


def no_prompt(batch: int) -> torch.Tensor:
    return torch.zeros(batch, 0, dtype=torch.long)


# --- the model --------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [{}, {"positions": "learned", "tie_embeddings": False}])
def test_changing_a_future_token_leaves_earlier_logits_alone(extra):
    model = tiny_lm(**extra)
    ids = random_ids(2, 12)
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1 - 5) % (VOCAB - 5) + 5
    a, b = model(no_prompt(2), ids), model(no_prompt(2), changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])  # the changed token is seen from its own position on


def test_incremental_decoding_equals_full_recompute_for_right_padded_prompts():
    model = tiny_lm()
    ids = random_ids(2, 14)
    full = model(no_prompt(2), ids)  # (2, 14, vocab): logits after each token
    lengths = [6, 3]
    src = ids[:, :6].clone()
    src[1, 3:] = PAD  # a shorter prompt in the same batch
    enc = model.encode(src)
    cache = model.init_cache(enc)
    logits, cache = model.decode_step(torch.full((2,), BOS), enc, cache)  # the prompt's own last logits
    for row, n in enumerate(lengths):
        assert torch.allclose(logits[row], full[row, n - 1], atol=1e-5)
    for step in range(5):
        fed = torch.tensor([ids[row, n + step] for row, n in enumerate(lengths)])
        logits, cache = model.decode_step(fed, enc, cache)
        for row, n in enumerate(lengths):
            assert torch.allclose(logits[row], full[row, n + step], atol=1e-5)
    # teacher forcing after a prompt: tgt_in[:, 0] stands for the prompt's end
    tgt_in = torch.cat([torch.full((2, 1), BOS), ids[:1, 6:10].expand(2, -1)], dim=1)
    assert torch.allclose(model.decode(tgt_in, enc)[0], full[0, 5:10], atol=1e-5)


def test_past_the_context_the_model_rereads_the_last_half():
    model = tiny_lm(context=8)
    ids = random_ids(1, 14)
    enc = model.encode(ids[:, :1])
    cache = model.init_cache(enc)
    _, cache = model.decode_step(torch.tensor([BOS]), enc, cache)
    for i in range(1, 14):
        logits, cache = model.decode_step(ids[:, i], enc, cache)
        if i < 8:  # inside the context: as a full pass from the start
            expected = model(no_prompt(1), ids[:, : i + 1])[:, -1]
        else:  # at 8 tokens the last 4 are re-read from position 0, then it grows again up to 8
            start = 4 + ((i - 8) // 4) * 4
            expected = model(no_prompt(1), ids[:, start : i + 1])[:, -1]
        assert torch.allclose(logits, expected, atol=1e-5), i
    assert int(cache["pos"].max()) <= 8


def test_every_strategy_and_repetition_control_runs_beyond_the_context():
    model = tiny_lm(context=8)
    src = random_ids(2, 5)
    src[1, 2:] = PAD
    for cfg in (DecodingConfig(strategy="greedy", max_new_tokens=30, min_new_tokens=30, no_repeat_ngram_size=2),
                DecodingConfig(strategy="beam", beam_size=3, n=2, max_new_tokens=30, repetition_penalty=1.5),
                DecodingConfig(strategy="nucleus", n=2, top_p=0.9, max_new_tokens=30, seed=3)):
        hyps = generate(model, src, cfg, BOS, EOS, banned_ids=[PAD, 1, BOS, 4])
        assert [len(h) for h in hyps] == [cfg.n, cfg.n]
        for h in (h for row in hyps for h in row):
            assert len(h.ids) <= 30 and not {PAD, 1, BOS, 4} & set(h.ids)
            if cfg.no_repeat_ngram_size:
                grams = list(zip(h.ids, h.ids[1:]))
                assert len(grams) == len(set(grams)) and len(h.ids) == 30


def test_lm_needs_a_transformer():
    with pytest.raises(ValueError, match="model.task lm needs model.type transformer"):
        ModelConfig(task="lm", type="gru")
    with pytest.raises(ValueError, match="model.task must be one of"):
        ModelConfig(task="chat")


def test_windows_cover_every_token_once_and_keep_long_texts():
    tok = train_tokenizer(TALES * 3, [], vocab_size=120)
    windows = encode_text_windows(TALES, tok, 8)
    seqs = [[tok.bos_id] + ids + [tok.eos_id] for ids in tok.encode_batch(TALES)]
    assert all(not w.src and 2 <= len(w.tgt) <= 8 for w in windows)
    targets = [t for w in windows for t in w.tgt[1:]]
    assert targets == [t for seq in seqs for t in seq[1:]]  # BOS never a target, EOS always
    assert len(windows) == sum(-(-(len(s) - 1) // 7) for s in seqs) > len(TALES)
    with pytest.raises(ValueError, match="max_tgt_len"):
        encode_text_windows(TALES, tok, 1)


# --- a tiny lm that memorizes two tales ---------------------------------------------------------------

def memorized_lm():
    tok = train_tokenizer(TALES * 3, ["Сказки"], vocab_size=150)
    window = 48
    assert max(len(ids) for ids in tok.encode_batch(TALES)) + 2 <= window
    cfg = ModelConfig(task="lm", type="transformer", emb_dim=48, hidden_dim=96, heads=4, layers=2, dropout=0.0,
                      max_len=window, context=window, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    torch.manual_seed(0)
    model = build_model(cfg)
    examples = encode_text_windows(TALES, tok, window)
    tcfg = TrainConfig(epochs=150, max_tokens=4096, lr=3e-3, warmup_steps=10, eval_every=50, patience=0)
    result = train(model, examples, examples, tcfg, tok.pad_id, torch.device("cpu"))
    return model.eval(), tok, cfg, result


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> Path:
    """A memorized lm written as the train stage writes data/model/."""
    model, tok, cfg, result = memorized_lm()
    directory = tmp_path_factory.mktemp("lm")
    tok.save(directory / "tokenizer")
    save_checkpoint(directory / CHECKPOINT_NAME, model, cfg, tokenizer_dir="tokenizer", max_src_len=48,
                    max_tgt_len=48, step=result.best_step, best_valid_loss=result.best_valid_loss,
                    prepare={"lowercase": False, "yo_to_e": False})
    return directory


def test_a_tiny_lm_learns_the_text_and_generate_continues_it(lm_dir):
    from chitchat.answering.checkpoint import load_checkpoint, load_tokenizer

    model, ckpt = load_checkpoint(lm_dir)
    tok = load_tokenizer(lm_dir, ckpt)
    assert ckpt["best_valid_loss"] < 0.1  # teacher-forced NLL per token on the text itself
    prompts = ["Жили-были дед да баба,", "Стоит в поле теремок. Бежит"]  # different lengths, one batch
    for strategy in ("greedy", "beam"):
        out = continue_texts(model, tok, prompts, DecodingConfig(strategy=strategy, max_new_tokens=60), "cpu")
        assert [o[0].text for o in out] == TALES, strategy
        assert out[0][0].continuation.startswith(" и была у них")


# --- the text reader ----------------------------------------------------------------------------------

TEXT = "Первый абзац,\r\nего вторая строка.\r\n\r\n\r\n   Второй   абзац.  \r\n \t \r\nТретий &amp; последний\r\n"
PARAGRAPHS = ["Первый абзац, его вторая строка.", "Второй абзац.", "Третий & последний"]


def write_as(path: Path, data: bytes) -> Path:
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data))
    elif path.name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("book/text.txt", data)
    elif path.name.endswith(".tar.xz"):
        with tarfile.open(path, "w:xz") as tar:
            info = tarfile.TarInfo("text.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["book.txt", "book.txt.gz", "book.zip", "book.tar.xz"])
def test_text_reader_gives_one_row_per_paragraph(tmp_path, name):
    path = write_as(tmp_path / name, TEXT.encode("utf-8"))
    df, reports = read_inputs([InputSpec(str(path), "text", category="Проза")])
    assert df["answer"].to_list() == PARAGRAPHS
    assert df["question"].to_list() == [f"{TEXT_MARKER} {p}" for p in PARAGRAPHS]
    assert df["line"].to_list() == [1, 5, 7] and df["category"].unique().to_list() == ["Проза"]
    assert df["qid"].n_unique() == 3
    assert reports["book"].records_ok == 3 and reports["book"].lines == 4


def test_text_reader_normalizes_like_prepare_and_counts_bad_lines(tmp_path):
    path = tmp_path / "book.txt"
    path.write_bytes("ЁЛКА <b>Зелёная</b>\n".encode() + b"\xff\xfe\n" + "стоит.\n\nB.\n".encode())
    df, reports = read_inputs([InputSpec(str(path), "text")], lowercase=True, yo_to_e=True)
    assert df["answer"].to_list() == ["елка зеленая стоит.", "b."]
    assert df["question"].to_list() == [f"{TEXT_MARKER} елка зеленая стоит.", f"{TEXT_MARKER} b."]
    assert dict(reports["book"].skipped) == {"invalid_utf8": 1} and reports["book"].skipped_lines == {"invalid_utf8": [2]}


@pytest.mark.parametrize("data, problem", [(b"", "file is empty"), (b"\n \r\n\t\n", "file has no records")])
def test_empty_text_input_is_an_error(tmp_path, data, problem):
    path = tmp_path / "empty.txt"
    path.write_bytes(data)
    with pytest.raises(InputError, match=problem):
        read_inputs([InputSpec(str(path), "text")])


# --- text rows through filters, dedup and split --------------------------------------------------------

def text_rows(paragraphs: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"qid": list(range(len(paragraphs))), "question": [f"{TEXT_MARKER} {p}" for p in paragraphs],
                         "category": ["Проза"] * len(paragraphs), "answer": paragraphs},
                        schema_overrides={"qid": pl.UInt32})


def test_filters_give_paragraphs_the_text_limits_not_the_chit_chat_ones():
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["prepare"]
    cfg = FilterConfig(**{k: v for k, v in params.items() if k in FilterConfig.__dataclass_fields__})
    long = " ".join(["Длинный абзац прозы, в котором много слов."] * 30)  # far beyond max_answer_chars
    pairs = pl.concat([text_rows([long, "Да.", "Я"]),
                       pl.DataFrame({"qid": [9], "question": ["Как дела?"], "category": ["Проза"], "answer": [long]},
                                    schema_overrides={"qid": pl.UInt32})])
    kept, dropped = apply_filters(pairs, cfg)
    assert kept["answer"].to_list() == [long, "Да."]
    assert dropped == {"text_too_short_chars": 1, "answer_too_long_chars": 1}
    assert apply_filters(text_rows([long]), FilterConfig(max_text_chars=100))[1] == {"text_too_long_chars": 1}


def test_dedup_and_split_see_one_group_per_distinct_paragraph():
    paragraphs = ["Однажды утром. Пошёл дождь.", "Однажды утром. Выглянуло солнце.", "Однажды утром. Кот ушёл.",
                  "Однажды утром. Пошёл дождь.", "однажды утром, пошёл дождь!", "Вечером всё стихло."]
    kept, report = dedup_pairs(text_rows(paragraphs), DedupConfig(max_per_question=1, max_per_first_phrase=0))
    assert kept["answer"].to_list() == paragraphs[:3] + paragraphs[5:]  # different paragraphs are never capped
    assert report.removed["exact_duplicate"] == 1 and report.removed["near_casefold"] + report.removed[
        "near_punctuation"] == 1 and report.removed["answer_equals_question"] == 0
    frames, split = split_pairs(text_rows([f"Абзац номер {i}. Текст." for i in range(30)]), SplitConfig())
    assert split["questions"] == {"train": 24, "valid": 3, "test": 3}
    assert sum(split["pairs"].values()) == 30


# --- the stages end to end, and the CLI ---------------------------------------------------------------

def stage(name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "pipeline" / f"{name}.py"), *args], capture_output=True,
                          text=True, cwd=cwd)


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> Path:
    """prepare -> dedup -> split -> tokenizer -> train -> evaluate with model.task lm on a tiny book."""
    root = tmp_path_factory.mktemp("lm_pipeline")
    long = " ".join(TALES * 6)  # over max_answer_chars and over the training window: kept, cut into windows
    paragraphs = [f"{t} Это было в году {1900 + i}." for i, t in enumerate(TALES * 20)] + [long, TALES[0], TALES[0]]
    (root / "book.txt").write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["prepare"]["inputs"] = [{"path": "book.txt", "format": "text"}]
    params["split"].update(valid_fraction=0.1, test_fraction=0.1)  # 42 paragraphs: a few each
    params["tokenizer"]["vocab_size"] = 200
    params["model"].update(task="lm", type="transformer", emb_dim=16, hidden_dim=32, heads=2, layers=1, max_len=32)
    params["train"].update(epochs=2, max_tokens=512, eval_every=5, warmup_steps=2, max_tgt_len=32, checkpoint_every=0)
    params["evaluate"]["num_examples"] = 3
    params["evaluate"]["decoding"]["max_new_tokens"] = 8
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True, sort_keys=False), encoding="utf-8")
    for name in ("prepare", "dedup", "split", "tokenizer", "train", "evaluate"):
        proc = stage(name, root)
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
    return root


def metrics(root: Path, name: str) -> dict:
    return json.loads((root / "metrics" / f"{name}.json").read_text())


def test_the_stages_train_and_evaluate_a_language_model(pipeline_run):
    prepare, dedup = metrics(pipeline_run, "prepare"), metrics(pipeline_run, "dedup")
    assert prepare["pairs_in"] == prepare["pairs_out"] == 43  # the long paragraph passes prepare
    assert dedup["removed"]["exact_duplicate"] == 1 and dedup["pairs_out"] == 42
    train = metrics(pipeline_run, "train")
    assert train["task"] == "lm" and train["window"] == 32 and train["steps"] > 0
    ev = metrics(pipeline_run, "eval")
    assert ev["task"] == "lm" and ev["continuations"] == 3 and "bleu" not in ev
    for part in (ev, ev["valid"]):
        assert part["ppl_word"] > part["ppl_token"] > 1 and part["tokens"] > part["words"] > part["paragraphs"]
    table = (pipeline_run / "metrics" / "examples.md").read_text(encoding="utf-8").splitlines()
    assert table[0] == "| prompt | reference continuation | generated continuation |" and len(table) == 2 + 3


def test_continue_command_on_the_pipeline_model(pipeline_run):
    result = runner.invoke(app, ["continue", "Жили-были дед да баба,", "--max-new-tokens", "5", "--json",
                                 "--model", str(pipeline_run / "data" / "model")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["continuations"][0]["text"].startswith("Жили-были дед да баба,")
    assert 0 < out["continuations"][0]["new_tokens"] <= 5 and out["truncated"] is False


def invoke(*args: str, model: Path):
    return runner.invoke(app, [*args, "--model", str(model)])


def test_continue_prints_the_memorized_text(lm_dir):
    result = invoke("continue", "Стоит  в поле теремок.", model=lm_dir)  # normalized like the training text
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == TALES[1]
    nucleus = ["continue", "Жили-были", "-s", "nucleus", "--top-p", "0.9", "--seed", "5", "-n", "2",
               "--no-repeat-ngram", "3", "--repetition-penalty", "1.2", "--json"]
    first, again = invoke(*nucleus, model=lm_dir), invoke(*nucleus, model=lm_dir)
    assert first.exit_code == 0, first.output
    samples = [json.loads(r.stdout)["continuations"] for r in (first, again)]
    assert samples[0] == samples[1] and len(samples[0]) == 2  # the same seed gives the same text


def test_a_prompt_longer_than_the_context_keeps_its_end(lm_dir):
    result = invoke("continue", " ".join(TALES * 4) + " Жили-были", "--max-new-tokens", "3", model=lm_dir)
    assert result.exit_code == 0, result.output
    assert "note: only the last 48 tokens of the text were read" in result.stderr


@pytest.fixture(scope="module")
def seq2seq_dir(tmp_path_factory) -> Path:
    tok = train_tokenizer(TALES * 3, [], vocab_size=120)
    cfg = ModelConfig(type="gru", emb_dim=8, hidden_dim=8, vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    directory = tmp_path_factory.mktemp("seq2seq")
    tok.save(directory / "tokenizer")
    save_checkpoint(directory / CHECKPOINT_NAME, build_model(cfg), cfg, tokenizer_dir="tokenizer", max_src_len=8,
                    max_tgt_len=8)
    return directory


@pytest.mark.parametrize("args, message", [
    (["continue", "   "], "text is empty"),
    (["continue", "Жили", "--top-p", "2"], "top_p"),
    (["continue", "Жили", "--max-new-tokens", "0"], "max_new_tokens"),
    (["ask", "Как дела?"], "style-continuation model (model.task lm): use `chitchat continue`"),
])
def test_bad_requests_are_one_line(lm_dir, args, message):
    result = invoke(*args, model=lm_dir)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.output


def test_continue_needs_a_language_model(tmp_path, seq2seq_dir):
    missing = invoke("continue", "Жили", model=tmp_path / "none")
    assert missing.exit_code == 1 and "run `dvc repro` first" in missing.stderr
    chat = invoke("continue", "Жили", model=seq2seq_dir)
    assert chat.exit_code == 1 and chat.stderr.count("\n") == 1
    assert "chit-chat model (model.task seq2seq), not a language model: use `chitchat ask`" in chat.stderr
