"""Dialogue history (one source encoding for training, evaluation and serving; turn embeddings;
chat, web and bot keep each conversation's turns) and the character bot (speaker files,
prepare.condition_field speaker, exactly one turn per answer)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from chitchat.answering.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from chitchat.cli import ChatSession
from chitchat.data.sources import InputSpec, detect_format, read_inputs
from chitchat.answering.decoding import DecodingConfig, generate
from chitchat.core.errors import InputError
from chitchat.evaluation.evaluate import EvalConfig, evaluate_model, examples_markdown, generate_answers
from chitchat.answering.service import MAX_HISTORY_TURNS, ChatService, RequestError
from chitchat.models import ModelConfig, build_model
from chitchat.models.layers import TurnEmbedding
from chitchat.text.prompt import encode_sources
from chitchat.serve import limits
from chitchat.serve.app import create_app
from chitchat.text.tokenizer import train_tokenizer
from chitchat.training.batching import collate, encode_pairs
from chitchat.training.loop import target_nll
from conftest import REPO

CATS = ["Юмор", "Спорт"]
TEXTS = ["Привет, как дела?", "Нормально, а у тебя?", "Пойдём играть в футбол.", "Расскажи анекдот про Штирлица.",
         "Штирлиц шёл по лесу.", "Отлично, спасибо!", "Где мяч?", "Мяч у вратаря."]
ROWS = [  # question, answer, category, history (oldest first)
    ("Где мяч?", "Мяч у вратаря.", "Спорт", ["Привет, как дела?", "Нормально, а у тебя?", "Пойдём играть в футбол."]),
    ("Расскажи анекдот про Штирлица.", "Штирлиц шёл по лесу.", "Юмор", []),
    ("Отлично, спасибо!", "Пойдём играть в футбол.", "Спорт", ["Привет, как дела?"]),
]
TYPES = [dict(type="gru"), dict(type="lstm", attention="additive"), dict(type="cnn"),
         dict(type="transformer", turn_embeddings=True)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS * 4, CATS, vocab_size=200, min_frequency=1)


def frame(rows=ROWS) -> pl.DataFrame:
    return pl.DataFrame({"question": [r[0] for r in rows], "answer": [r[1] for r in rows],
                         "category": [r[2] for r in rows], "history": [r[3] for r in rows]},
                        schema_overrides={"history": pl.List(pl.String)})


def tiny(tok, seed: int = 0, **variant):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, pad_id=tok.pad_id, sep_id=tok.sep_id, emb_dim=16, hidden_dim=32,
                      dropout=0.0, max_len=64, **variant)
    return build_model(cfg).eval()


# -- the source sequence ------------------------------------------------------------------------------
def test_history_then_question_in_order_with_separators(tok):
    q, h = ROWS[0][0], ROWS[0][3]
    (src,) = encode_sources(tok, [q], ["Спорт"], [h], max_len=64, max_history=2)
    expected = ([tok.category_id("Спорт")] + tok.encode(h[1]) + [tok.sep_id] + tok.encode(h[2]) + [tok.sep_id]
                + tok.encode(q) + [tok.eos_id])
    assert src.ids == expected and src.turns == 2 and not src.truncated
    # no history: exactly the encoding models trained before history had
    (plain,) = encode_sources(tok, [q], ["Спорт"], [h], max_len=64, max_history=0)
    assert plain.ids == [tok.category_id("Спорт")] + tok.encode(q) + [tok.eos_id] and plain.turns == 0


def test_truncation_drops_the_oldest_tokens_and_keeps_the_question(tok):
    q, h = ROWS[0][0], ROWS[0][3]
    q_ids = tok.encode(q)
    full = encode_sources(tok, [q], ["Спорт"], [h], max_len=200)[0].ids
    for max_len in range(len(q_ids) + 2, len(full)):
        src = encode_sources(tok, [q], ["Спорт"], [h], max_len=max_len)[0]
        assert len(src.ids) <= max_len and not src.truncated
        assert src.ids[0] == tok.category_id("Спорт") and src.ids[-len(q_ids) - 1:] == q_ids + [tok.eos_id]
        context = src.ids[1 : -len(q_ids) - 1]
        assert context == full[len(full) - len(q_ids) - 1 - len(context) : -len(q_ids) - 1]  # the newest tokens
        assert not context or context[0] != tok.sep_id
    # the question alone overflows: it is cut from its end, the history goes entirely
    src = encode_sources(tok, [q], [None], [h], max_len=4)[0]
    assert src.ids == [tok.unknown_category_id] + q_ids[:2] + [tok.eos_id] and src.truncated and src.turns == 0


def test_training_evaluation_and_serving_encode_identically(tok):
    df = frame()
    train_src = [e.src for e in encode_pairs(df, tok, 40, 40, max_history=2)]
    service = ChatService(tiny(tok, type="gru"), tok, 40, torch.device("cpu"), max_history=2)
    src, _, lengths = service._encode(df["question"].to_list(), df["category"].to_list(),
                                      [service._history(h) for h in df["history"].to_list()])
    assert [row[:n] for row, n in zip(src.tolist(), lengths)] == train_src
    assert tok.sep_id in train_src[0] and train_src[0].count(tok.sep_id) == 2
    # the history column caps what training sees; None keeps it all
    assert encode_pairs(df, tok, 40, 40)[0].src.count(tok.sep_id) == 3


def test_evaluate_answers_each_context_once_and_shows_it(tok):
    df = pl.concat([frame(), frame(ROWS[:1]).with_columns(history=pl.lit([], dtype=pl.List(pl.String)))])
    cfg = EvalConfig(num_examples=10, decoding=DecodingConfig(max_new_tokens=4))
    model = tiny(tok, type="gru")
    result, scored = evaluate_model(model, tok, df, 40, 40, cfg, "cpu", max_history=2)
    assert result["pairs"] == 4 and result["questions"] == 4  # "Где мяч?" with and without history
    assert scored["history"].to_list()[0] == ROWS[0][3][-2:]
    alone = generate_answers(model, tok, [ROWS[0][0]], ["Спорт"], 40, cfg.decoding, 8, "cpu", [ROWS[0][3]], 2)
    assert scored["generated"][0] == alone[0]
    table = examples_markdown(scored, 10, 0)
    assert table.startswith("| context | question |") and "Нормально, а у тебя? / Пойдём играть в футбол." in table


# -- models -----------------------------------------------------------------------------------------
def test_turn_ids_count_back_from_the_question():
    layer = TurnEmbedding(4, turns=3, sep_id=4)
    src = torch.tensor([[9, 5, 4, 6, 6, 4, 7, 3, 0],   # cat h1 <sep> h2 h2 <sep> q <eos> <pad>
                        [9, 4, 5, 4, 5, 4, 7, 3, 0]])  # three turns back: capped at turns - 1
    assert layer.turn_ids(src).tolist() == [[2, 2, 2, 1, 1, 1, 0, 0, 0], [2, 2, 2, 2, 1, 1, 0, 0, 0]]
    assert layer(src).shape == (2, 9, 4)


def test_turn_embeddings_are_added_to_the_source_only(tok):
    with_turns = tiny(tok, type="transformer", turn_embeddings=True)
    plain = tiny(tok, type="transformer")
    assert {k for k in with_turns.state_dict()} - {k for k in plain.state_dict()} == {"turns.table.weight"}
    with torch.no_grad():
        with_turns.turns.table.weight.zero_()
    plain.load_state_dict({k: v for k, v in with_turns.state_dict().items() if not k.startswith("turns.")})
    examples = encode_pairs(frame(), tok, 40, 40, max_history=2)
    src, tgt = collate(examples, tok.pad_id)
    assert torch.allclose(with_turns(src, tgt), plain(src, tgt), atol=1e-6)  # a zero table adds nothing
    with torch.no_grad():
        with_turns.turns.table.weight[1].normal_()  # the turn just before the question
    changed = with_turns(src, tgt)
    has_history = [tok.sep_id in e.src for e in examples]
    for row, history in enumerate(has_history):
        same = torch.allclose(changed[row], plain(src, tgt)[row], atol=1e-6)
        assert same != history, f"row {row}: history {history}"


def test_checkpoints_from_before_history_still_load(tok, tmp_path):
    model = tiny(tok, type="transformer")
    save_checkpoint(tmp_path / CHECKPOINT_NAME, model, model.cfg, max_src_len=40, max_tgt_len=40)
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    for key in ("turn_embeddings", "sep_id"):  # what an older ModelConfig did not have
        del ckpt["model_config"][key]
    torch.save(ckpt, tmp_path / CHECKPOINT_NAME)
    loaded, _ = load_checkpoint(tmp_path, "cpu")
    assert loaded.cfg.turn_embeddings is False and loaded.cfg.sep_id == tok.sep_id and loaded.turns is None


@pytest.mark.parametrize("variant", TYPES, ids=[v["type"] for v in TYPES])
def test_every_type_trains_a_step_and_decodes_with_history(tok, variant):
    model = tiny(tok, **variant).train()
    src, tgt = collate(encode_pairs(frame(), tok, 40, 40, max_history=3), tok.pad_id)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    loss = target_nll(model(src, tgt[:, :-1]), tgt[:, 1:], tok.pad_id)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.eval()
    hyps = generate(model, src, DecodingConfig(max_new_tokens=6), tok.bos_id, tok.eos_id, tok.never_generated)
    assert len(hyps) == 3 and all(tok.sep_id not in h[0].ids and len(h[0].ids) <= 6 for h in hyps)
    # the history reaches the decoder: the same question after other turns gets other logits
    other = frame([(ROWS[0][0], ROWS[0][1], "Спорт", ["Штирлиц шёл по лесу.", "Где мяч?"])])
    a = model(*collate(encode_pairs(frame(ROWS[:1]), tok, 40, 40, max_history=3), tok.pad_id))
    b = model(*collate(encode_pairs(other, tok, 40, 40, max_history=3), tok.pad_id))
    assert not torch.allclose(a, b)


# -- serving ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def history_model(tok, tmp_path_factory) -> Path:
    """A (random) GRU saved as the train stage saves it, trained with prepare.max_history 2."""
    directory = tmp_path_factory.mktemp("history_model")
    model = tiny(tok, seed=3, type="gru")
    tok.save(directory / "tokenizer")
    save_checkpoint(directory / CHECKPOINT_NAME, model, model.cfg, tokenizer_dir="tokenizer", max_src_len=40,
                    max_tgt_len=24, prepare={"lowercase": False, "yo_to_e": False, "max_history": 2,
                                             "condition_field": "category"})
    return directory


@pytest.fixture(scope="module")
def history_service(history_model) -> ChatService:
    return ChatService.load(history_model, "cpu")


def test_service_feeds_the_last_max_history_turns(history_service):
    service = history_service
    assert service.max_history == 2
    q, h = ROWS[0][0], ROWS[0][3]
    src, _, n = service._encode([q], ["Спорт"], [service._history(h)])
    assert src[0, :n[0]].tolist() == encode_sources(service.tokenizer, [q], ["Спорт"], [h], 40, 2)[0].ids
    greedy = DecodingConfig(max_new_tokens=8)
    plain, one, two, longer = (service.reply(q, "Спорт", greedy, hist) for hist in (None, h[-1:], h[-2:], h))
    assert (plain.history_turns, one.history_turns, two.history_turns, longer.history_turns) == (0, 1, 2, 2)
    assert longer.answers == two.answers  # only the last two turns count
    assert len({plain.answers[0].score, one.answers[0].score, two.answers[0].score}) == 3  # history changes it
    batch = service.answer_batch([q, q], ["Спорт", "Спорт"], greedy, [h, None])
    assert batch[0].answers == longer.answers and batch[1].answers == plain.answers


def test_model_trained_without_history_ignores_it(history_model):
    service = ChatService.load(history_model, "cpu")
    service.max_history = 0  # what an older checkpoint (no max_history recorded) gets
    q = ROWS[0][0]
    assert service.reply(q, history=ROWS[0][3]).answers == service.reply(q).answers
    assert service.reply(q, history=ROWS[0][3]).history_turns == 0


@pytest.mark.parametrize("history, message", [
    ("Привет", "history must be a list of earlier turns"), ([1, 2], "history must hold text turns only"),
])
def test_bad_history_is_one_line(history_service, history, message):
    with pytest.raises(RequestError, match=message):
        history_service.reply("Привет", history=history)


def test_web_api_feeds_history_and_caps_it(history_service):
    with TestClient(create_app(history_service)) as client:
        q, h = ROWS[0][0], ROWS[0][3]
        out = client.post("/api/answer", json={"question": q, "category": "Спорт", "history": h}).json()
        expected = history_service.reply(q, "Спорт", history=h)
        assert out["history_turns"] == 2 and out["answers"][0]["text"] == expected.answers[0].text
        assert client.get("/health").json()["model"]["max_history"] == 2
        too_many = client.post("/api/answer", json={"question": q, "history": ["да"] * (limits.MAX_HISTORY + 1)})
        assert too_many.status_code == 422 and too_many.json()["detail"].startswith("history:")
        too_long = client.post("/api/answer", json={"question": q, "history": ["я" * (limits.MAX_TURN + 1)]})
        assert too_long.status_code == 422 and too_long.json()["detail"].startswith("history.0:")
        assert client.get("/api/limits").json()["max_history"] == limits.MAX_HISTORY == MAX_HISTORY_TURNS


def test_bot_feeds_each_chats_history_and_reset_forgets_it(history_service):
    from chitchat.serve.bot import format_answers
    from test_bot import Harness

    def shown(question, history=None):  # what the bot writes for the service's answer
        return format_answers(history_service.reply(question, history=history))

    tg = Harness(history_service)
    tg.say("Привет, как дела?", chat_id=1)
    first = tg.chat_bot.chats[1].history[1]
    assert first == history_service.reply("Привет, как дела?").answers[0].text
    assert tg.say("Где мяч?", chat_id=1) == shown("Где мяч?", ["Привет, как дела?", first])
    assert tg.chat_bot.chats[1].history[:3] == ["Привет, как дела?", first, "Где мяч?"]
    assert tg.say("Где мяч?", chat_id=2) == shown("Где мяч?")  # each chat has its own conversation
    assert shown("Где мяч?") != shown("Где мяч?", ["Привет, как дела?", first])
    tg.say("/reset", chat_id=1)
    assert tg.say("Где мяч?", chat_id=1) == shown("Где мяч?")
    assert tg.chat_bot.chats[1].history[:1] == ["Где мяч?"]


def test_chat_command_keeps_trims_and_resets_history(history_service, capsys):
    session = ChatSession(history_service, None, DecodingConfig(max_new_tokens=4))
    session.handle("Привет, как дела?")
    answer = capsys.readouterr().out.removeprefix("bot> ").strip()
    assert session.history == ["Привет, как дела?", "" if answer == "(empty answer)" else answer]
    for _ in range(MAX_HISTORY_TURNS):
        session.handle("Где мяч?")
    assert len(session.history) == MAX_HISTORY_TURNS and session.history[-2] == "Где мяч?"
    session.handle("/reset")
    assert session.history == []


# -- speaker files ----------------------------------------------------------------------------------
SPEAKERS = """Шелдон: Привет, Пенни.
Пенни: Привет, милый!
(Шелдон садится на своё место)
Шелдон: Это моё место.
Шелдон: Всегда было моим.

Леонард: Одна реплика без ответа.

Пенни: Как дела?
это не реплика
Шелдон: Базинга!
"""


def test_speaker_lines_become_turns_and_bad_lines_are_counted(tmp_path):
    path = tmp_path / "script.txt"
    path.write_text(SPEAKERS, encoding="utf-8")
    assert detect_format(path) == "speakers"
    df, reports = read_inputs([InputSpec(str(path))], max_history=2, condition_field="speaker")
    assert df.select("question", "answer", "category").rows() == [
        ("Привет, Пенни.", "Привет, милый!", "Пенни"),
        ("Привет, милый!", "Это моё место. Всегда было моим.", "Шелдон"),  # one speaker's lines make one turn
        ("Как дела?", "Базинга!", "Шелдон"),
    ]
    assert df["history"].to_list() == [[], ["Привет, Пенни."], []]
    assert df["line"].to_list() == [2, 4, 11]
    report = reports["script"]
    assert dict(report.skipped) == {"no_speaker": 2, "one_turn_dialogue": 1}
    assert report.skipped_lines == {"no_speaker": [3, 10], "one_turn_dialogue": [7]}
    # condition_field category: the names are still cut, the category is the input's
    df, _ = read_inputs([InputSpec(str(path), "speakers", category="Сериал")])
    assert set(df["category"]) == {"Сериал"} and not any(":" in a for a in df["answer"])


def test_condition_field_speaker_needs_speaker_lines(tmp_path):
    path = tmp_path / "dialogues.txt"
    path.write_text("- Привет!\n- Привет.\n", encoding="utf-8")
    with pytest.raises(InputError, match="condition_field speaker needs `Name: text` lines"):
        read_inputs([InputSpec(str(path))], condition_field="speaker")
    with pytest.raises(ValueError, match="prepare.condition_field must be one of category, speaker"):
        read_inputs([InputSpec(str(path))], condition_field="speakers")


# -- the character bot, end to end ------------------------------------------------------------------
PROBES = [  # the question, Пенни's answer, Шелдон's answer, and who answers them back
    ("Привет.", "Привет, милый!", "Базинга!", "Опять ты за своё.", "Это не смешно."),
    ("Как дела?", "Всё супер, я на работе.", "Я занят теорией струн.", "Звучит скучно.", "Ты ничего не понимаешь."),
    ("Что ты делаешь?", "Пеку пирог для Леонарда.", "Пишу формулы на доске.", "Можно попробовать?", "Опять формулы."),
    ("Пойдём гулять?", "Конечно, только переоденусь.", "Нет, на улице микробы.", "Ура, я жду.", "Ты невыносим."),
    ("Ты голоден?", "Я бы съела пиццу.", "Сегодня вторник, значит чизкейк.", "Закажем две.", "Какой ещё чизкейк?"),
    ("Который час?", "Пора в кафе.", "Ровно двадцать один ноль ноль.", "Я угощаю.", "Ты всегда точен."),
    ("Хочешь кофе?", "Да, с молоком.", "Кофеин вредит мозгу.", "Держи чашку.", "Как скажешь, гений."),
    ("Кто там?", "Это соседка, открывай.", "Тук-тук-тук, Пенни.", "Заходи.", "Опять этот стук."),
]


def _speaker_script() -> str:
    """Every probe asked of each character, with a third turn from the other one."""
    blocks = []
    for q, penny, sheldon, penny_back, sheldon_back in PROBES:
        blocks.append(f"Шелдон: {q}\nПенни: {penny}\nШелдон: {sheldon_back}")
        blocks.append(f"Пенни: {q}\nШелдон: {sheldon}\nПенни: {penny_back}")
    return "\n\n".join(blocks) + "\n"


def _stage(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_stage", REPO / "pipeline" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def persona_model(tmp_path_factory) -> tuple[Path, pl.DataFrame]:
    """prepare -> dedup -> split -> tokenizer -> train, the stage scripts on a speaker file."""
    root = tmp_path_factory.mktemp("persona")
    (root / "script.txt").write_text(_speaker_script(), encoding="utf-8")
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["prepare"].update(inputs=[{"path": str(root / "script.txt"), "format": "auto"}], max_history=2,
                             condition_field="speaker")
    params["tokenizer"].update(vocab_size=400, min_frequency=1)
    params["model"].update(type="gru", emb_dim=32, hidden_dim=64, dropout=0.0)
    params["train"].update(device="cpu", epochs=40, max_tokens=4096, accum_steps=1, lr=0.02, warmup_steps=5,
                           schedule="constant", label_smoothing=0.0, eval_every=100_000, patience=0,
                           checkpoint_every=0, max_minutes=0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True), encoding="utf-8")
    p, d, m = root / "params.yaml", root / "data", root / "metrics"
    _stage("prepare")(params=p, out=d / "prepared.parquet", metrics=m / "prepare.json")
    _stage("dedup")(params=p, pairs=d / "prepared.parquet", out=d / "dedup.parquet", metrics=m / "dedup.json")
    _stage("split")(params=p, pairs=d / "dedup.parquet", out_dir=d / "split", metrics=m / "split.json")
    _stage("tokenizer")(params=p, split_dir=d / "split", out=d / "tokenizer", metrics=m / "tokenizer.json")
    _stage("train")(params=p, split_dir=d / "split", tokenizer_dir=d / "tokenizer", out_dir=d / "model",
                    metrics=m / "train.json", live_dir=m / "live", resume_file=d / "resume.pt")
    return d / "model", pl.read_parquet(d / "split" / "train.parquet")


def test_the_character_bot_answers_as_one_character_with_one_turn(persona_model):
    model_dir, train = persona_model
    service = ChatService.load(model_dir, "cpu")
    assert service.categories == ["Пенни", "Шелдон"] and service.condition_field == "speaker"
    assert service.max_history == 2
    seen = set(train.filter(pl.col("history").list.len() == 0)["question"])
    probes = [p for p in PROBES if p[0] in seen]
    assert len(probes) >= 4, f"only {len(probes)} probe questions landed in train"
    for q, penny, sheldon, _, _ in probes:
        for name, line, other in (("Пенни", penny, sheldon), ("Шелдон", sheldon, penny)):
            answer = service.reply(q, name).answers[0].text
            assert answer == line, f"{name} asked {q!r} answered {answer!r}"
            assert "\n" not in answer and ":" not in answer and other not in answer
    # a third turn answers the second, with the first as its history
    third = train.filter(pl.col("history").list.len() == 1).row(0, named=True)
    reply = service.reply(third["question"], third["category"], history=third["history"])
    assert reply.history_turns == 1 and reply.answers[0].text == third["answer"]
    # even hot sampling never emits a separator or a speaker token: one turn, nothing else
    tok = service.tokenizer
    speakers = {tok.category_id(n) for n in ("Пенни", "Шелдон")}
    assert {tok.sep_id, *speakers} <= set(tok.never_generated)
    hot = DecodingConfig(strategy="nucleus", temperature=3.0, top_p=1.0, n=5, seed=1, max_new_tokens=12)
    src, _, _ = service._encode([probes[0][0]], ["Шелдон"], [[]])
    for hyp in generate(service.model, src, hot, tok.bos_id, tok.eos_id, tok.never_generated)[0]:
        assert not {tok.sep_id, *speakers} & set(hyp.ids)


def test_the_character_is_picked_from_the_command_line(persona_model):
    from typer.testing import CliRunner

    from chitchat.cli import app

    model_dir, train = persona_model
    q, penny, sheldon = next(p for p in PROBES if p[0] in set(train["question"]))[:3]
    for name, line in (("Пенни", penny), ("шелдон", sheldon)):
        result = CliRunner().invoke(app, ["ask", q, "--category", name, "--model", str(model_dir), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["answers"][0]["text"] == line
