"""Answers token by token (chitchat.answering.streaming) and the decoding hook that feeds them."""

from __future__ import annotations

import random

import pytest

from chitchat.answering.decoding import DecodingConfig
from chitchat.answering.streaming import AnswerStream, ChoiceText, cut_at_stop
from test_inference import service, tiny_model  # noqa: F401  (module-scoped fixtures)

WORDS = {1: "При", 2: "вет", 3: ",", 4: " мир", 5: "!", 6: " и", 7: " всё"}


def decode(ids):
    return "".join(WORDS[i] for i in ids)


def feed(choice: ChoiceText, ids, eos=True) -> list[str]:
    pieces = [choice.push(i, False) for i in ids]
    if eos:
        pieces.append(choice.push(0, True))
    return pieces


def test_pieces_join_to_the_text_and_eos_ends_with_stop():
    choice = ChoiceText(decode)
    pieces = feed(choice, [1, 2, 3, 4, 5])
    assert pieces == ["При", "вет", ",", " мир", "!", ""] and "".join(pieces) == choice.text == "Привет, мир!"
    assert choice.finish == "stop" and choice.tokens == 6  # the EOS counts as generated


def test_a_stop_string_is_held_back_until_decided_and_never_shown():
    choice = ChoiceText(decode, stop=[", м"])
    pieces = feed(choice, [1, 2, 3, 4, 5], eos=False)
    assert pieces[:3] == ["При", "вет", ""]  # "," could start ", м": it waits
    assert "".join(pieces) == choice.text == "Привет" and choice.finish == "stop"
    assert choice.push(5, False) == ""  # nothing after the end


def test_a_held_tail_that_is_not_a_stop_is_shown_after_all():
    choice = ChoiceText(decode, stop=[", н"])
    pieces = feed(choice, [1, 2, 3, 4])
    assert pieces == ["При", "вет", "", ", мир", ""] and choice.text == "Привет, мир"


def test_half_a_character_waits_for_its_other_bytes():
    table = {1: "а", 2: "\ufffd", 3: "б"}
    spelled = {(1,): "а", (1, 2): "а\ufffd", (1, 2, 3): "аж"}  # byte-level: the 2nd byte completes "ж"
    choice = ChoiceText(lambda ids: spelled.get(tuple(ids), "".join(table[i] for i in ids)))
    assert feed(choice, [1, 2, 3]) == ["а", "", "ж", ""] and choice.text == "аж"


def test_length_and_whole_answers():
    choice = ChoiceText(decode)
    feed(choice, [1, 2], eos=False)
    assert choice.end(limit_reached=True) == "" and choice.finish == "length" and choice.text == "Привет"
    whole = ChoiceText(decode, stop=[" и"])
    assert whole.whole("Привет и всё", tokens=3, limit_reached=True) == "Привет" and whole.finish == "stop"
    long = ChoiceText(decode)
    assert long.whole("Привет всё", tokens=40, limit_reached=True) == "Привет всё" and long.finish == "length"
    assert cut_at_stop("a, b; c", [";", ","]) == ("a", True) and cut_at_stop("abc", ["x"]) == ("abc", False)


def test_a_cancelled_stream_stops_every_choice_and_says_so_once():
    told = []
    stream = AnswerStream(decode, n=2, sink=lambda i, piece, finish: told.append((i, piece, finish)))
    assert stream.token(0, 1, False) is False
    stream.cancel()
    assert stream.token(0, 2, False) is True and stream.token(1, 1, False) is True
    stream.close(max_tokens=40)
    assert [t for t in told if t[2]] == [(0, "", "stop"), (1, "", "stop")]
    assert stream.choices[0].text == "При"


def test_the_hook_streams_what_the_service_answers(service):
    """Every strategy that steps gives, through the hook, the text the service returns."""
    questions = ["Как дела?", "Как сварить борщ?", "Что приготовить на ужин?"]
    for decoding in (DecodingConfig(), DecodingConfig(strategy="nucleus", n=2, seed=3, temperature=1.3)):
        pieces: dict[tuple[int, int], str] = {}
        streams = [AnswerStream(service.tokenizer.decode, decoding.n,
                                sink=lambda i, p, f, q=q: pieces.__setitem__((q, i), pieces.get((q, i), "") + p))
                   for q in range(len(questions))]
        replies = service.answer_batch(questions, None, decoding, None, streams)
        for q, (reply, stream) in enumerate(zip(replies, streams)):
            assert sorted(c.text for c in stream.choices) == sorted(a.text for a in reply.answers)
            assert [pieces[(q, i)] for i in range(decoding.n)] == [c.text for c in stream.choices]
            assert all(c.finish in ("stop", "length") for c in stream.choices)


def test_a_stop_string_stops_decoding_early(service):
    """A matched stop string drops the row from the batch: fewer tokens than the full answer."""
    full = service.reply("Как испечь блины?").answers[0]
    stream = AnswerStream(service.tokenizer.decode, 1, stop=[","])
    service.answer_batch(["Как испечь блины?"], None, DecodingConfig(), None, [stream])
    assert stream.choices[0].text == full.text.split(",")[0] and stream.tokens < full.tokens


def test_decoding_a_prefix_gives_a_prefix_of_the_text(service):
    """What streaming relies on: the trained tokenizer never rewrites text it decoded before
    (a half character aside), so the shown pieces are always the start of the answer."""
    tok = service.tokenizer
    rng = random.Random(0)
    ids = [i for i in range(tok.vocab_size) if i not in set(tok.never_generated) and i != tok.eos_id]
    for _ in range(300):
        seq = [rng.choice(ids) for _ in range(rng.randint(1, 12))]
        for cut in range(1, len(seq)):
            head = tok.decode(seq[:cut]).rstrip("\ufffd")
            assert tok.decode(seq).startswith(head), (seq, cut)


@pytest.mark.parametrize("strategy", ["beam"])
def test_strategies_without_steps_hand_answers_whole(service, strategy):
    told = []
    stream = AnswerStream(service.tokenizer.decode, 1, sink=lambda i, p, f: told.append((p, f)))
    reply = service.answer_batch(["Как дела?"], None, DecodingConfig(strategy=strategy), None, [stream])[0]
    assert told == [(reply.answers[0].text, "stop")]
