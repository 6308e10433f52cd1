"""COPE as one chat model: the responder behind ``cope serve``.

The last user message is the problem; the cascade runs on it and the reply is the output
that carried the winning answer. The response's ``usage`` adds up every model's tokens,
and an extra ``cope`` field tells the stage it settled at, the votes and the paid cost.
"""

from __future__ import annotations

import threading
import uuid

from cope.backends import Backend, Generation
from cope.cascade import Engine, MethodConfig, run_method
from cope.config import CopeConfig
from cope.tasks import Problem


def cope_responder(cfg: CopeConfig, method: MethodConfig, backends: dict[str, Backend]):
    engine = Engine(cfg.roster(), backends)
    lock = threading.Lock()  # one cascade at a time: the local models are shared

    def respond(messages, n, temperature, max_tokens, stop, seed):
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        problem = Problem(id=uuid.uuid4().hex, question=question, answer="",
                          task_type="code" if cfg.data.source == "mbpp" else "math")
        with lock:
            record = run_method(method, [problem], engine, cfg.prompts, cfg.limits)[problem.id]
            engine.clear()
        reply = _reply(record)
        prompt = sum(e["prompt_tokens"] for e in record["ledger"])
        completion = sum(e["completion_tokens"] for e in record["ledger"])
        gen = Generation(texts=[reply] * n, prompt_tokens=prompt,
                         completion_tokens=[completion] + [0] * (n - 1))
        extra = {"cope": {
            "answer": record["answer"], "settled_stage": record["settled_stage"],
            "reason": record["reason"], "cost_usd": record["cost_usd"],
            "stages": [{"stage": s["stage"], "planner": s["planner"], "executor": s["executor"],
                        "plans": s["plans"], "votes": s["votes"], "share": s["share"]}
                       for s in record["stages"]],
            "errors": record["errors"]}}
        return gen, extra

    return respond


def _reply(record: dict) -> str:
    """The last settled stage's output that produced the chosen answer."""
    answer = record["answer"]
    for stage in reversed(record["stages"]):
        for text, parsed in zip(stage["outputs"], stage["answers"]):
            if answer is not None and parsed == answer:
                return text.strip()
    return f"Answer: {answer}" if answer is not None else "No answer could be reached."
