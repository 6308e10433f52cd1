"""An OpenAI-compatible ``/v1/chat/completions`` server (fastapi + uvicorn).

Two uses, one app:
- serving a local model, so the cascade's "large" role goes through the same HTTP path a
  hosted API would (``ModelResponder``: requests arriving together are generated in one
  batch by a micro-batcher);
- serving COPE itself as one model (``cope serve``; the responder lives in cli.py).

Binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from cope.backends import Backend, Generation, Message

# responder(messages, n, temperature, max_tokens, stop, seed) -> (Generation, extra fields)
Responder = Callable[[list[Message], int, float, int, list[str] | None, int | None],
                     tuple[Generation, dict[str, Any]]]


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[dict[str, Any]]
    n: int = 1
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


def create_app(responder: Responder, model_name: str):
    from fastapi import FastAPI, HTTPException

    app = FastAPI(title=f"cope: {model_name}")

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model",
                                            "owned_by": "cope"}]}

    @app.post("/v1/chat/completions")
    def chat(req: ChatRequest) -> dict:  # sync: fastapi runs it in its thread pool
        if not req.messages:
            raise HTTPException(400, "messages must not be empty")
        if not 1 <= req.n <= 64:
            raise HTTPException(400, "n must be between 1 and 64")
        messages = [{"role": str(m.get("role", "user")), "content": _content(m.get("content"))}
                    for m in req.messages]
        stop = [req.stop] if isinstance(req.stop, str) else req.stop
        max_tokens = req.max_completion_tokens or req.max_tokens or 256
        gen, extra = responder(messages, req.n, req.temperature or 0.0, max_tokens, stop,
                               req.seed)
        if gen.error:
            raise HTTPException(502, gen.error)
        completion = gen.total_completion_tokens
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion",
            "created": int(time.time()), "model": model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop"} for i, text in enumerate(gen.texts)],
            "usage": {"prompt_tokens": gen.prompt_tokens, "completion_tokens": completion,
                      "total_tokens": gen.prompt_tokens + completion},
            **extra,
        }

    return app


def _content(content: Any) -> str:
    """Chat content may be a string or a list of typed parts; keep the text parts."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


@dataclass
class _Pending:
    messages: list[Message]
    n: int
    temperature: float
    max_tokens: int
    stop: tuple[str, ...]
    seed: int | None
    future: Future


class ModelResponder:
    """Serves a backend; requests that arrive within ``wait_s`` of each other share a batch."""

    def __init__(self, backend: Backend, wait_s: float = 0.02, max_prompts: int = 64):
        self.backend = backend
        self.wait_s = wait_s
        self.max_prompts = max_prompts
        self.queue: queue.Queue[_Pending] = queue.Queue()
        self.batches: list[int] = []  # prompts per backend call (for tests and the bench)
        threading.Thread(target=self._worker, daemon=True, name="cope-batcher").start()

    def __call__(self, messages, n, temperature, max_tokens, stop, seed):
        pending = _Pending(messages, n, temperature, max_tokens, tuple(stop or ()), seed,
                           Future())
        self.queue.put(pending)
        return pending.future.result(), {}

    def _worker(self) -> None:
        while True:
            batch = [self.queue.get()]
            deadline = time.monotonic() + self.wait_s
            while len(batch) < self.max_prompts:
                try:
                    batch.append(self.queue.get(timeout=max(deadline - time.monotonic(), 0)))
                except queue.Empty:
                    break
            groups: dict[tuple, list[_Pending]] = {}
            for p in batch:  # one backend call per decoding setting
                groups.setdefault((p.n, p.temperature, p.max_tokens, p.stop, p.seed), []).append(p)
            for (n, temperature, max_tokens, stop, seed), items in groups.items():
                try:
                    self.batches.append(len(items))
                    gens = self.backend.generate([p.messages for p in items], n=n,
                                                 temperature=temperature, max_tokens=max_tokens,
                                                 stop=list(stop) or None, seed=seed)
                    for p, g in zip(items, gens):
                        p.future.set_result(g)
                except Exception as err:  # the server answers 502; it does not die
                    for p in items:
                        p.future.set_result(Generation(texts=[], error=f"{type(err).__name__}: {err}"))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """Runs an app with uvicorn in a background thread: ``with ServerThread(app) as url: ...``."""

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
    server = ServerThread(create_app(ModelResponder(backend), model_name), host, port)
    server.start()
    return server


__all__: Sequence[str] = ["create_app", "ModelResponder", "ServerThread", "serve_backend",
                          "free_port"]
