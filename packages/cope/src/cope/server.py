"""An OpenAI-compatible chat server: ``/v1/chat/completions`` (plain and streamed),
``/v1/models``, ``/health`` (fastapi + uvicorn, bound to 127.0.0.1 unless told otherwise).

One app, two services behind it:
- ``ModelService`` serves one local backend, so the cascade's "large" role goes through
  the same HTTP path a hosted API would;
- ``cope.service.CopeService`` serves COPE itself (``cope serve``): one model name per
  method and threshold.

What the app does for both:
- validates the request against what the service can honour: ``tools``, ``logprobs``,
  ``top_p`` other than 1, penalties, non-text ``response_format`` or content parts, tool
  messages... are refused with a 400 that names the field (never silently ignored); an
  unknown model is a 404 listing the served ones;
- batches: requests arriving within ``wait_s`` of each other go to the service together
  (``Batcher``), so a backend that generates batches (hf, vllm) decodes them in one call;
- bounds the queue: past ``max_pending`` admitted requests, a 429 with ``Retry-After``
  (the estimated seconds until a slot frees), instead of piling up connections;
- streams (``stream=True``) as server-sent events in the OpenAI chunk format: the role
  chunk at once, ``: keep-alive`` comments while the answer is computed (a cascade
  decides on whole outputs, so the text comes when the cascade has settled), the content,
  the finish chunk, a usage chunk if ``stream_options.include_usage``, ``data: [DONE]``.
"""

from __future__ import annotations

import asyncio
import json
import math
import queue
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from cope.backends import Backend, Generation, Message

MAX_N = 16
DEFAULT_MAX_TOKENS = 256
# OpenAI request fields that are accepted but change nothing for a local model
_HARMLESS = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}
# fields accepted only at their neutral value: anything else cannot be honoured
_NEUTRAL: dict[str, Callable[[Any], bool]] = {
    "top_p": lambda v: v is None or v == 1,
    "presence_penalty": lambda v: v in (None, 0),
    "frequency_penalty": lambda v: v in (None, 0),
    "logprobs": lambda v: v in (None, False),
    "top_logprobs": lambda v: v is None,
    "logit_bias": lambda v: not v,
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "tools": lambda v: not v,
    "tool_choice": lambda v: v in (None, "none"),
    "functions": lambda v: not v,
    "function_call": lambda v: v in (None, "none"),
    "modalities": lambda v: v in (None, ["text"]),
    "audio": lambda v: v is None,
    "prediction": lambda v: v is None,
    "web_search_options": lambda v: v is None,
    "reasoning_effort": lambda v: v is None,
}
_KNOWN = {"model", "messages", "n", "temperature", "max_tokens", "max_completion_tokens",
          "stop", "seed", "stream", "stream_options"} | _HARMLESS | set(_NEUTRAL)


class RequestError(Exception):
    """A request the server will not run: answered with ``status`` and an OpenAI error body."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.code}}


@dataclass
class ChatJob:
    """A validated chat request."""

    model: str
    messages: list[Message]
    n: int = 1
    temperature: float | None = None  # None: the service's default
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    extra: dict = field(default_factory=dict)  # service-specific body fields
    plan: Any = None  # what the service resolved the request to (set by its check())


@dataclass
class Reply:
    texts: list[str]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # extra top-level response fields
    error: str | None = None  # the backend failed: answered 502


class Service(Protocol):
    extra_fields: frozenset[str]  # body fields beyond OpenAI's that the service reads

    def model_ids(self) -> list[str]: ...

    def check(self, job: ChatJob) -> None:
        """Raise RequestError for what cannot be honoured; may set ``job.plan``."""

    def submit(self, job: ChatJob) -> Future: ...  # -> Reply

    def retry_after_s(self, pending: int) -> float: ...


def parse_chat(body: Any, service: Service) -> ChatJob:
    """A chat request body -> ChatJob, refusing (RequestError) what the server cannot honour."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    unknown = sorted(set(body) - _KNOWN - set(service.extra_fields))
    if unknown:
        extra = f"; cope-specific fields: {sorted(service.extra_fields)}" \
            if service.extra_fields else ""
        raise RequestError(f"unsupported field(s) {unknown}{extra}", param=unknown[0])
    for key, neutral in _NEUTRAL.items():
        if key in body and not neutral(body[key]):
            raise RequestError(f"{key}={json.dumps(body[key])[:80]} is not supported by this "
                               "server (only its default is); leave it out", param=key)
    model = body.get("model")
    ids = service.model_ids()
    if model is None and len(ids) == 1:
        model = ids[0]
    if not isinstance(model, str):
        raise RequestError("model is required: one of " + ", ".join(ids), param="model")
    messages = _messages(body.get("messages"))
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        raise RequestError(f"n must be an integer from 1 to {MAX_N}, got {n!r}", param="n")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, int | float)
                                    or isinstance(temperature, bool)
                                    or not 0 <= temperature <= 2):
        raise RequestError(f"temperature must be a number from 0 to 2, got {temperature!r}",
                           param="temperature")
    max_tokens = body.get("max_completion_tokens")
    key = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, key = body.get("max_tokens"), "max_tokens"
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(
            max_tokens, bool) or max_tokens < 1):
        raise RequestError(f"{key} must be a positive integer, got {max_tokens!r}", param=key)
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > 4 or not all(
            isinstance(s, str) and s for s in stop):
        raise RequestError("stop must be a non-empty string or a list of up to 4 of them",
                           param="stop")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise RequestError(f"seed must be an integer, got {seed!r}", param="seed")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise RequestError("stream must be true or false", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise RequestError("stream_options supports only include_usage",
                           param="stream_options")
    if options and not stream:
        raise RequestError("stream_options needs stream=true", param="stream_options")
    job = ChatJob(model=model, messages=messages, n=n, temperature=temperature,
                  max_tokens=max_tokens, stop=stop, seed=seed, stream=stream,
                  include_usage=bool(options.get("include_usage")),
                  extra={k: body[k] for k in service.extra_fields if k in body})
    service.check(job)
    return job


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise RequestError("messages must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where} must be an object", param=where)
        role = m.get("role")
        if role in ("tool", "function") or m.get("tool_calls") or m.get("function_call"):
            raise RequestError(f"{where}: tool and function messages are not supported "
                               "(this server has no tools)", param=where)
        if role not in ("system", "developer", "user", "assistant"):
            raise RequestError(f"{where}.role must be system, developer, user or assistant, "
                               f"got {role!r}", param=f"{where}.role")
        out.append({"role": "system" if role == "developer" else role,
                    "content": _content(m.get("content"), where)})
    if out[-1]["role"] != "user":
        raise RequestError("the last message must be the user's (it is the problem); "
                           "earlier turns are context", param=f"messages[{len(out) - 1}]")
    return out


def _content(content: Any, where: str) -> str:
    """Chat content is a string or a list of text parts; other parts cannot be honoured."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestError(f"{where}.content: only text parts are supported, got "
                                   f"{kind!r}", param=f"{where}.content")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise RequestError(f"{where}.content must be a string or a list of text parts",
                       param=f"{where}.content")


# ---------------------------------------------------------------- the app


def create_app(service: Service, max_pending: int = 64, keepalive_s: float = 10.0,
               title: str = "cope"):
    app = FastAPI(title=title)
    state = {"pending": 0, "served": 0, "refused_busy": 0}
    lock = threading.Lock()

    def release(_: Future) -> None:
        with lock:
            state["pending"] -= 1
            state["served"] += 1

    @app.get("/health")
    def health() -> dict:
        extra = service.status() if hasattr(service, "status") else {}
        with lock:
            return {"status": "ok", "pending": state["pending"], "max_pending": max_pending,
                    "served": state["served"], "refused_busy": state["refused_busy"],
                    "models": service.model_ids(), **extra}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                            "owned_by": "cope"} for m in service.model_ids()]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse(RequestError("the request body is not valid JSON").body(), 400)
        try:
            job = parse_chat(body, service)
        except RequestError as err:
            return JSONResponse(err.body(), err.status)
        with lock:
            if state["pending"] >= max_pending:
                state["refused_busy"] += 1
                wait = max(1, math.ceil(service.retry_after_s(state["pending"])))
                err = RequestError(f"the server is busy ({state['pending']} requests "
                                   f"pending, at most {max_pending}); retry after {wait} s",
                                   status=429, code="rate_limit_exceeded")
                return JSONResponse(err.body(), 429, headers={"Retry-After": str(wait)})
            state["pending"] += 1
        future = service.submit(job)
        future.add_done_callback(release)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if job.stream:
            return StreamingResponse(_stream(job, future, rid, created, keepalive_s),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            reply = await asyncio.wrap_future(future)
        except Exception as err:  # a bug in the service: answer, do not die
            return JSONResponse(RequestError(f"{type(err).__name__}: {err}", status=500)
                                .body(), 500)
        if reply.error:
            return JSONResponse(RequestError(reply.error, status=502).body(), 502)
        return {"id": rid, "object": "chat.completion", "created": created, "model": job.model,
                "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": reason}
                            for i, (text, reason) in enumerate(_choices(reply))],
                "usage": _usage(reply), **reply.extra}

    return app


def _choices(reply: Reply) -> list[tuple[str, str]]:
    reasons = reply.finish_reasons or ["stop"] * len(reply.texts)
    return list(zip(reply.texts, reasons))


def _usage(reply: Reply) -> dict:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def _stream(job: ChatJob, future: Future, rid: str, created: int, keepalive_s: float):
    def chunk(choices: list[dict], **extra) -> str:
        return _sse({"id": rid, "object": "chat.completion.chunk", "created": created,
                     "model": job.model, "choices": choices, **extra})

    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                  "logprobs": None, "finish_reason": None} for i in range(job.n)])
    waiting = asyncio.wrap_future(future)
    while True:
        try:
            reply = await asyncio.wait_for(asyncio.shield(waiting), keepalive_s)
            break
        except TimeoutError:
            yield ": keep-alive\n\n"  # an SSE comment: clients skip it, proxies see traffic
        except Exception as err:
            reply = Reply([], error=f"{type(err).__name__}: {err}")
            break
    if reply.error:
        yield _sse(RequestError(reply.error, status=502).body())
        yield "data: [DONE]\n\n"
        return
    for i, (text, reason) in enumerate(_choices(reply)):
        for piece in _pieces(text):
            yield chunk([{"index": i, "delta": {"content": piece}, "logprobs": None,
                          "finish_reason": None}])
        yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason}],
                    **(reply.extra if i == len(reply.texts) - 1 else {}))
    if job.include_usage:
        yield chunk([], usage=_usage(reply))
    yield "data: [DONE]\n\n"


def _pieces(text: str, size: int = 16) -> list[str]:
    """Content deltas: whole words, about `size` characters each; they add up to `text`."""
    out, current = [], ""
    for token in re.findall(r"\S+\s*|\s+", text):
        current += token
        if len(current) >= size:
            out.append(current)
            current = ""
    if current or not out:
        out.append(current)
    return out


# ---------------------------------------------------------------- batching


class Batcher:
    """One worker thread: jobs submitted within ``wait_s`` of each other run together.

    ``run(key, jobs) -> replies`` is called once per group of jobs with the same
    ``key(job)`` (one decoding setting, one method), so a batched backend decodes all of
    their prompts in one call. ``retry_after_s`` estimates the wait from recent batches.
    """

    def __init__(self, run: Callable[[Hashable, list[ChatJob]], list[Reply]],
                 key: Callable[[ChatJob], Hashable], wait_s: float = 0.02,
                 max_jobs: int = 64, name: str = "cope-batcher"):
        self.run, self.key = run, key
        self.wait_s, self.max_jobs = wait_s, max_jobs
        self.queue: queue.Queue[tuple[ChatJob, Future]] = queue.Queue()
        self.batches: list[int] = []  # jobs per run() call (tests, bench)
        self.recent_s = 1.0  # moving average of one batch's wall time
        threading.Thread(target=self._worker, daemon=True, name=name).start()

    def submit(self, job: ChatJob) -> Future:
        future: Future = Future()
        self.queue.put((job, future))
        return future

    def retry_after_s(self, pending: int) -> float:
        return self.recent_s * max(1, math.ceil(pending / self.max_jobs))

    def _worker(self) -> None:
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_jobs:
                try:
                    batch.append(self.queue.get(timeout=max(deadline - time.monotonic(), 0)))
                except queue.Empty:
                    break
            groups: dict[Hashable, list[tuple[ChatJob, Future]]] = {}
            for job, future in batch:
                groups.setdefault(self.key(job), []).append((job, future))
            started = time.monotonic()
            for key, items in groups.items():
                self.batches.append(len(items))
                try:
                    replies = self.run(key, [job for job, _ in items])
                except Exception as err:  # the server answers 502; the worker lives on
                    replies = [Reply([], error=f"{type(err).__name__}: {err}")] * len(items)
                for (_, future), reply in zip(items, replies):
                    future.set_result(reply)
            self.recent_s = 0.7 * self.recent_s + 0.3 * (time.monotonic() - started)


class ModelService:
    """Serves one backend as one model; concurrent requests share a ``generate`` call."""

    extra_fields: frozenset[str] = frozenset()

    def __init__(self, backend: Backend, model_name: str, wait_s: float = 0.02,
                 max_prompts: int = 64, default_temperature: float = 1.0,
                 default_max_tokens: int = DEFAULT_MAX_TOKENS):
        self.backend, self.model_name = backend, model_name
        self.default_temperature = default_temperature  # the OpenAI API's default
        self.default_max_tokens = default_max_tokens
        self.batcher = Batcher(self._run, self._key, wait_s, max_prompts, "cope-model-batcher")

    @property
    def batches(self) -> list[int]:
        return self.batcher.batches

    def model_ids(self) -> list[str]:
        return [self.model_name]

    def check(self, job: ChatJob) -> None:
        if job.model != self.model_name:
            raise RequestError(f"model {job.model!r} is not served here; available: "
                               f"{self.model_name}", param="model", status=404,
                               code="model_not_found")

    def submit(self, job: ChatJob) -> Future:
        return self.batcher.submit(job)

    def retry_after_s(self, pending: int) -> float:
        return self.batcher.retry_after_s(pending)

    def _key(self, job: ChatJob) -> Hashable:
        temperature = self.default_temperature if job.temperature is None else job.temperature
        return (job.n, temperature, job.max_tokens or self.default_max_tokens,
                tuple(job.stop), job.seed)

    def _run(self, key: Hashable, jobs: list[ChatJob]) -> list[Reply]:
        n, temperature, max_tokens, stop, seed = key
        gens = self.backend.generate([j.messages for j in jobs], n=n, temperature=temperature,
                                     max_tokens=max_tokens, stop=list(stop) or None, seed=seed)
        return [_reply_of(g, max_tokens) for g in gens]


def _reply_of(gen: Generation, max_tokens: int) -> Reply:
    if gen.error:
        return Reply([], error=gen.error)
    reasons = ["length" if c >= max_tokens else "stop" for c in gen.completion_tokens]
    return Reply(list(gen.texts), gen.prompt_tokens, gen.total_completion_tokens,
                 reasons if len(reasons) == len(gen.texts) else [])


# ---------------------------------------------------------------- running it


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """Runs an app with uvicorn in a background thread: ``with ServerThread(app) as url: ...``.

    ``port=0`` (or None) binds a free port; ``base_url`` is the ``.../v1`` root.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None):
        import uvicorn

        self.host = host
        self.port = port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="cope-server")

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"server on {self.host}:{self.port} did not start")
            time.sleep(0.02)
        return self.base_url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_backend(backend: Backend, model_name: str, host: str = "127.0.0.1",
                  port: int | None = None) -> ServerThread:
    """Start serving `backend` on loopback; returns the running server (``.base_url``)."""
    server = ServerThread(create_app(ModelService(backend, model_name), title=model_name),
                          host, port)
    server.start()
    return server


__all__: Sequence[str] = ["create_app", "parse_chat", "ChatJob", "Reply", "RequestError",
                          "Batcher", "ModelService", "ServerThread", "serve_backend",
                          "free_port"]
