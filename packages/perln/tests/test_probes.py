import math

import pytest
import torch

from perln.config import PerlnConfig
from perln.experiments import Arm, build_module, make_trainer, summarize_arm
from perln.model import GPT, ModelConfig
from perln.probes import DivergenceDetector, activation_stats, count_spikes, layer_grad_norms


def toy(placement="pre") -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=11, block_size=6, n_layer=3, n_head=2, d_model=4,
                           norm_placement=placement))


def test_activation_stats_match_a_hand_forward():
    model = toy()
    idx = torch.randint(0, 11, (2, 6))
    stats = activation_stats(model, idx)
    assert len(stats["variance"]) == len(stats["max_abs"]) == 3
    x = model.embed(idx)
    for i, block in enumerate(model.blocks):
        x = block(x)
        assert stats["variance"][i] == pytest.approx(x.var().item(), rel=1e-5)
        assert stats["max_abs"][i] == pytest.approx(x.abs().max().item(), rel=1e-6)


def test_layer_grad_norms_match_hand_computation():
    model = toy("peri")
    idx = torch.randint(0, 11, (2, 6))
    model(idx, idx)[1].backward()
    norms = layer_grad_norms(model)
    assert len(norms) == 3
    for block, norm in zip(model.blocks, norms, strict=True):
        by_hand = math.sqrt(sum(float((p.grad ** 2).sum()) for p in block.parameters()))
        assert norm == pytest.approx(by_hand, rel=1e-5)


def test_count_spikes_rule():
    values = [1.0, 1.1, 0.9, 1.0, 5.0, 1.0, 1.0, 2.9, float("nan"), 1.0]
    assert count_spikes(values, factor=3.0, window=3) == 1   # 5.0; 2.9 < 3 × median
    assert count_spikes(values, factor=2.0, window=3) == 2   # 5.0 and 2.9
    assert count_spikes(values, factor=3.0, window=3, skip=5) == 0


def test_count_spikes_with_short_history():
    falling = [5.5, 5.0, 4.5, 4.0, 3.8, 3.6, 3.4, 8.4, 5.0, 3.3]  # a jump during warmup
    assert count_spikes(falling, factor=1.25, window=20, min_history=5) == 1  # the 8.4
    assert count_spikes(falling, factor=1.25, window=20) == 0  # no full window yet


def test_divergence_rule():
    detector = DivergenceDetector(bound=8.0, patience=3)
    assert detector.update(2.0, 1.0) is None
    assert "nan" in DivergenceDetector(8.0, 3).update(float("nan"), 1.0)
    assert "gradient" in DivergenceDetector(8.0, 3).update(2.0, float("inf"))
    # a one-step jump above the bound that recovers is a spike, not divergence
    assert [detector.update(x, 1.0) for x in (9.0, 3.0, 9.0, 9.0)] == [None] * 4
    assert "bound" in detector.update(9.5, 1.0)


def tiny_cfg() -> PerlnConfig:
    cfg = PerlnConfig(scale="test", model=ModelConfig(vocab_size=11, block_size=6, n_layer=2,
                                                      n_head=2, d_model=4))
    cfg.train.steps, cfg.train.batch_size, cfg.train.eval_every = 20, 2, 5
    cfg.train.checkpoint_every = 0
    cfg.probe.every, cfg.probe.sync_every, cfg.probe.batch_size = 4, 3, 2
    return cfg


def fit(cfg, module):
    gen = torch.Generator().manual_seed(0)
    batches = [(x := torch.randint(0, 11, (2, 6), generator=gen), x) for _ in range(40)]
    trainer = make_trainer(cfg, "cpu", "32-true", 1, [], progress=False)
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    module.finish(trainer.global_step)
    return trainer


def test_module_records_every_step_and_probes_on_schedule():
    cfg = tiny_cfg()
    module = build_module(cfg, Arm("pre", 1e-2, 0), torch.randint(0, 11, (200,)))
    fit(cfg, module)
    h = module.history
    assert h["step"] == list(range(20))
    assert all(math.isfinite(v) for v in h["loss"] + h["grad_norm"])
    assert [p["step"] for p in h["probes"]] == [0, 4, 8, 12, 16, 20]  # 20: final weights
    assert [g["step"] for g in h["grad_probes"]] == [0, 4, 8, 12, 16, 19]
    assert all(len(p["variance"]) == 2 for p in h["probes"])
    assert [e["step"] for e in h["evals"]] == [0, 5, 10, 15, 20]
    # per-layer norms are pre-clip: they cannot exceed the global pre-clip norm
    g0 = h["grad_probes"][0]["layer_grad_norm"]
    assert math.sqrt(sum(v * v for v in g0)) <= h["grad_norm"][0] * (1 + 1e-5)
    assert h["lr"][1] > h["lr"][0] and h["lr"][-1] < h["lr"][5]


def test_divergence_stops_the_arm_and_is_recorded(monkeypatch):
    cfg = tiny_cfg()
    module = build_module(cfg, Arm("pre", 1e-2, 0), torch.randint(0, 11, (200,)))
    forward = module.forward_fn

    def blows_up(x, y):  # a forced blow-up from step 7 on
        logits, loss = forward(x, y)
        return logits, loss * (float("inf") if module.global_step >= 7 else 1.0)

    module.forward_fn = blows_up
    trainer = fit(cfg, module)
    assert module.diverged["step"] == 7
    assert trainer.global_step < cfg.train.steps          # stopped early
    result = summarize_arm(cfg, Arm("pre", 1e-2, 0), module.history, module.diverged)
    assert result["diverged"] and math.isnan(result["final_val_loss"])
    assert result["completed_steps"] <= 9 + cfg.probe.sync_every


def test_bench_reports_every_variant_and_the_fp16_stream_cost():
    from perln.bench import BenchArgs, run_bench

    out = run_bench(BenchArgs(n_layer=1, n_head=2, d_model=8, block_size=8, batch_size=2,
                              vocab_size=11, steps=2, warmup=1, rounds=1, accelerator="cpu",
                              threads=1))
    assert set(out["tokens_per_s"]) == {"reference", "perln", "perln_instrumented",
                                        "perln_probing", "perln_fp16_stream"}
    assert all(v > 0 for v in out["tokens_per_s"].values())
    tps = out["tokens_per_s"]
    assert out["fp16_stream_overhead"] == pytest.approx(
        tps["perln"] / tps["perln_fp16_stream"] - 1, abs=2e-3)
    assert out["fp16_stream_overhead_target"] == 0.05 and out["threads"] == 1
    assert out["fp16_stream_pairs"] == 2 and out["fp16_stream_overhead_paired"] > -1
