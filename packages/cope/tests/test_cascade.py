from cope_helpers import LIMITS, PRICE_IN, PRICE_OUT, PROMPTS, cope_method

from cope.backends import ScriptedBackend
from cope.cascade import Budget, MethodConfig, StageConfig, run_method
from cope.tasks import Problem, plan_prompt


def test_each_problem_settles_at_its_stage(problems, scripted):
    engine, small, large = scripted
    out = run_method(cope_method(), problems, engine, PROMPTS, LIMITS)
    assert [out[p]["settled_stage"] for p in ("easy", "medium", "hard")] == [1, 2, 3]
    assert all(out[p]["correct"] for p in ("easy", "medium", "hard"))
    assert out["easy"]["reason"] == out["medium"]["reason"] == "confident"
    assert out["easy"]["cost_usd"] == 0.0  # settled by the free small model
    assert out["medium"]["stages"][1]["votes"] == {"2": 4}
    assert out["hard"]["stages"][0]["share"] == 0.25  # four plans, four different answers


def test_stages_are_batched_over_problems(problems, scripted):
    engine, small, large = scripted
    run_method(cope_method(), problems, engine, PROMPTS, LIMITS)
    # small: stage-1 plans (3 prompts x 4), stage-1 executions (12 prompts), stage-2
    # executions (2 prompts x 4); large: stage-2 plans (2 prompts), stage-3 (1 prompt)
    assert [(len(p), n) for p, n in small.calls] == [(3, 4), (12, 1), (2, 4)]
    assert [(len(p), n) for p, n in large.calls] == [(2, 1), (1, 1)]


def test_large_plan_is_reused_not_paid_twice(problems, scripted):
    engine, small, large = scripted
    out = run_method(cope_method(), problems, engine, PROMPTS, LIMITS)
    plan_entries = [e for e in out["hard"]["ledger"] if e["model"] == "large" and e["role"] == "plan"]
    assert [(e["stage"], e["reused"]) for e in plan_entries] == [(2, False), (3, True)]
    assert plan_entries[1]["cost_usd"] == 0.0
    assert out["hard"]["stages"][2]["plans"] == ["LARGE plan"]  # first line only, reused
    plan_prompts = [p for p, _ in large.calls for p in p if "Write a short plan" in p]
    assert len(plan_prompts) == 2  # one per problem that reached stage 2


def test_ledger_adds_up_to_hand_computed_cost(problems, scripted):
    engine, small, large = scripted
    out = run_method(cope_method(), problems, engine, PROMPTS, LIMITS)
    hard = out["hard"]
    assert abs(sum(e["cost_usd"] for e in hard["ledger"]) - hard["cost_usd"]) < 1e-15
    assert abs(sum(s["cost_usd"] for s in hard["stages"]) - hard["cost_usd"]) < 1e-15
    # by hand: scripted tokens are words. Large plan prompt and reply, then the large
    # execution of the hard problem with the plan.
    plan_words = len(plan_prompt(PROMPTS, "HARD question", large=True)[0]["content"].split())
    exec_prompt = [p for p in large.calls[1][0]][0]
    expected = (plan_words * PRICE_IN + 2 * PRICE_OUT) / 1e6 \
        + (len(exec_prompt.split()) * PRICE_IN + 2 * PRICE_OUT) / 1e6
    assert abs(hard["cost_usd"] - expected) < 1e-15
    for e in hard["ledger"]:  # small entries carry tokens but no cost
        if e["model"] == "small":
            assert e["cost_usd"] == 0.0 and e["completion_tokens"] > 0
    assert hard["tokens"]["large/plan"] == {"prompt": plan_words, "completion": 2}


def test_threshold_decides_escalation(problems, scripted):
    engine, _, _ = scripted
    low = run_method(cope_method(threshold=0.25), problems, engine, PROMPTS, LIMITS)
    assert low["medium"]["settled_stage"] == 1 and not low["medium"]["correct"]
    strict = run_method(cope_method(threshold=1.0), problems, engine, PROMPTS, LIMITS)
    assert strict["easy"]["settled_stage"] == 1  # unanimous still passes 1.0
    assert strict["hard"]["settled_stage"] == 3


def test_budget_cap_stops_escalation_cleanly(problems, scripted):
    engine, _, large = scripted
    # spent already at the cap: nothing may escalate to the paid stages
    out = run_method(cope_method(), problems, engine, PROMPTS, LIMITS, Budget(1e-9, 1e-9))
    assert out["hard"]["reason"] == "budget_cap" and out["hard"]["settled_stage"] == 1
    assert out["hard"]["answer"] == "5" and out["hard"]["cost_usd"] == 0.0
    assert large.calls == []
    # a cap that stage 2 exceeds: stage 3 is not run, the stage-2 best answer stands
    budget = Budget(1e-12)
    out = run_method(cope_method(), problems, engine, PROMPTS, LIMITS, budget)
    assert out["hard"]["reason"] == "budget_cap" and out["hard"]["settled_stage"] == 2
    assert out["hard"]["stages_run"] == 2 and out["medium"]["correct"]
    assert abs(budget.spent_usd - sum(r["cost_usd"] for r in out.values())) < 1e-15


def test_malformed_outputs_are_recorded_not_fatal(scripted):
    engine, _, _ = scripted
    out = run_method(cope_method(), [Problem("junk", "JUNK question", "4")], engine, PROMPTS,
                     LIMITS)["junk"]
    assert out["answer"] is None and not out["correct"] and out["reason"] == "no_answer"
    assert out["stages_run"] == 3 and out["stages"][0]["malformed"] == 4


def test_backend_failure_is_recorded_per_problem(problems, scripted):
    engine, _, _ = scripted

    def broken(text, k):
        raise ConnectionError("endpoint down")

    engine.backends["large"] = ScriptedBackend(broken, "large")
    out = run_method(cope_method(), problems, engine, PROMPTS, LIMITS)
    assert out["easy"]["correct"] and not out["easy"]["errors"]  # not blocked by the failure
    assert out["hard"]["errors"] and "endpoint down" in out["hard"]["errors"][0]
    # without the large plan the small model executes plan-less; stage 3 has no output
    assert out["hard"]["stages_run"] == 3 and out["hard"]["stages"][2]["outputs"] == []
    assert out["hard"]["answer"] is not None  # the best earlier answer is kept


def test_methods_share_samples_but_each_is_charged(problems, scripted):
    engine, small, large = scripted
    direct_small = MethodConfig("small_only", [StageConfig("small", executions_per_plan=4)])
    cascade = MethodConfig("cascade_no_plan", [
        StageConfig("small", executions_per_plan=4, threshold=0.75),
        StageConfig("large", executions_per_plan=1, temperature=0.0)])
    a = run_method(direct_small, problems, engine, PROMPTS, LIMITS)
    calls_after_first = len(small.calls)
    b = run_method(cascade, problems, engine, PROMPTS, LIMITS)
    assert len(small.calls) == calls_after_first  # stage 1 came from the store
    assert [a[p]["stages"][0]["answers"] for p in a] == [b[p]["stages"][0]["answers"] for p in b]
    assert b["easy"]["ledger"][0]["completion_tokens"] > 0
    assert b["hard"]["settled_stage"] == 2 and b["hard"]["correct"] and b["hard"]["cost_usd"] > 0
    # asking for more samples than stored generates only the missing ones
    more = MethodConfig("small8", [StageConfig("small", executions_per_plan=6)])
    run_method(more, problems[:1], engine, PROMPTS, LIMITS)
    assert small.calls[-1][1] == 2


def test_a_huge_model_output_is_capped_and_counted(problems, scripted):
    from cope.cascade import Limits

    engine, _, _ = scripted
    flood = "x" * (5 << 20) + " Answer: 3"
    engine.backends["large"] = ScriptedBackend(lambda text, k: flood, "large")
    limits = Limits(max_output_chars=1000)
    out = run_method(cope_method(), problems, engine, PROMPTS, limits)["hard"]
    stored = [t for s in out["stages"] for t in s["outputs"] + s["plans"]]
    assert max(len(t) for t in stored) <= 1000
    assert out["truncated_outputs"] == 2  # the large plan and the large execution
    assert out["stages"][2]["truncated_outputs"] == 1
    import json

    assert len(json.dumps(out)) < 50_000


def test_budget_cap_applies_to_a_method_whose_only_stage_is_paid(problems, scripted):
    engine, _, large = scripted
    large_only = MethodConfig("large_only", [StageConfig("large", executions_per_plan=1,
                                                         temperature=0.0)])
    one = run_method(large_only, problems[:1], engine, PROMPTS, LIMITS)["easy"]["cost_usd"]
    engine.clear()
    budget = Budget(cap_usd=1.5 * one)
    spent = []
    for p in problems * 2:  # one problem per batch: the cap is checked before each
        r = run_method(large_only, [p], engine, PROMPTS, LIMITS, budget)[p.id]
        spent.append(r["cost_usd"])
        engine.clear()
    assert budget.spent_usd <= budget.cap_usd + one  # overshoot: at most one batch's stage
    assert sum(c > 0 for c in spent) == 2 and spent[2:] == [0.0] * 4
    capped = run_method(large_only, problems[:1], engine, PROMPTS, LIMITS, budget)["easy"]
    assert capped["reason"] == "budget_cap" and capped["answer"] is None
    assert not capped["correct"] and capped["stages_run"] == 0
