"""The OpenAI-compatible client against servers this test starts on 127.0.0.1."""

import threading

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from cope.backends import OpenAIBackend, ScriptedBackend
from cope.server import ModelService, ServerThread, create_app, serve_backend


def echo(text: str, k: int) -> str:
    return f"sample {k} of: {text.split()[0]}"


@pytest.fixture
def served():
    backend = ScriptedBackend(echo, "echo")
    server = serve_backend(backend, "echo-model")
    yield server, backend
    server.stop()


def test_samples_usage_and_stop_over_http(served):
    server, backend = served
    assert server.base_url.startswith("http://127.0.0.1:")
    client = OpenAIBackend(server.base_url, "echo-model", concurrency=4, timeout_s=10)
    gens = client.generate(["alpha one", "beta two three"], n=3, temperature=0.7,
                           max_tokens=8, stop=[" of"])
    assert [g.texts for g in gens] == [["sample 0", "sample 1", "sample 2"]] * 2
    assert [g.prompt_tokens for g in gens] == [2, 3]
    assert all(g.error is None for g in gens)
    assert sum(gens[0].completion_tokens) == 2 * 3  # words of the (cut) samples


def test_concurrent_requests_share_a_batch():
    backend = ScriptedBackend(echo, "echo")
    service = ModelService(backend, "echo-model", wait_s=0.3)
    with ServerThread(create_app(service)) as url:
        client = OpenAIBackend(url, "echo-model", concurrency=8, timeout_s=10)
        gens = client.generate([f"q{i} x" for i in range(6)], n=2, max_tokens=4)
    assert all(len(g.texts) == 2 for g in gens)
    assert len(backend.calls) < 6  # fewer backend calls than requests
    assert sum(service.batches) == 6


def flaky_app(failures: int, status: int = 503):
    app = FastAPI()
    hits = {"n": 0}
    lock = threading.Lock()

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        with lock:
            hits["n"] += 1
            n = hits["n"]
        if n <= failures:
            return JSONResponse({"error": {"message": "busy"}}, status_code=status)
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "Answer: 4"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}

    return app, hits


def test_transient_failures_are_retried():
    app, hits = flaky_app(failures=2)
    with ServerThread(app) as url:
        client = OpenAIBackend(url, "m", max_retries=3, backoff_s=0.01, timeout_s=10)
        gen = client.generate(["q"], n=1)[0]
    assert gen.error is None and gen.texts == ["Answer: 4"] and hits["n"] == 3
    assert (gen.prompt_tokens, gen.completion_tokens) == (5, [2])


def test_persistent_failure_comes_back_as_an_error_not_an_exception():
    app, hits = flaky_app(failures=100)
    with ServerThread(app) as url:
        client = OpenAIBackend(url, "m", max_retries=2, backoff_s=0.01, timeout_s=10)
        gen = client.generate(["q"], n=1)[0]
    assert gen.texts == [] and "InternalServerError" in gen.error and hits["n"] == 3


def test_client_error_is_not_retried():
    app, hits = flaky_app(failures=100, status=400)
    with ServerThread(app) as url:
        gen = OpenAIBackend(url, "m", max_retries=3, backoff_s=0.01).generate(["q"])[0]
    assert gen.error and hits["n"] == 1


def test_unreachable_endpoint_is_an_error():
    from cope.server import free_port

    client = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "m", max_retries=1,
                           backoff_s=0.01, timeout_s=2)
    gen = client.generate(["q"])[0]
    assert gen.error and "Connection" in gen.error


def recording_app(status: int = 200, content: str = "Answer: 4"):
    app = FastAPI()
    bodies = []

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        bodies.append(body)
        if status != 200:
            return JSONResponse({"error": {"message": "invalid api key"}}, status_code=status)
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}

    return app, bodies


def test_max_tokens_stop_and_n_go_on_the_request():
    app, bodies = recording_app()
    with ServerThread(app) as url:
        OpenAIBackend(url, "m").generate(["q"], n=3, temperature=0.5, max_tokens=17,
                                         stop=["\n\n"], seed=4)
    (body,) = bodies
    assert (body["max_tokens"], body["n"], body["temperature"], body["stop"], body["seed"]) \
        == (17, 3, 0.5, ["\n\n"], 4)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_fail_fast(status):
    from cope.backends import BackendAuthError

    app, bodies = recording_app(status=status)
    with ServerThread(app) as url:
        client = OpenAIBackend(url, "m", max_retries=5, backoff_s=0.01, name="large")
        with pytest.raises(BackendAuthError, match=f"model 'large' .*{status}"):
            client.generate(["q"])
    assert len(bodies) == 1  # not retried
