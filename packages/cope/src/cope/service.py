"""COPE as chat models: the service behind ``cope serve``.

Model names (``/v1/models`` lists them):
- ``cope``: the configured COPE method (``cope serve --method``, default ``cope``);
- ``cope-threshold-<t>``: the same cascade with every stage but the last accepting at vote
  share ``t`` (0 < t <= 1), e.g. ``cope-threshold-0.6``;
- every configured method by name (``small_only``, ``large_only``, ``cascade_no_plan``,
  sweeps such as ``cope@t=0.5``);
- every roster model by name (``small``, ``large``): that model alone, no plan, one sample
  per choice, greedy unless the request sets ``temperature``.
A ``:math`` or ``:code`` suffix (``cope:code``) or the body field ``task_type`` picks the
task type (default: ``code`` for code data sources, else ``math``). A code request needs
the body field ``tests`` (a list of assert statements): a code vote's confidence is the
pass rate of the sampled programs on them, run in the sandbox.

How a request maps onto the cascade:
- the last user message is the problem; system messages and earlier turns are context
  placed before the templated prompt of every call (plans and executions);
- ``n``: n independent cascades on copies of the problem, one choice each;
- ``max_tokens``: the token limit of every execution (the calls whose output can become
  the reply); plans keep ``limits.plan_max_tokens``;
- ``stop``: added to the executions' stop strings, and the reply is cut at it;
- ``temperature``: the temperature of every single-sample stage (a model alone, COPE's
  last stage); stages that vote keep theirs, since their confidence is the agreement of
  samples (the reply's ``cope.temperature_stages`` says which stages took it);
- ``seed``: seeds the request's sampling (same seed and batch: same samples).

Requests that arrive together for the same model name and limits run through
``run_method`` together, so every stage sends all their prompts in one backend call
(``hf`` decodes them as one padded batch). The reply is the output that carried the
winning answer; ``usage`` adds up every model's tokens; an extra ``cope`` field gives the
method, the stage each choice settled at, its votes and the paid cost.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import threading
from concurrent.futures import Future

from cope.backends import Backend, cut_at_stop
from cope.cascade import Engine, MethodConfig, StageConfig, run_method
from cope.config import CopeConfig
from cope.server import Batcher, ChatJob, Reply, RequestError
from cope.tasks import TASK_TYPES, Problem
from reprokit.errors import ConfigError

CODE_SOURCES = ("mbpp", "humaneval")
THRESHOLD_PREFIX = "cope-threshold-"


@dataclasses.dataclass(frozen=True)
class _Plan:
    base: str  # the model name without its task-type suffix
    task_type: str
    tests: tuple[str, ...]


class CopeService:
    extra_fields = frozenset({"task_type", "tests"})

    def __init__(self, cfg: CopeConfig, backends: dict[str, Backend], method: str = "cope",
                 task_type: str | None = None, wait_s: float = 0.05, max_problems: int = 32):
        self.cfg = cfg
        self.roster = cfg.roster()
        self.methods = {m.name: m for m in cfg.method_list()}
        if method not in self.methods:
            raise ConfigError(f"--method must be one of {sorted(self.methods)}, got "
                              f"{method!r}")
        self.default_method = method
        self.task_type = task_type or ("code" if cfg.data.source in CODE_SOURCES else "math")
        if self.task_type not in TASK_TYPES:
            raise ConfigError(f"--task-type must be math or code, got {task_type!r}")
        self.engine = Engine(self.roster, backends)
        self.ids = itertools.count()
        self.spent_usd = 0.0
        self._lock = threading.Lock()
        self._resolved: dict[str, MethodConfig] = {}
        self.batcher = Batcher(self._run, self._key, wait_s, max_problems, "cope-serve-batcher")

    # ------------------------------------------------------------ the Service protocol

    def model_ids(self) -> list[str]:
        examples = [f"{THRESHOLD_PREFIX}{t:g}" for t in self.cfg.sweep_thresholds]
        names = ["cope", *examples, *self.methods, *self.roster]
        return list(dict.fromkeys(names))

    def status(self) -> dict:
        with self._lock:
            return {"spent_usd": self.spent_usd, "default_task_type": self.task_type,
                    "cope_is": self.default_method}

    def retry_after_s(self, pending: int) -> float:
        return self.batcher.retry_after_s(pending)

    def submit(self, job: ChatJob) -> Future:
        return self.batcher.submit(job)

    def check(self, job: ChatJob) -> None:
        base, _, suffix = job.model.partition(":")
        if suffix and suffix not in TASK_TYPES:
            raise RequestError(f"model {job.model!r}: the suffix must be :math or :code",
                               param="model", status=404, code="model_not_found")
        self.method_for(base)
        if not job.messages[-1]["content"].strip():  # nothing to solve: not worth a cascade
            raise RequestError("the last user message is empty: it is the problem to solve",
                               param=f"messages[{len(job.messages) - 1}].content")
        task_type = job.extra.get("task_type")
        if task_type is not None and task_type not in TASK_TYPES:
            raise RequestError(f"task_type must be math or code, got {task_type!r}",
                               param="task_type")
        if task_type and suffix and task_type != suffix:
            raise RequestError(f"task_type={task_type!r} contradicts the model suffix "
                               f":{suffix}", param="task_type")
        task_type = task_type or suffix or self.task_type
        tests = job.extra.get("tests")
        if tests is not None and (not isinstance(tests, list) or not all(
                isinstance(t, str) and t.strip() for t in tests)):
            raise RequestError("tests must be a list of non-empty strings (assert "
                               "statements)", param="tests")
        if task_type == "code" and not tests:
            raise RequestError("a code request needs tests (a list of assert statements): "
                               "the cascade's confidence is their pass rate", param="tests")
        if task_type == "math" and tests:
            raise RequestError("tests are for code requests (task_type=code)", param="tests")
        job.plan = _Plan(base, task_type, tuple(tests or ()))

    # ------------------------------------------------------------ model names -> methods

    def method_for(self, name: str) -> MethodConfig:
        if name not in self._resolved:
            self._resolved[name] = self._resolve(name)
        return self._resolved[name]

    def _resolve(self, name: str) -> MethodConfig:
        if name == "cope":
            return self.methods[self.default_method]
        if name.startswith(THRESHOLD_PREFIX):
            text = name[len(THRESHOLD_PREFIX):]
            try:
                t = float(text)
            except ValueError:
                t = float("nan")
            if not 0 < t <= 1:
                raise RequestError(f"model {name!r}: the threshold must be a number in "
                                   "(0, 1], e.g. cope-threshold-0.6", param="model",
                                   status=404, code="model_not_found")
            method = copy.deepcopy(self.methods[self.default_method])
            method.name = name
            for stage in method.stages[:-1]:
                stage.threshold = t
            return method
        if name in self.methods:
            return self.methods[name]
        if name in self.roster:
            return MethodConfig(name, [StageConfig(executor=name, executions_per_plan=1,
                                                   temperature=0.0)])
        raise RequestError(f"model {name!r} is not served here; available: "
                           f"{', '.join(self.model_ids())} (cope-threshold-<t> for any t, "
                           "a :math or :code suffix on any)", param="model", status=404,
                           code="model_not_found")

    # ------------------------------------------------------------ running a batch

    def _key(self, job: ChatJob):
        return (job.plan.base, job.temperature, job.max_tokens, tuple(job.stop), job.seed)

    def _run(self, key, jobs: list[ChatJob]) -> list[Reply]:
        base, temperature, max_tokens, stop, seed = key
        method = copy.deepcopy(self.method_for(base))
        takes_temperature = []
        for i, stage in enumerate(method.stages):
            votes = (stage.plans if stage.planner else 1) * stage.executions_per_plan
            if temperature is not None and votes == 1:
                stage.temperature = temperature
                takes_temperature.append(i + 1)
        limits = dataclasses.replace(
            self.cfg.limits, answer_max_tokens=max_tokens or self.cfg.limits.answer_max_tokens,
            answer_stop=[*self.cfg.limits.answer_stop, *stop])
        # every choice of every request is its own copy: independent samples, even for
        # two requests with the same question
        problems: list[list[Problem]] = []
        for job in jobs:
            question = job.messages[-1]["content"]
            problems.append([Problem(id=f"r{next(self.ids)}", question=question, answer="",
                                     task_type=job.plan.task_type, tests=list(job.plan.tests),
                                     context=job.messages[:-1], copy=next(self.ids))
                             for _ in range(job.n)])
        engine = self.engine if seed is None else Engine(self.roster, self.engine.backends,
                                                         seed=seed)
        try:
            records = run_method(method, [p for ps in problems for p in ps], engine,
                                 self.cfg.prompts, limits)
        finally:
            engine.clear()
        replies = []
        for job, copies in zip(jobs, problems):
            rows = [records[p.id] for p in copies]
            replies.append(_reply(job, method, rows, takes_temperature))
            with self._lock:
                self.spent_usd += sum(r["cost_usd"] for r in rows)
        return replies


def _reply(job: ChatJob, method: MethodConfig, rows: list[dict],
           takes_temperature: list[int]) -> Reply:
    if all(r["answer"] is None and r["errors"] for r in rows):
        return Reply([], error=f"every model call failed: {rows[0]['errors'][0]}")
    texts = [_reply_text(r, job.stop) for r in rows]
    ledger = [e for r in rows for e in r["ledger"]]
    extra = {"cope": {
        "method": method.name, "task_type": job.plan.task_type,
        "cost_usd": sum(r["cost_usd"] for r in rows), "temperature_stages": takes_temperature,
        "choices": [{
            "answer": r["answer"], "settled_stage": r["settled_stage"], "reason": r["reason"],
            "cost_usd": r["cost_usd"], "errors": r["errors"],
            "stages": [{"stage": s["stage"], "planner": s["planner"],
                        "executor": s["executor"], "plans": s["plans"], "votes": s["votes"],
                        "share": s["share"]} for s in r["stages"]]} for r in rows]}}
    return Reply(texts, prompt_tokens=sum(e["prompt_tokens"] for e in ledger),
                 completion_tokens=sum(e["completion_tokens"] for e in ledger),
                 finish_reasons=["stop"] * len(texts), extra=extra)


def _reply_text(record: dict, stop: list[str]) -> str:
    """The last settled stage's output that produced the chosen answer (cut at `stop`)."""
    answer = record["answer"]
    for stage in reversed(record["stages"]):
        for text, parsed in zip(stage["outputs"], stage["answers"]):
            if answer is not None and parsed == answer:
                return cut_at_stop(text, stop).strip()
    if answer is None:  # a note from the server, not model text: not cut
        return "No answer could be reached."
    return cut_at_stop(f"Answer: {answer}", stop)
