"""ChatService on a tiny model saved exactly as the train stage saves it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from chitchat.answering.checkpoint import CHECKPOINT_NAME, save_checkpoint
from chitchat.answering.decoding import DecodingConfig
from chitchat.core.errors import InputError
from chitchat.answering.service import MAX_QUESTION_CHARS, ChatService, RequestError
from chitchat.models import ModelConfig, build_model
from chitchat.text.tokenizer import train_tokenizer

MAX_SRC_LEN = 12  # small, so a sentence or two already gets truncated
PAIRS = {
    "Авто, Мото": [
        ("Как завести машину в мороз?", "Прогрей аккумулятор и заводи."),
        ("Какое масло лить в двигатель?", "Смотри инструкцию к машине."),
        ("Стоит ли покупать мотоцикл?", "Да, если есть права."),
        ("Почему машина не заводится?", "Проверь аккумулятор и стартер."),
        ("Какие шины лучше на зиму?", "Шипованные, если много льда."),
    ],
    "Еда, Кулинария": [
        ("Что приготовить на ужин?", "Пельмени, конечно!"),
        ("Как сварить борщ?", "Свёкла, капуста, мясо и терпение."),
        ("Сколько варить яйцо?", "Десять минут вкрутую."),
        ("Как испечь блины?", "Молоко, мука, яйца и горячая сковорода."),
        ("Что добавить в салат?", "Огурцы, помидоры и масло."),
    ],
    "Юмор": [
        ("Расскажи анекдот!", "Колобок повесился."),
        ("Почему ты такой смешной?", "Родился таким."),
        ("Как дела?", "Нормально, а у тебя?"),
        ("Привет, как жизнь?", "Привет! Всё хорошо."),
        ("Ты кто такой?", "Я просто бот."),
    ],
}


def build_tiny_model(directory: Path, steps: int = 80, **extra) -> Path:
    """Tokenizer + GRU trained for a few steps, written as pipeline/train.py writes data/model/."""
    torch.manual_seed(0)
    rows = [(cat, q, a) for cat, pairs in PAIRS.items() for q, a in pairs]
    tok = train_tokenizer([t for _, q, a in rows for t in (q, a)] * 3, list(PAIRS), vocab_size=300)
    cfg = ModelConfig(type="gru", emb_dim=32, hidden_dim=64, dropout=0.0,
                      vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    model = build_model(cfg)
    srcs = [[tok.category_id(c)] + tok.encode(q)[: MAX_SRC_LEN - 2] + [tok.eos_id] for c, q, _ in rows]
    tgts = [[tok.bos_id] + tok.encode(a) + [tok.eos_id] for _, _, a in rows]
    src, tgt = (torch.nn.utils.rnn.pad_sequence([torch.tensor(s) for s in seqs], batch_first=True,
                                                padding_value=tok.pad_id) for seqs in (srcs, tgts))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(steps):  # enough that answers are words, not noise
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt[:, 1:].reshape(-1),
                               ignore_index=tok.pad_id)
        opt.zero_grad()
        loss.backward()
        opt.step()
    tok.save(directory / "tokenizer")
    save_checkpoint(directory / CHECKPOINT_NAME, model.cpu(), cfg, tokenizer_dir="tokenizer",
                    max_src_len=MAX_SRC_LEN, max_tgt_len=24, **extra)
    return directory


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def service(tiny_model) -> ChatService:
    return ChatService.load(tiny_model, device="cpu")


def test_loads_categories_and_answers(service):
    assert service.categories == sorted(PAIRS)
    answers = service.answer("Как завести машину в мороз?", "Авто, Мото")
    assert len(answers) == 1 and answers[0].text.strip()


def test_learned_something(service):
    """A pair seen in training comes back (the tiny model memorizes), so wiring is right."""
    assert service.answer("Как дела?", "Юмор")[0].text == "Нормально, а у тебя?"


def test_banned_tokens_never_appear(service):
    tok = service.tokenizer
    cfg = DecodingConfig(strategy="nucleus", n=5, temperature=3.0, seed=3)
    reply = service.reply("Что приготовить на ужин?", "Еда, Кулинария", cfg)
    for answer in reply.answers:
        assert not any(name in answer.text for name in ("<cat:", "<unk>", "<pad>", "<bos>"))
    assert set(tok.never_generated) == {tok.pad_id, tok.unk_id, tok.bos_id, tok.sep_id,
                                        tok.unknown_category_id, *(tok.category_id(c) for c in PAIRS)}
    assert tok.eos_id not in tok.never_generated


def test_batch_equals_one_by_one(service):
    questions = ["Как сварить борщ?", "Ты кто такой?", "Стоит ли покупать мотоцикл?"]
    cats = ["Еда, Кулинария", "юмор", None]
    batch = service.answer_batch(questions, cats)
    assert [r.category for r in batch] == ["Еда, Кулинария", "Юмор", None]
    for reply, q, c in zip(batch, questions, cats):
        alone = service.answer(q, c)[0]
        assert reply.answers[0].text == alone.text
        assert reply.answers[0].score == pytest.approx(alone.score, abs=1e-4)  # padding moves the last bits


def test_concurrent_calls_give_the_sequential_answers(service):
    questions = [q for pairs in PAIRS.values() for q, _ in pairs]
    cfg = DecodingConfig(strategy="beam", beam_size=3, n=2)
    expected = [service.answer(q, decoding=cfg) for q in questions]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda q: service.answer(q, decoding=cfg), questions))
    assert got == expected


def test_history_is_accepted_and_ignored(service):
    q = "Как испечь блины?"
    assert service.answer(q, history=["Привет", "Привет!"]) == service.answer(q)


def test_truncation_is_reported_not_refused(service):
    reply = service.reply("Как завести машину в мороз, если аккумулятор сел и стартер не крутит?")
    assert reply.truncated and reply.src_tokens == MAX_SRC_LEN
    assert not service.reply("Как дела?").truncated


def test_question_is_normalized_like_training_data(service):
    assert service.reply("  Как&nbsp;<b>дела</b>?\u200b ").question == "Как дела ?"


def test_prepare_case_folding_recorded_in_the_checkpoint_is_applied(tmp_path):
    """A model trained with prepare.lowercase and yo_to_e sees questions folded the same way."""
    folded = ChatService.load(build_tiny_model(tmp_path, steps=1, prepare={"lowercase": True, "yo_to_e": True}))
    assert (folded.lowercase, folded.yo_to_e) == (True, True)
    assert folded.reply("Ещё ВОПРОС").question == "еще вопрос"


@pytest.mark.parametrize("question, category, decoding, message", [
    ("   ", None, None, "question is empty"),
    ("<br>", None, None, "question is empty"),
    ("а" * (MAX_QUESTION_CHARS + 1), None, None, "too long"),
    ("Как дела?", "Спорт", None, "unknown category 'Спорт'; known: Авто, Мото; Еда, Кулинария; Юмор"),
    ("Как дела?", None, DecodingConfig(top_p=1.5), "top_p"),
    ("Как дела?", None, DecodingConfig(strategy="beam", beam_size=2, n=3), "beam_size"),
])
def test_bad_requests_raise_one_line(service, question, category, decoding, message):
    with pytest.raises(RequestError) as info:
        service.answer(question, category, decoding)
    assert isinstance(info.value, ValueError)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_position_table_limits_answer_length(service):
    tok = service.tokenizer
    cfg = ModelConfig(type="transformer", emb_dim=16, hidden_dim=32, heads=2, max_len=MAX_SRC_LEN,
                      vocab_size=tok.vocab_size, pad_id=tok.pad_id)
    transformer = ChatService(build_model(cfg).eval(), tok, MAX_SRC_LEN, torch.device("cpu"))
    assert len(transformer.answer("Как дела?", decoding=DecodingConfig(max_new_tokens=MAX_SRC_LEN))) == 1
    with pytest.raises(RequestError, match=f"max_new_tokens must be at most {MAX_SRC_LEN}"):
        transformer.answer("Как дела?", decoding=DecodingConfig(max_new_tokens=MAX_SRC_LEN + 1))


def test_missing_model_says_run_dvc_repro(tmp_path):
    with pytest.raises(InputError, match="dvc repro"):
        ChatService.load(tmp_path / "nothing", device="cpu")
