"""`cope serve` through the official openai client, against servers the tests start on
127.0.0.1 and stop; scripted small/large models, so every test runs in seconds."""

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from cope_helpers import METHODS, large_responder, small_responder

from cope.backends import ScriptedBackend
from cope.config import CopeConfig
from cope.server import ServerThread, create_app
from cope.service import CopeService

MODELS = [{"name": "small", "backend": "hf"},
          {"name": "large", "backend": "openai", "price_in": 2.5, "price_out": 10.0}]


class Recording(ScriptedBackend):
    """A scripted backend that also records the decoding arguments of every call."""

    def __init__(self, responder, name="scripted", delay_s=0.0):
        super().__init__(responder, name)
        self.kwargs: list[dict] = []
        self.delay_s = delay_s

    def generate(self, prompts, **kw):
        self.kwargs.append(kw)
        time.sleep(self.delay_s)
        return super().generate(prompts, **kw)


def make_service(small=None, large=None, **kw):
    cfg = CopeConfig(models=MODELS, methods=METHODS, sweep_thresholds=[0.5])
    small = small or Recording(small_responder, "small")
    large = large or Recording(large_responder, "large")
    return CopeService(cfg, {"small": small, "large": large}, **kw), small, large


@pytest.fixture
def served():
    service, small, large = make_service(wait_s=0.2)
    with ServerThread(create_app(service, max_pending=32)) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=20)
        yield client, url, service, small, large


def user(text):
    return [{"role": "user", "content": text}]


def test_non_streaming_reply_usage_and_cope_details(served):
    client, *_ = served
    resp = client.chat.completions.create(model="cope", messages=user("MEDIUM question"))
    assert resp.choices[0].message.content == "Answer: 2"
    assert resp.choices[0].finish_reason == "stop" and resp.object == "chat.completion"
    assert resp.usage.prompt_tokens > 0 and resp.usage.total_tokens > resp.usage.prompt_tokens
    details = resp.model_extra["cope"]
    assert details["method"] == "cope" and details["task_type"] == "math"
    choice = details["choices"][0]
    assert choice["settled_stage"] == 2 and choice["answer"] == "2"
    assert [s["stage"] for s in choice["stages"]] == [1, 2] and details["cost_usd"] > 0


def test_streaming_sends_openai_chunks_and_done(served):
    client, url, *_ = served
    stream = client.chat.completions.create(
        model="cope", messages=user("HARD question"), stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Answer: 3"
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and
              c.choices[0].finish_reason]
    assert finish == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    # on the wire: server-sent events that end with the [DONE] sentinel
    with httpx.stream("POST", f"{url}/chat/completions", timeout=20, json={
            "model": "large", "messages": user("EASY question"), "stream": True}) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in raw.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)


def test_models_health_and_model_names_choose_the_method(served):
    client, url, service, small, large = served
    ids = [m.id for m in client.models.list()]
    for name in ("cope", "cope-threshold-0.5", "small_only", "large_only", "cascade_no_plan",
                 "cope@t=0.5", "small", "large"):
        assert name in ids
    health = httpx.get(url.removesuffix("/v1") + "/health").json()
    assert health["status"] == "ok" and health["pending"] == 0 and "cope" in health["models"]
    # threshold 0.25: the small stage's 1-in-4 share is enough, so MEDIUM settles (wrongly)
    low = client.chat.completions.create(model="cope-threshold-0.25",
                                         messages=user("MEDIUM question"))
    assert low.model_extra["cope"]["choices"][0]["settled_stage"] == 1
    assert low.choices[0].message.content == "Answer: 5"
    alone = client.chat.completions.create(model="large", messages=user("MEDIUM question"))
    assert alone.choices[0].message.content == "Answer: 3"
    assert [s["executor"] for s in alone.model_extra["cope"]["choices"][0]["stages"]] \
        == ["large"]
    assert client.chat.completions.create(
        model="small_only", messages=user("EASY question")).choices[0].message.content \
        == "so Answer: 1"


def test_the_whole_conversation_is_used(served):
    client, url, service, small, large = served
    messages = [{"role": "system", "content": "Be terse."},
                {"role": "user", "content": "Earlier turn about apples."},
                {"role": "assistant", "content": "Noted, apples."},
                {"role": "user", "content": "HARD question"}]
    resp = client.chat.completions.create(model="large", messages=messages)
    assert resp.choices[0].message.content == "Answer: 3"
    (prompt,) = large.calls[-1][0]
    for part in ("Be terse.", "Earlier turn about apples.", "Noted, apples.", "HARD question"):
        assert part in prompt
    assert prompt.index("apples.") < prompt.index("HARD question")  # context comes first


def test_max_tokens_temperature_stop_and_n_are_honoured(served):
    client, url, service, small, large = served
    resp = client.chat.completions.create(model="large", messages=user("EASY question"),
                                          max_tokens=5, temperature=0.9, stop=["swer"])
    assert resp.choices[0].message.content == "No answer could be reached."  # cut at "swer"
    kw = large.kwargs[-1]
    assert kw["max_tokens"] == 5 and kw["temperature"] == 0.9 and "swer" in kw["stop"]
    resp = client.chat.completions.create(model="cope", messages=user("HARD question"),
                                          temperature=0.3, n=3)
    assert [c.message.content for c in resp.choices] == ["Answer: 3"] * 3
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert resp.model_extra["cope"]["temperature_stages"] == [3]  # the single-sample stage
    assert large.kwargs[-1]["temperature"] == 0.3
    # the voting stages keep theirs (the last two small calls: stage 1 and 2 executions)
    assert [k["temperature"] for k in small.kwargs[-2:]] == [0.7, 0.7]
    # three independent copies: each cascade asks for its own large plan
    assert len(large.calls[-2][0]) == 3


@pytest.mark.parametrize("body, status, needle", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ({"top_p": 0.5}, 400, "top_p"),
    ({"logprobs": True}, 400, "logprobs"),
    ({"response_format": {"type": "json_object"}}, 400, "response_format"),
    ({"n": 0}, 400, "n must be"),
    ({"model": "gpt-9"}, 404, "not served here"),
    ({"model": "cope-threshold-1.5"}, 404, "threshold"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     400, "last message"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     400, "only text parts"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]}, 400, "tool"),
    ({"model": "cope:code"}, 400, "needs tests"),
    ({"messages": [{"role": "user", "content": "  "}]}, 400, "last user message is empty"),
    ({"task_type": "poetry"}, 400, "task_type"),
    ({"frobnicate": 1}, 400, "unsupported field"),
])
def test_what_cannot_be_honoured_is_refused(served, body, status, needle):
    client, url, *_ = served
    request = {"model": "cope", "messages": user("EASY question"), **body}
    raw = httpx.post(f"{url}/chat/completions", json=request, timeout=20)
    assert raw.status_code == status, raw.text
    assert needle in raw.json()["error"]["message"]


def test_a_bad_request_through_the_client_raises(served):
    client, *_ = served
    with pytest.raises(openai.BadRequestError, match="tools"):
        client.chat.completions.create(
            model="cope", messages=user("EASY question"),
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    with pytest.raises(openai.NotFoundError, match="not served"):
        client.chat.completions.create(model="nope", messages=user("EASY question"))


def test_code_requests_vote_on_their_tests(served):
    client, url, service, small, large = served

    def coder(text, k):
        if "Write a one-sentence plan" in text:
            return "Plan: add them"
        return "```python\ndef add(a, b):\n    return a + b\n```"

    service.engine.backends["small"] = ScriptedBackend(coder, "small")
    resp = client.chat.completions.create(
        model="cope:code", messages=user("Write add(a, b)."),
        extra_body={"tests": ["assert add(1, 2) == 3"]})
    choice = resp.model_extra["cope"]["choices"][0]
    assert resp.model_extra["cope"]["task_type"] == "code"
    assert choice["settled_stage"] == 1 and "def add" in resp.choices[0].message.content
    sent = [p for prompts, _ in service.engine.backends["small"].calls for p in prompts]
    assert sent and all("Python function" in p and "Answer: <number>" not in p for p in sent)


def test_ten_concurrent_requests_are_batched(served):
    client, url, service, small, large = served
    questions = ["EASY question", "MEDIUM question", "HARD question"] * 3 + ["EASY question"]
    expected = {"EASY": "so Answer: 1", "MEDIUM": "Answer: 2", "HARD": "Answer: 3"}
    before = len(small.calls)

    def ask(q):
        return client.chat.completions.create(model="cope", messages=user(q))

    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(ask, questions))
    assert [r.choices[0].message.content for r in replies] == \
        [expected[q.split()[0]] for q in questions]
    assert sum(service.batcher.batches) == 10 and len(service.batcher.batches) < 10
    # one request alone makes three small-model calls; batched, ten make far fewer than 30
    assert len(small.calls) - before < 15


def test_past_the_queue_bound_the_server_answers_429_with_retry_after():
    gate = threading.Event()  # the backend holds every request until the test lets go

    def held(text, k):
        gate.wait(30)
        return small_responder(text, k)

    service, *_ = make_service(small=ScriptedBackend(held, "small"), wait_s=0.01,
                               max_problems=1)
    with ServerThread(create_app(service, max_pending=2)) as url:
        def post(_):
            return httpx.post(f"{url}/chat/completions", timeout=30, json={
                "model": "small", "messages": user("EASY question")})

        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post, i) for i in range(6)]
            deadline = time.monotonic() + 20
            while sum(f.done() for f in futures) < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            refused = [f.result() for f in futures if f.done()]
            gate.set()
            results = [f.result() for f in futures]
        health = httpx.get(url.removesuffix("/v1") + "/health").json()
    assert [r.status_code for r in refused] == [429] * 4  # two admitted, four refused
    assert sorted(r.status_code for r in results) == [200, 200, 429, 429, 429, 429]
    busy = refused[0]
    assert int(busy.headers["Retry-After"]) >= 1 and "busy" in busy.json()["error"]["message"]
    assert health["refused_busy"] == 4 and health["pending"] == 0 and health["served"] == 2


def test_a_failing_backend_is_a_502_and_a_stream_error():
    def broken(text, k):
        raise ConnectionError("endpoint down")

    service, *_ = make_service(large=ScriptedBackend(broken, "large"))
    with ServerThread(create_app(service)) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=20)
        with pytest.raises(openai.InternalServerError, match="endpoint down"):
            client.chat.completions.create(model="large", messages=user("EASY question"))
        with pytest.raises(openai.APIError, match="endpoint down"):
            list(client.chat.completions.create(model="large", messages=user("EASY question"),
                                                stream=True))


def test_serve_cli_checks_options_before_models_load(monkeypatch, capsys):
    from cope.cli import main

    def no_models(*a, **k):
        raise AssertionError("models loaded")

    monkeypatch.setattr("cope.experiments.build_backends", no_models)
    assert main(["serve", "--scale", "smoke", "--method", "nope"]) == 2
    assert "--method must be one of" in capsys.readouterr().err
    assert main(["serve", "--scale", "smoke", "--task-type", "essay"]) == 2
    assert "--task-type" in capsys.readouterr().err
    assert main(["serve", "--scale", "smoke", "--max-batch", "0"]) == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err
    with socket.socket() as taken:  # another server already listens on the port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--scale", "smoke", "--port", str(port)]) == 2
    assert f"--port {port}: cannot listen there" in capsys.readouterr().err


def test_the_model_server_streams_too():
    from cope.server import ModelService

    backend = ScriptedBackend(lambda text, k: f"sample {k} with several words in it", "echo")
    with ServerThread(create_app(ModelService(backend, "echo"))) as url:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=20)
        chunks = list(client.chat.completions.create(
            model="echo", messages=user("hi"), n=2, stream=True, max_tokens=3))
    by_choice = {0: "", 1: ""}
    for c in chunks:
        for ch in c.choices:
            by_choice[ch.index] += ch.delta.content or ""
    assert by_choice == {0: "sample 0 with several words in it",
                         1: "sample 1 with several words in it"}
    reasons = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert reasons == ["length", "length"]  # 7 words > max_tokens=3



def test_the_readme_streaming_example_runs(capsys):
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## `cope serve`")[1]
    example = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)

    def model(text, k):
        if "Write a one-sentence plan" in text or "Write a short plan" in text:
            return "Plan: do it"
        if "add(a, b)" in text:
            return "```python\ndef add(a, b):\n    return a + b\n```"
        return "6 - 9 = -3, -3 + 2 = -1. Answer: -1"

    service, *_ = make_service(small=ScriptedBackend(model, "small"),
                               large=ScriptedBackend(model, "large"))
    with ServerThread(create_app(service)) as url:
        exec(compile(example.replace("http://127.0.0.1:8000/v1", url), "README", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "6 - 9 = -3, -3 + 2 = -1. Answer: -1"
    assert "completion_tokens=" in out[1] and out[-1] == "1"


def test_a_slow_cascade_streams_keep_alive_comments_the_client_skips():
    service, *_ = make_service(large=Recording(large_responder, "large", delay_s=0.4))
    with ServerThread(create_app(service, keepalive_s=0.1)) as url:
        body = {"model": "large", "messages": user("EASY question"), "stream": True}
        with httpx.stream("POST", f"{url}/chat/completions", json=body, timeout=20) as raw:
            lines = [ln for ln in raw.iter_lines() if ln]
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=20)
        text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            **body) if c.choices)
    assert ": keep-alive" in lines and lines.index(": keep-alive") == 1  # after the role
    assert text == "Answer: 3"
