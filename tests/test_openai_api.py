"""The OpenAI-compatible API, driven by the official `openai` client against a live server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chitchat.answering.decoding import DecodingConfig
from chitchat.serve.app import MAX_BODY_BYTES, create_app, running_server
from test_inference import service, tiny_model  # noqa: F401  (module-scoped fixtures)
from test_lm import lm_dir  # noqa: F401
from test_web import send_chunked_until_answered

QUESTION = "Как дела?"
KEY = "sk-test-0123456789"


@pytest.fixture(scope="module")
def server(service):
    with running_server(create_app(service)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=60)


STANDARD = {"temperature", "top_p", "n", "stop", "seed", "stream", "stream_options", "max_tokens",
            "max_completion_tokens"}


def chat(client, question=QUESTION, **kwargs):
    """A chat request; chitchat's own fields (category, strategy, ...) go as extra_body, as a user sends them."""
    extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in STANDARD}
    return client.chat.completions.create(model="chitchat-gru", messages=[{"role": "user", "content": question}],
                                          extra_body=extra or None, **kwargs)


def streamed(client, question=QUESTION, **kwargs) -> tuple[dict[int, str], dict[int, list], list]:
    """Joined deltas per choice, the finish reasons seen per choice, and every chunk."""
    texts, finishes, chunks = {}, {}, []
    for chunk in chat(client, question, stream=True, **kwargs):
        chunks.append(chunk)
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason is not None:
                finishes.setdefault(choice.index, []).append(choice.finish_reason)
    return texts, finishes, chunks


def metric(url: str, name: str, **labels) -> float:
    text = httpx.get(url + "/metrics").text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_models_lists_the_served_model(client, service):
    models = client.models.list().data
    assert [m.id for m in models] == ["chitchat-gru"] == [f"chitchat-{service.model_type}"]
    assert models[0].owned_by == "chitchat" and models[0].created > 1_700_000_000


def test_chat_answers_as_the_service_does(client, service):
    out = chat(client, QUESTION, category="Юмор")
    expected = service.reply(QUESTION, "Юмор")
    assert out.choices[0].message.content == expected.answers[0].text == "Нормально, а у тебя?"
    assert out.choices[0].message.role == "assistant" and out.choices[0].finish_reason == "stop"
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    assert out.usage.prompt_tokens == expected.src_tokens
    assert out.usage.completion_tokens == expected.answers[0].tokens + 1  # the EOS that ended it
    assert out.usage.prompt_tokens + out.usage.completion_tokens == out.usage.total_tokens


def test_system_message_names_the_category_and_history_is_read(client, service):
    via_system = client.chat.completions.create(model="chitchat-gru", messages=[
        {"role": "system", "content": "юмор"}, {"role": "user", "content": QUESTION}])
    ignored = client.chat.completions.create(model="chitchat-gru", messages=[
        {"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": QUESTION}])
    assert via_system.choices[0].message.content == service.reply(QUESTION, "Юмор").answers[0].text
    assert ignored.choices[0].message.content == service.reply(QUESTION, None).answers[0].text
    turns = ["Привет!", "Привет! Всё хорошо."]
    with_history = client.chat.completions.create(model="chitchat-gru", messages=[
        {"role": "user", "content": turns[0]}, {"role": "assistant", "content": turns[1]},
        {"role": "user", "content": "Как сварить борщ?"}])
    assert with_history.choices[0].message.content == service.reply("Как сварить борщ?", None,
                                                                    history=turns).answers[0].text


@pytest.mark.parametrize("options", [{"temperature": 0},
                                     {"temperature": 0.9, "top_p": 0.9, "seed": 7, "max_tokens": 20}])
def test_joined_stream_equals_the_whole_answer(client, options):
    whole = chat(client, "Что приготовить на ужин?", **options)
    texts, finishes, chunks = streamed(client, "Что приготовить на ужин?", **options)
    assert texts == {0: whole.choices[0].message.content}
    assert finishes == {0: [whole.choices[0].finish_reason]}  # exactly one finish_reason
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # pieces, not one lump


def test_length_at_max_tokens_and_stop_strings(client):
    cut = chat(client, "Как испечь блины?", max_tokens=2)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 2
    full = chat(client, "Как испечь блины?").choices[0].message.content
    assert full == "Молоко, мука, яйца и горячая сковорода."
    stopped = chat(client, "Как испечь блины?", stop=[" и", "XYZ"])
    assert stopped.choices[0].message.content == "Молоко, мука, яйца"
    assert stopped.choices[0].finish_reason == "stop"
    texts, finishes, _ = streamed(client, "Как испечь блины?", stop=", я")
    assert texts == {0: "Молоко, мука"} and finishes == {0: ["stop"]}


def test_usage_chunk_n_choices_and_seeds(client):
    options = dict(n=2, temperature=1.5, seed=11, max_tokens=12)
    texts, finishes, chunks = streamed(client, "Сколько варить яйцо?", stream_options={"include_usage": True},
                                       **options)
    assert sorted(texts) == [0, 1] and all(len(f) == 1 for f in finishes.values()) and sorted(finishes) == [0, 1]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and chunks[-1].usage is not None and chunks[-1].choices == []
    assert usage[0].prompt_tokens + usage[0].completion_tokens == usage[0].total_tokens
    again = chat(client, "Сколько варить яйцо?", **options)
    assert [c.message.content for c in again.choices] == [texts[0], texts[1]]  # same seed: same text
    assert again.usage.completion_tokens == usage[0].completion_tokens
    other = chat(client, "Сколько варить яйцо?", **{**options, "seed": 12})
    assert [c.message.content for c in other.choices] != [texts[0], texts[1]]


def test_completions_read_each_prompt_as_a_question(client, service):
    out = client.completions.create(model="chitchat-gru", prompt=["Как дела?", "Как сварить борщ?"], max_tokens=30)
    assert [c.index for c in out.choices] == [0, 1] and out.object == "text_completion"
    assert [c.text for c in out.choices] == [service.reply(q).answers[0].text for q in ("Как дела?", "Как сварить борщ?")]
    pieces = {}
    for chunk in client.completions.create(model="chitchat-gru", prompt=["Как дела?", "Как сварить борщ?"],
                                           max_tokens=30, stream=True):
        for choice in chunk.choices:
            pieces[choice.index] = pieces.get(choice.index, "") + choice.text
    assert pieces == {0: out.choices[0].text, 1: out.choices[1].text}


def test_beam_answers_stream_whole(client, service):
    texts, finishes, _ = streamed(client, "Как сварить борщ?", strategy="beam", beam_size=4)
    best = service.reply("Как сварить борщ?", decoding=DecodingConfig(strategy="beam", beam_size=4)).answers[0].text
    assert texts == {0: best} and finishes == {0: ["stop"]}


def test_errors_have_openai_shape(client, server):
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.body["code"] == "model_not_found" and "chitchat-gru" in missing.value.body["message"]
    cases = [({"messages": []}, "messages"), ({"messages": [{"role": "user", "content": "Привет"}], "top_p": 2}, "top_p"),
             ({"messages": [{"role": "assistant", "content": "Привет"}]}, "messages"),
             ({"messages": [{"role": "user", "content": "Привет"}], "tools": [{"type": "function"}]}, "tools"),
             ({"messages": [{"role": "user", "content": "Привет"}], "category": "Космос"}, None),
             ({"messages": [{"role": "user", "content": "Привет"}], "n": 2, "temperature": 0}, None)]
    for body, param in cases:
        response = httpx.post(server + "/v1/chat/completions", json={"model": "chitchat-gru", **body})
        assert response.status_code == 400, (body, response.text)
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert error["message"] and "\n" not in error["message"] and error["param"] == param, (body, error)
    not_json = httpx.post(server + "/v1/chat/completions", content=b"{oops", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400 and "error" in not_json.json()
    assert httpx.get(server + "/v1/nowhere").json()["error"]["message"]


def test_chunked_oversized_body_is_413_in_openai_shape(server):
    reply, sent = send_chunked_until_answered(server, "/v1/chat/completions")
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 4 * 2**20  # refused long before the 50 MB went out
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_too_large" and str(MAX_BODY_BYTES) in body["error"]["message"]


def test_api_key_guards_v1_and_api_but_not_health(service):
    with running_server(create_app(service, api_key=KEY)) as url:
        for key in (None, "sk-wrong"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            for path in ("/v1/models", "/api/categories"):
                response = httpx.get(url + path, headers=headers)
                assert response.status_code == 401 and "sk-wrong" not in response.text
            assert "error" in httpx.get(url + "/v1/models", headers=headers).json()
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="sk-wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert good.models.list().data[0].id == "chitchat-gru"
        assert chat(good).choices[0].message.content
        assert httpx.get(url + "/health").status_code == 200 and httpx.get(url + "/").status_code == 200


class SlowService:
    """The real service with a pause per generated token, so a request is still running when the test acts."""

    def __init__(self, inner, pause: float):
        self.inner, self.pause = inner, pause

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def answer_batch(self, questions, categories=None, decoding=None, histories=None, streams=None):
        def slowly(stream):
            if stream is None:
                return None
            token = stream.token

            def paused(index, tok, eos):
                time.sleep(self.pause)
                return token(index, tok, eos)
            stream.token = paused
            return stream
        return self.inner.answer_batch(questions, categories, decoding, histories,
                                       [slowly(s) for s in streams or [None] * len(questions)])


def test_disconnect_mid_stream_stops_generation(service):
    slow = SlowService(service, 0.05)
    with running_server(create_app(slow)) as url:
        body = {"model": "chitchat-gru", "messages": [{"role": "user", "content": QUESTION}], "stream": True,
                "max_tokens": 100, "min_tokens": 100}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as response:
            lines = response.iter_lines()
            seen = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: {") for line in seen)
        deadline = time.monotonic() + 10
        while metric(url, "chitchat_generations_cancelled_total") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(url, "chitchat_generations_cancelled_total") == 1
        time.sleep(0.5)  # had it gone on, 100 tokens take 5 s
        tokens = metric(url, "chitchat_generated_tokens_total")
        assert 0 < tokens < 40, tokens
        assert httpx.get(url + "/health").json()["busy"] is False


def test_a_client_that_gives_up_on_a_whole_answer_stops_its_generation_too(service):
    with running_server(create_app(SlowService(service, 0.05))) as url:
        body = {"model": "chitchat-gru", "messages": [{"role": "user", "content": QUESTION}],
                "max_tokens": 100, "min_tokens": 100}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=body, timeout=0.5)
        deadline = time.monotonic() + 10
        while metric(url, "chitchat_generations_cancelled_total") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(url, "chitchat_generations_cancelled_total") == 1
        deadline = time.monotonic() + 10
        while httpx.get(url + "/health").json()["busy"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert time.monotonic() < deadline  # stopped long before its 100 tokens (5 s) were done


def test_flood_beyond_max_queue_gets_429_and_the_server_still_answers(service):
    slow = SlowService(service, 0.01)
    with running_server(create_app(slow, max_batch=1, max_queue=2)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)

        def one(i):
            try:
                return chat(client, QUESTION, temperature=1.0, seed=i, max_tokens=20).choices[0].message.content
            except openai.RateLimitError as exc:
                assert exc.response.headers["Retry-After"].isdigit()
                assert exc.body["code"] == "queue_full"
                return 429
        with ThreadPoolExecutor(16) as pool:
            outcomes = list(pool.map(one, range(16)))
        refused = outcomes.count(429)
        assert 0 < refused < 16 and all(isinstance(o, str) for o in outcomes if o != 429)
        assert metric(url, "chitchat_requests_rejected_total", reason="queue_full") == refused
        assert chat(client).choices[0].message.content  # still answers


def test_timeout_is_a_clear_503(service):
    gate = threading.Event()

    class Stuck(SlowService):
        def answer_batch(self, *args, **kwargs):
            gate.wait(30)
            return super().answer_batch(*args, **kwargs)
    with running_server(create_app(Stuck(service, 0), timeout=0.5)) as url:
        response = httpx.post(url + "/v1/chat/completions", timeout=30,
                              json={"model": "chitchat-gru", "messages": [{"role": "user", "content": QUESTION}]})
        api = httpx.post(url + "/api/answer", json={"question": QUESTION}, timeout=30)
        gate.set()
    assert response.status_code == 503 and response.json()["error"]["code"] == "timeout"
    assert "--timeout" in response.json()["error"]["message"] and response.headers["Retry-After"]
    assert api.status_code == 503 and "--timeout" in api.json()["detail"]


def test_metrics_count_requests_and_first_tokens(server, client):
    before = metric(server, "chitchat_requests_total", route="/v1/chat/completions", status="200")
    first = metric(server, "chitchat_time_to_first_token_seconds_count", route="/v1/chat/completions")
    chat(client)
    streamed(client)
    assert metric(server, "chitchat_requests_total", route="/v1/chat/completions", status="200") == before + 2
    assert metric(server, "chitchat_time_to_first_token_seconds_count", route="/v1/chat/completions") == first + 1
    assert metric(server, "chitchat_requests_in_flight") == 1  # the /metrics request itself


def test_a_language_model_continues_prompts_streamed_or_whole(lm_dir):
    from chitchat.answering.continuation import ContinuationService
    from chitchat.cli.common import load_served_service

    lm = load_served_service(lm_dir)
    assert isinstance(lm, ContinuationService)
    prompt = "Жили-были дед да баба,"
    expected = lm.continue_text(prompt, DecodingConfig(max_new_tokens=60))[0].continuation
    assert expected.startswith(" и была у них")
    with running_server(create_app(lm)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["chitchat-lm"]
        whole = client.completions.create(model="chitchat-lm", prompt=prompt, max_tokens=60, temperature=0)
        assert whole.choices[0].text == expected and whole.choices[0].finish_reason == "stop"
        pieces = [c.choices[0].text for c in client.completions.create(model="chitchat-lm", prompt=prompt,
                                                                       max_tokens=60, temperature=0, stream=True)
                  if c.choices]
        assert "".join(pieces) == expected and len([p for p in pieces if p]) > 3
        with pytest.raises(openai.BadRequestError, match="v1/completions"):
            client.chat.completions.create(model="chitchat-lm", messages=[{"role": "user", "content": prompt}])
        assert httpx.post(url + "/api/answer", json={"question": prompt}).status_code == 422


def test_streamed_and_whole_requests_share_one_decoder_call(service):
    from test_web import CountingService

    gate = threading.Event()
    counting = CountingService(service, gate)
    questions = ["Как сварить борщ?", "Что приготовить на ужин?", "Сколько варить яйцо?", "Как испечь блины?"]
    with running_server(create_app(counting, max_batch=16)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        with ThreadPoolExecutor(len(questions) + 1) as pool:
            first = pool.submit(chat, client, QUESTION)
            assert counting.entered.wait(30)  # the first decode holds the model; the rest queue up
            rest = [pool.submit(streamed if i % 2 else chat, client, q) for i, q in enumerate(questions)]
            deadline = time.monotonic() + 30
            while httpx.get(url + "/health").json()["waiting"] < len(questions) and time.monotonic() < deadline:
                time.sleep(0.02)
            gate.set()
            outs = [f.result() for f in rest]
        first.result()
    assert counting.batches == [1, len(questions)]  # two streamed and two whole answers in one call
    for i, (question, out) in enumerate(zip(questions, outs)):
        text = out[0][0] if i % 2 else out.choices[0].message.content
        assert text == service.reply(question).answers[0].text


def test_serve_command_takes_the_production_knobs(tiny_model, monkeypatch):
    import uvicorn
    import torch
    from typer.testing import CliRunner

    from chitchat.cli import app as cli_app

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setenv("CHITCHAT_API_KEY", "from-env")
    threads = ["--threads", str(torch.get_num_threads())]
    result = CliRunner().invoke(cli_app, ["serve", "--model", str(tiny_model), "--max-queue", "3", "--timeout", "7",
                                          *threads])
    assert result.exit_code == 0, result.output
    assert "key required" in result.stderr
    assert seen["app"].state.batcher.max_queue == 3
    from fastapi.testclient import TestClient
    with TestClient(seen["app"]) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer from-env"}).status_code == 200
    for args, message in ((["--max-queue", "0"], "--max-queue must be >= 1, got 0"),
                          (["--timeout", "-1"], "--timeout must be >= 0 seconds (0: no limit), got -1")):
        bad = CliRunner().invoke(cli_app, ["serve", "--model", str(tiny_model), *args, *threads])
        assert bad.exit_code == 1 and bad.stderr.strip() == f"chitchat: error: {message}"
