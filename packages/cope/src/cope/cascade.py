"""The COPE cascade, and every baseline, as lists of stages run over a batch of problems.

A stage names an optional planner and an executor:

    COPE   stage 1: small plans,  small executes   (accept if vote share >= threshold)
           stage 2: large plans,  small executes   (accept if vote share >= threshold)
           stage 3: large executes with its stage-2 plan (reused, not paid twice)
    small only: one stage, small executes without a plan
    large only: one stage, large executes without a plan
    cascade without plans: small executes; if not confident, large executes

Within a stage all problems still active are sent together: one backend call for all their
plans, one for all their executions (prompts × samples).

Every call goes through an ``Engine`` that keeps what was generated for the batch, keyed
by (model, prompt, decoding). Methods that send the same prompt (small-only and the
no-plan cascade's first stage, a threshold sweep of COPE) reuse those samples instead of
regenerating them; each method is still charged for every call it makes, as if it had
run alone. Samples are i.i.d., so a method asking for fewer samples than are stored takes
the first ones, and one asking for more gets the missing ones generated.

Cost is the paid (large) models' price × tokens, per problem, stage, model and role, in
a ledger. A budget cap applies to every paid stage of every method, the first one
included: once a method has spent it, no further problem enters a paid stage, and each
keeps the best answer it has so far (none for a method whose only stage is paid).

Problems may carry a conversation (``Problem.context``, from ``cope serve``): earlier
turns go before the templated question, a client's system message joins the configured
one. ``Problem.copy`` separates independent copies of the same problem (n choices).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cope.backends import Backend, BackendAuthError, Generation, Message
from cope.tasks import (
    Problem,
    PromptConfig,
    clean_plan,
    direct_prompt,
    execute_prompt,
    plan_prompt,
    rules_for,
)
from reprokit.errors import ConfigError


@dataclass
class ModelConfig:
    """One entry of the roster. Prices are dollars per million tokens (0 = free, local)."""

    name: str = "small"
    backend: str = "hf"  # hf | vllm | openai
    model: str = ""  # hf/vllm: hub id, path or gguf:<package>/<file>; openai: model name
    price_in: float = 0.0
    price_out: float = 0.0
    # openai: the endpoint; "loopback" serves `serve_model` from this process on 127.0.0.1
    base_url: str = ""
    serve_model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 120.0
    max_retries: int = 3
    supports_n: bool = True
    max_batch: int = 32  # hf: rows per forward batch
    engine_kwargs: dict = field(default_factory=dict)  # vllm.LLM(...) options

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6

    @property
    def paid(self) -> bool:
        return self.price_in > 0 or self.price_out > 0


@dataclass
class StageConfig:
    executor: str = "small"
    planner: str = ""  # "" = execute without a plan
    plans: int = 1  # plans sampled per problem
    executions_per_plan: int = 4  # votes = plans × executions_per_plan
    plan_temperature: float = 0.0
    temperature: float = 0.7
    threshold: float = 0.75  # accept when the vote share reaches it (the last stage always does)


@dataclass
class MethodConfig:
    name: str
    stages: list[StageConfig]
    pool_votes: bool = False  # vote over this and earlier stages' answers together
    reuse_plans: bool = True  # a planner's plans from an earlier stage are not paid for again


def parse_method(data: dict) -> MethodConfig:
    try:
        stages = [StageConfig(**s) for s in data["stages"]]
        rest = {k: v for k, v in data.items() if k != "stages"}
        method = MethodConfig(stages=stages, **rest)
    except (KeyError, TypeError) as err:
        raise ConfigError(f"methods: malformed method {data.get('name', data)!r}: {err}") from err
    if not method.stages:
        raise ConfigError(f"methods: {method.name!r} has no stages")
    return method


@dataclass
class Limits:
    plan_max_tokens: int = 32
    answer_max_tokens: int = 32
    plan_stop: list[str] = field(default_factory=lambda: ["\n"])
    answer_stop: list[str] = field(default_factory=lambda: ["\n\n"])
    # Stored length of each model output (plans and executions): a runaway or hostile
    # endpoint must not turn one reply into a 100 MB record; cut outputs are counted.
    max_output_chars: int = 4000


# ---------------------------------------------------------------- engine: calls, cache, ledger


@dataclass
class Call:
    """One prompt sent to one model for ``n`` samples."""

    model: str
    role: str  # plan | execute
    messages: list[Message]
    n: int
    temperature: float
    max_tokens: int
    stop: tuple[str, ...]
    # Executions of a problem's i-th plan use slot i: two plans with the same text must
    # still get independent samples, not the same stored one.
    slot: int = 0

    @property
    def key(self) -> tuple:
        text = "\x00".join(f"{m['role']}:{m['content']}" for m in self.messages)
        return (self.model, text, self.temperature, self.max_tokens, self.stop, self.slot)


@dataclass
class Result:
    texts: list[str]
    prompt_tokens: int
    completion_tokens: list[int]
    error: str | None = None


class Engine:
    """Sends calls to the roster's backends, batched per (model, decoding), with a sample store."""

    def __init__(self, roster: dict[str, ModelConfig], backends: dict[str, Backend],
                 seed: int = 0):
        unknown = sorted(set(roster) - set(backends))
        if unknown:
            raise ConfigError(f"no backend for model(s) {unknown}")
        self.roster = roster
        self.backends = backends
        self.store: dict[tuple, Generation] = {}
        self.seeds = itertools.count(seed * 1_000_003)
        self.backend_calls = 0

    def clear(self) -> None:
        self.store.clear()

    def run(self, calls: Sequence[Call]) -> list[Result]:
        missing: dict[tuple, list[Call]] = {}
        for call in calls:
            have = self.store.get(call.key)
            need = call.n - (len(have.texts) if have and not have.error else 0)
            if need > 0:
                group = (call.model, call.temperature, call.max_tokens, call.stop, need)
                if not any(c.key == call.key for c in missing.get(group, [])):
                    missing.setdefault(group, []).append(call)
        for (model, temperature, max_tokens, stop, need), group in missing.items():
            self.backend_calls += 1
            try:
                gens = self.backends[model].generate(
                    [c.messages for c in group], n=need, temperature=temperature,
                    max_tokens=max_tokens, stop=list(stop) or None, seed=next(self.seeds))
            except BackendAuthError:  # bad credentials fail every call: stop the run
                raise
            except Exception as err:  # a failed backend is a recorded outcome per problem
                gens = [Generation([], error=f"{type(err).__name__}: {err}") for _ in group]
            for call, gen in zip(group, gens):
                old = self.store.get(call.key)
                if gen.error or old is None or old.error:
                    self.store[call.key] = gen
                else:
                    old.texts += gen.texts
                    old.completion_tokens += gen.completion_tokens
        out = []
        for call in calls:
            gen = self.store[call.key]
            out.append(Result(gen.texts[:call.n], gen.prompt_tokens,
                              gen.completion_tokens[:call.n], gen.error))
        return out

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        return self.roster[model].cost(prompt_tokens, completion_tokens)

    def paid(self, model: str) -> bool:
        return self.roster[model].paid


# ---------------------------------------------------------------- the cascade


@dataclass
class ProblemState:
    problem: Problem
    plans: dict[str, list[str]] = field(default_factory=dict)  # planner -> plans so far
    pooled: list[Any] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    ledger: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    best: Any = None
    settled: dict | None = None
    truncated: int = 0  # outputs cut to limits.max_output_chars

    @property
    def cost(self) -> float:
        return sum(e["cost_usd"] for e in self.ledger)


class Budget:
    """A method's running spend on paid models; escalation stops once it reaches the cap."""

    def __init__(self, cap_usd: float = 0.0, spent_usd: float = 0.0):
        self.cap_usd = cap_usd
        self.spent_usd = spent_usd

    @property
    def exhausted(self) -> bool:
        return self.cap_usd > 0 and self.spent_usd >= self.cap_usd


def run_method(method: MethodConfig, problems: Sequence[Problem], engine: Engine,
               prompts: PromptConfig, limits: Limits, budget: Budget | None = None
               ) -> dict[str, dict]:
    """Run `method` on a batch of problems; returns one record per problem id."""
    budget = budget or Budget()
    states = [ProblemState(p) for p in problems]
    active = list(states)
    last = len(method.stages) - 1
    for index, stage in enumerate(method.stages):
        if not active:
            break
        stage_is_paid = engine.paid(stage.executor) or bool(
            stage.planner and engine.paid(stage.planner))
        if stage_is_paid and budget.exhausted:
            for st in active:
                _settle(st, index, "budget_cap", st.best, method)
            break
        _plan(method, stage, index, active, engine, prompts, limits)
        _execute(method, stage, index, active, engine, prompts, limits)
        still = []
        for st in active:
            record = st.stages[-1]
            budget.spent_usd += record["cost_usd"]
            if record["top"] is not None and (index == last or
                                              record["share"] >= stage.threshold):
                _settle(st, index + 1, "final" if (index == last and record["share"] <
                                                  stage.threshold) else "confident",
                        record["top"], method)
            elif index == last:  # the last stage gave no answer: keep the best earlier one
                _settle(st, index + 1, "no_answer" if st.best is None else "fallback",
                        st.best, method)
            else:
                still.append(st)
        active = still
    return {st.problem.id: _record(st) for st in states}


def _charge(st: ProblemState, method: MethodConfig, stage: int, model: str, role: str,
            result: Result, engine: Engine, reused: bool = False) -> float:
    completion = 0 if reused else sum(result.completion_tokens)
    prompt = 0 if reused else result.prompt_tokens
    cost = 0.0 if engine.paid(model) is False else engine.cost(model, prompt, completion)
    st.ledger.append({"method": method.name, "stage": stage + 1, "model": model, "role": role,
                      "prompt_tokens": prompt, "completion_tokens": completion,
                      "cost_usd": cost, "reused": reused})
    if result.error:
        st.errors.append(f"stage {stage + 1} {model} {role}: {result.error}")
    return cost


def _plan(method: MethodConfig, stage: StageConfig, index: int, active: list[ProblemState],
          engine: Engine, prompts: PromptConfig, limits: Limits) -> None:
    if not stage.planner:
        return
    need = [st for st in active
            if not (method.reuse_plans and len(st.plans.get(stage.planner, [])) >= stage.plans)]
    large = engine.paid(stage.planner)
    calls = [Call(stage.planner, "plan",
                  with_context(plan_prompt(prompts.for_task(st.problem.task_type),
                                           st.problem.question, large),
                               st.problem.context),
                  stage.plans, stage.plan_temperature, limits.plan_max_tokens,
                  tuple(limits.plan_stop), slot=COPY_SLOTS * st.problem.copy) for st in need]
    for st, result in zip(need, engine.run(calls)):
        _charge(st, method, index, stage.planner, "plan", result, engine)
        texts, cut = _cap(result.texts, limits.max_output_chars)
        st.truncated += cut
        st.plans[stage.planner] = [clean_plan(t) for t in texts]
    for st in active:
        if st not in need:  # plan reuse: logged at zero cost so the ledger shows it
            _charge(st, method, index, stage.planner, "plan",
                    Result([], 0, []), engine, reused=True)


def _execute(method: MethodConfig, stage: StageConfig, index: int, active: list[ProblemState],
             engine: Engine, prompts: PromptConfig, limits: Limits) -> None:
    calls, owners = [], []
    for st in active:
        q = st.problem.question
        plans = st.plans.get(stage.planner, [])[:stage.plans] if stage.planner else []
        if stage.planner and not plans:  # the planner failed: execute without a plan
            plans = [""]
        templates = prompts.for_task(st.problem.task_type)  # math and code differ
        messages_list = ([execute_prompt(templates, q, p) for p in plans] if stage.planner
                         else [direct_prompt(templates, q)])
        for plan_index, messages in enumerate(messages_list):
            calls.append(Call(stage.executor, "execute",
                              with_context(messages, st.problem.context),
                              stage.executions_per_plan, stage.temperature,
                              limits.answer_max_tokens, tuple(limits.answer_stop),
                              slot=plan_index + COPY_SLOTS * st.problem.copy))
            owners.append((st, plan_index))
    results = engine.run(calls)
    per_problem: dict[int, list[tuple[int, Result]]] = {}
    for (st, plan_index), result in zip(owners, results):
        per_problem.setdefault(id(st), []).append((plan_index, result))
    for st in active:
        rules = rules_for(st.problem.task_type)
        stage_cost, texts, answers, plan_of, truncated = 0.0, [], [], [], 0
        for plan_index, result in per_problem.get(id(st), []):
            stage_cost += _charge(st, method, index, stage.executor, "execute", result, engine)
            capped, cut = _cap(result.texts, limits.max_output_chars)
            truncated += cut
            for text in capped:
                texts.append(text)
                answers.append(rules.extract(text))
                plan_of.append(plan_index)
        # plan costs of this stage were charged in _plan; add them to the stage's total
        stage_cost += sum(e["cost_usd"] for e in st.ledger
                          if e["stage"] == index + 1 and e["role"] == "plan")
        st.pooled += answers
        vote = rules.vote(st.pooled if method.pool_votes else answers, st.problem)
        if vote.top is not None:
            st.best = vote.top
        st.stages.append({
            "stage": index + 1, "planner": stage.planner or None, "executor": stage.executor,
            "plans": st.plans.get(stage.planner, [])[:stage.plans] if stage.planner else [],
            "outputs": texts, "answers": answers, "plan_of_output": plan_of,
            "votes": vote.counts, "top": vote.top, "share": vote.share,
            "malformed": vote.n_malformed, "threshold": stage.threshold, "cost_usd": stage_cost,
            "truncated_outputs": truncated,
        })
        st.truncated += truncated


COPY_SLOTS = 1_000_000  # slot offset per problem copy: copies never share stored samples


def _cap(texts: list[str], max_chars: int) -> tuple[list[str], int]:
    """Outputs cut to `max_chars` (0 = no cap), and how many were cut."""
    if max_chars <= 0:
        return list(texts), 0
    return [t[:max_chars] for t in texts], sum(len(t) > max_chars for t in texts)


def with_context(messages: list[Message], context: Sequence[Message]) -> list[Message]:
    """Earlier conversation turns before the final (templated) user message.

    A system message in the context joins the configured system message: chat templates
    accept one system message, first.
    """
    if not context:
        return messages
    system = [m["content"] for m in messages if m["role"] == "system"]
    system += [m["content"] for m in context if m["role"] == "system"]
    turns = [m for m in messages[:-1] if m["role"] != "system"]
    turns += [m for m in context if m["role"] != "system"]
    head = [{"role": "system", "content": "\n\n".join(system)}] if system else []
    return head + turns + [messages[-1]]


def _settle(st: ProblemState, stage: int, reason: str, answer: Any,
            method: MethodConfig) -> None:
    st.settled = {"stage": stage, "reason": reason, "answer": answer}


def _record(st: ProblemState) -> dict:
    rules = rules_for(st.problem.task_type)
    settled = st.settled or {"stage": len(st.stages), "reason": "unsettled", "answer": st.best}
    answer = settled["answer"]
    tokens: dict[str, dict[str, int]] = {}
    for e in st.ledger:
        slot = tokens.setdefault(f"{e['model']}/{e['role']}", {"prompt": 0, "completion": 0})
        slot["prompt"] += e["prompt_tokens"]
        slot["completion"] += e["completion_tokens"]
    return {
        "answer": answer, "correct": bool(rules.check(answer, st.problem)),
        "settled_stage": settled["stage"], "reason": settled["reason"],
        "stages_run": len(st.stages), "cost_usd": st.cost, "tokens": tokens,
        "stages": st.stages, "ledger": st.ledger, "errors": st.errors,
        "truncated_outputs": st.truncated,
    }
