"""The retrieval baseline (model.type retrieval), retrieve-then-rank (decoding.rerank_k) and the
metrics that tell words from noise."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys

import polars as pl
import pytest
import torch
import yaml

from chitchat.answering.checkpoint import CHECKPOINT_NAME, RETRIEVAL_DIR, save_retrieval_checkpoint
from chitchat.answering.decoding import DecodingConfig
from chitchat.answering.rerank import mean_logprobs, target_ids
from chitchat.answering.retrieval import RetrievalConfig, RetrievalIndex
from chitchat.answering.service import ChatService, RequestError, RetrievalChatService
from chitchat.core.errors import InputError
from chitchat.evaluation import metrics as M
from chitchat.evaluation.evaluate import EvalConfig, evaluate_model, evaluate_retrieval, examples_markdown
from chitchat.training.loop import TrainConfig
from conftest import REPO
from test_inference import PAIRS, build_tiny_model


def pairs_frame(history: bool = False) -> pl.DataFrame:
    rows = [(q, a, c) for c, items in PAIRS.items() for q, a in items]
    frame = pl.DataFrame({"question": [q for q, _, _ in rows], "answer": [a for _, a, _ in rows],
                          "category": [c for _, _, c in rows]})
    if history:
        frame = frame.with_columns(history=pl.Series([["Привет"] if i % 2 else [] for i in range(frame.height)],
                                                     dtype=pl.List(pl.String)))
    return frame


@pytest.fixture(scope="module")
def index() -> RetrievalIndex:
    return RetrievalIndex.fit(pairs_frame(), RetrievalConfig())


def test_a_train_question_retrieves_its_own_answer(index):
    hits = index.search(["Как сварить борщ?", "как  сварить БОРЩ"], k=1)
    assert [h[0].answer for h in hits] == ["Свёкла, капуста, мясо и терпение."] * 2
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5) and hits[0][0].category == "Еда, Кулинария"


def test_k_best_are_sorted_and_distinct_rows(index):
    hits = index.search(["Почему машина не заводится зимой?"], k=4)[0]
    assert len(hits) == 4 and len({h.row for h in hits}) == 4
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].answer == "Проверь аккумулятор и стартер."


def test_category_boost_and_filter_change_the_choice():
    frame = pl.DataFrame({"question": ["Что делать вечером?", "Что делать вечером?"], "answer": ["Кино", "Бег"],
                          "category": ["Юмор", "Спорт"]})
    boost = RetrievalIndex.fit(frame, RetrievalConfig(category_boost=0.1))
    assert boost.search(["Что делать вечером?"], ["Юмор"])[0][0].answer == "Кино"  # a tie: the earlier row
    assert boost.search(["Что делать вечером?"], ["Спорт"])[0][0].answer == "Бег"  # the boost decides
    only = RetrievalIndex.fit(frame, RetrievalConfig(category_mode="filter"))
    assert [h.answer for h in only.search(["Что делать?"], ["Спорт"], k=5)[0]] == ["Бег"]
    off = RetrievalIndex.fit(frame, RetrievalConfig(category_mode="off"))
    assert off.search(["Что делать вечером?"], ["Спорт"])[0][0].answer == "Кино"


def test_history_weight_picks_the_pair_whose_context_matches():
    frame = pl.DataFrame({"question": ["А ты?", "А ты?"], "answer": ["Я дома", "Я на работе"],
                          "category": ["x", "x"], "history": [["Где ты сейчас дома"], ["Ты на работе сейчас"]]})
    idx = RetrievalIndex.fit(frame, RetrievalConfig(history_weight=0.5), max_history=1)
    assert idx.search(["А ты?"], histories=[["ты на работе?"]])[0][0].answer == "Я на работе"
    assert idx.search(["А ты?"], histories=[["где ты, дома?"]])[0][0].answer == "Я дома"


def _digest(directory) -> str:
    h = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(directory).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_saved_index_answers_the_same_and_saves_byte_identically(index, tmp_path):
    index.save(tmp_path / "a")
    RetrievalIndex.fit(pairs_frame(), RetrievalConfig()).save(tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    loaded = RetrievalIndex.load(tmp_path / "a")
    questions = ["Что приготовить?", "Кто ты?", "Какие шины взять"]
    assert loaded.search(questions, k=3) == index.search(questions, k=3)


def test_missing_or_damaged_index_is_one_line(index, tmp_path):
    with pytest.raises(InputError, match="no retrieval index"):
        RetrievalIndex.load(tmp_path / "nothing")
    index.save(tmp_path / "idx")
    (tmp_path / "idx" / "idf.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match="damaged retrieval index"):
        RetrievalIndex.load(tmp_path / "idx")


def test_bad_retrieval_params_name_the_key():
    with pytest.raises(ValueError, match="retrieval.analyzer must be one of"):
        RetrievalConfig(analyzer="bm42")
    with pytest.raises(ValueError, match="retrieval.ngram_max must be >= ngram_min"):
        RetrievalConfig(ngram_min=4, ngram_max=2)


# --- the service and the stages --------------------------------------------------------------------

def write_retrieval_model(directory, index: RetrievalIndex):
    index.save(directory / RETRIEVAL_DIR)
    save_retrieval_checkpoint(directory / CHECKPOINT_NAME, prepare={"max_history": 0})
    return directory


def test_chat_service_loads_the_retrieval_baseline(index, tmp_path):
    service = ChatService.load(write_retrieval_model(tmp_path, index), device="cpu")
    assert isinstance(service, RetrievalChatService) and service.model_type == "retrieval"
    assert service.categories == sorted(PAIRS)
    reply = service.reply("как сварить борщ", "еда, кулинария", DecodingConfig(strategy="beam", n=2))
    assert reply.answers[0].text == "Свёкла, капуста, мясо и терпение." and len(reply.answers) == 2
    with pytest.raises(RequestError, match="unknown category"):
        service.reply("Привет", "Нет такой")


def test_the_web_api_serves_the_retrieval_baseline(index, tmp_path):
    from fastapi.testclient import TestClient

    from chitchat.serve.app import create_app

    service = ChatService.load(write_retrieval_model(tmp_path, index), device="cpu")
    with TestClient(create_app(service)) as client:
        health = client.get("/health").json()
        assert health["model"]["type"] == "retrieval" and health["model"]["categories"] == len(PAIRS)
        got = client.post("/api/answer", json={"question": "как сварить борщ", "category": "еда, кулинария"})
        assert got.status_code == 200, got.text
        assert got.json()["answers"][0]["text"] == "Свёкла, капуста, мясо и терпение."


def test_train_and_evaluate_stages_run_model_type_retrieval(tmp_path):
    split = tmp_path / "split"
    split.mkdir()
    frame = pairs_frame()
    frame.write_parquet(split / "train.parquet")
    frame.head(6).write_parquet(split / "valid.parquet")
    frame.tail(5).write_parquet(split / "test.parquet")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["model"]["type"] = "retrieval"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    run = lambda *args: subprocess.run([sys.executable, *map(str, args)], cwd=tmp_path, capture_output=True, text=True)
    out = run(REPO / "pipeline/train.py", "--split-dir", split, "--tokenizer-dir", tmp_path / "none")
    assert out.returncode == 0, out.stderr
    train = yaml.safe_load((tmp_path / "metrics/train.json").read_text())
    assert train["model_type"] == "retrieval" and train["train_examples"] == 15
    assert train["valid_top1_similarity"] == pytest.approx(1.1, abs=1e-5)  # itself (cosine 1) + category_boost 0.1
    out = run(REPO / "pipeline/evaluate.py", "--test", split / "test.parquet", "--valid", split / "valid.parquet")
    assert out.returncode == 0, out.stderr
    ev = yaml.safe_load((tmp_path / "metrics/eval.json").read_text())
    assert ev["model_type"] == "retrieval" and "ppl_token" not in ev
    assert ev["chrf"] == pytest.approx(100.0) and ev["unique_answer_rate"] == 1.0  # it finds each test pair itself


# --- retrieve-then-rank ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ranked_service(tmp_path_factory, index) -> ChatService:
    directory = build_tiny_model(tmp_path_factory.mktemp("rerank"), steps=120)
    index.save(directory / RETRIEVAL_DIR)
    return ChatService.load(directory, device="cpu")


def test_mean_logprobs_equal_the_teacher_forced_nll(ranked_service):
    svc = ranked_service
    rows, _, _ = svc._sources(["Как дела?", "Сколько варить яйцо?"], ["Юмор", "Еда, Кулинария"], [[], []])
    targets = [target_ids(svc.tokenizer, t, 24) for t in ("Нормально, а у тебя?", "Десять минут вкрутую.")]
    got = mean_logprobs(svc.model, rows, targets, svc.tokenizer.pad_id, "cpu")
    for src, tgt, value in zip(rows, targets, got):
        with torch.no_grad():
            logits = svc.model(torch.tensor([src]), torch.tensor([tgt[:-1]]))
        nll = torch.nn.functional.cross_entropy(logits[0], torch.tensor(tgt[1:]), reduction="mean")
        assert value == pytest.approx(-nll.item(), rel=1e-5)


def test_rerank_returns_the_likeliest_of_own_and_retrieved_answers(ranked_service):
    svc = ranked_service
    question, category = "Сколько варить яйцо?", "Еда, Кулинария"
    plain = svc.reply(question, category, DecodingConfig(strategy="beam", beam_size=3, n=3)).answers
    ranked = svc.reply(question, category, DecodingConfig(strategy="beam", beam_size=3, n=3, rerank_k=5)).answers
    retrieved = [h.answer for h in svc.index.search([question], [category], k=5)[0]]
    texts = [a.text for a in ranked]
    assert set(texts) <= {a.text for a in plain} | set(retrieved) and len(texts) == len(set(texts))
    assert [a.score for a in ranked] == sorted((a.score for a in ranked), reverse=True)
    rows, _, _ = svc._sources([question], [category], [[]])
    best = mean_logprobs(svc.model, rows, [target_ids(svc.tokenizer, texts[0], svc.max_tgt_len)],
                         svc.tokenizer.pad_id, "cpu")[0]
    assert ranked[0].score == pytest.approx(best, abs=1e-5)


def test_rerank_only_retrieved_and_with_mutual_information(ranked_service):
    svc = ranked_service
    question, category = "Сколько варить яйцо?", "Еда, Кулинария"
    retrieved = [h.answer for h in svc.index.search([question], [category], k=5)[0]]
    only = svc.reply(question, category, DecodingConfig(strategy="beam", n=5, rerank_k=5, rerank_own=False)).answers
    assert sorted(a.text for a in only) == sorted(set(retrieved))  # its own answers left out, every retrieved one kept
    mmi = svc.reply(question, category, DecodingConfig(strategy="beam", n=5, rerank_k=5, rerank_own=False,
                                                       rerank_mmi=0.7)).answers
    rows, _, _ = svc._sources([question], [category], [[]])
    blank, _, _ = svc._sources([""], [category], [[]])
    assert blank[0] == [rows[0][0], svc.tokenizer.eos_id]  # the category alone
    for answer in mmi:
        target = [target_ids(svc.tokenizer, answer.text, svc.max_tgt_len)]
        want = (mean_logprobs(svc.model, rows, target, svc.tokenizer.pad_id, "cpu")[0]
                - 0.7 * mean_logprobs(svc.model, blank, target, svc.tokenizer.pad_id, "cpu")[0])
        assert answer.score == pytest.approx(want, abs=1e-5)
    assert [a.score for a in mmi] == sorted((a.score for a in mmi), reverse=True)
    with pytest.raises(RequestError, match="rerank_own must be true when rerank_k is 0"):
        svc.reply(question, category, DecodingConfig(rerank_own=False))


def test_rerank_reaches_the_command_line_and_the_web_api(tmp_path_factory, index):
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from chitchat.cli import app as cli_app
    from chitchat.serve.app import create_app

    directory = build_tiny_model(tmp_path_factory.mktemp("rerank_cli"), steps=120)
    index.save(directory / RETRIEVAL_DIR)
    fresh = ChatService.load(directory, device="cpu")
    assert isinstance(fresh._index, type(directory)), "the index is read on the first rerank, not at load"
    question, category = "Сколько варить яйцо?", "Еда, Кулинария"
    want = fresh.reply(question, category, DecodingConfig(rerank_k=5)).answers[0].text
    assert not isinstance(fresh._index, type(directory))
    out = CliRunner().invoke(cli_app, ["ask", question, "-c", category, "--rerank-k", "5", "--model", str(directory)])
    assert out.exit_code == 0, out.output
    assert out.output.strip() == want
    picked = fresh.reply(question, category, DecodingConfig(rerank_k=5, rerank_own=False, rerank_mmi=0.5)).answers[0]
    out = CliRunner().invoke(cli_app, ["ask", question, "-c", category, "--rerank-k", "5", "--no-rerank-own",
                                       "--rerank-mmi", "0.5", "--json", "--model", str(directory)])
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    assert got["answers"][0]["text"] == picked.text and got["decoding"]["rerank_mmi"] == 0.5
    assert got["answers"][0]["text"] in {h.answer for h in fresh.index.search([question], [category], k=5)[0]}
    with TestClient(create_app(ChatService.load(directory, device="cpu"))) as client:
        body = {"question": question, "category": category, "decoding": {"rerank_k": 5}}
        got = client.post("/api/answer", json=body)
        assert got.status_code == 200, got.text
        assert got.json()["answers"][0]["text"] == want and got.json()["decoding"]["rerank_k"] == 5
        too_many = client.post("/api/answer", json={"question": question, "decoding": {"rerank_k": 51}})
        assert too_many.status_code == 422


def test_rerank_without_an_index_is_refused(tmp_path):
    service = ChatService.load(build_tiny_model(tmp_path, steps=2), device="cpu")
    with pytest.raises(RequestError, match="rerank_k needs the retrieval index"):
        service.reply("Привет", None, DecodingConfig(rerank_k=3))


def test_evaluate_scores_the_retrieval_baseline_beside_the_model(ranked_service):
    svc = ranked_service
    pairs = pairs_frame()
    cfg = EvalConfig(decoding=DecodingConfig(max_new_tokens=10))
    result, scored = evaluate_model(svc.model, svc.tokenizer, pairs, 12, 24, cfg, "cpu", 0, svc.index)
    assert result["retrieval"]["chrf"] == pytest.approx(100.0)  # train questions: retrieval finds each answer
    assert 0 < result["reference_known_word_rate"] <= 1 and "known_word_rate" in result
    table = examples_markdown(scored, 3, 0)
    assert table.splitlines()[0] == "| question | category | reference | generated | retrieval |"
    reranked, _ = evaluate_model(svc.model, svc.tokenizer, pairs, 12, 24,
                                 EvalConfig(decoding=DecodingConfig(max_new_tokens=10, rerank_k=3)), "cpu", 0, svc.index)
    assert reranked["chrf"] != result["chrf"]  # the retrieved answers changed what was said
    alone, _ = evaluate_retrieval(svc.index, pairs, 0)
    assert alone["chrf"] == result["retrieval"]["chrf"]


# --- metrics ---------------------------------------------------------------------------------------

def test_known_word_rate_tells_words_from_noise():
    assert M.known_word_rate(["Спрашивай, когда захочешь"]) == 1.0
    assert M.known_word_rate(["Средролировать запуется"]) == 0.0
    assert M.known_word_rate(["Привет, средролировать! OK 42"]) == 0.5  # Latin and digits are not counted
    assert M.cyrillic_words("Кто-нибудь ЗДЕСЬ?") == ["кто-нибудь", "здесь"]
    assert M.known_word_rate(["hello", ""]) == 0.0


def test_unique_answer_rate_counts_distinct_answers():
    assert M.unique_answer_rate(["Да.", "Да. ", "Нет."]) == pytest.approx(2 / 3)
    assert M.unique_answer_rate([]) == 0.0
    assert math.isclose(M.unique_answer_rate(["a", "b", "c", "d"]), 1.0)


def test_max_steps_is_checked():
    with pytest.raises(ValueError, match="train.max_steps must be >= 0"):
        TrainConfig(max_steps=-1)
