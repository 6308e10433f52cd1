import pytest
import torch
import torch.nn.functional as F

from perln.config import ProbeConfig, TrainConfig
from perln.model import GPT, Block, ModelConfig, round_to
from perln.module import PerlnModule
from reprokit.errors import ConfigError


def cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=17, block_size=8, n_layer=2, n_head=2, d_model=8)
    base.update(kw)
    return ModelConfig(**base)


def layer_norm(x, weight, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * weight


def randomize_gains(block):
    for name in ("attn_in", "attn_out", "mlp_in", "mlp_out"):
        norm = getattr(block, name)
        if hasattr(norm, "weight"):
            torch.nn.init.uniform_(norm.weight, 0.5, 1.5)


@pytest.mark.parametrize("placement", ["pre", "post", "peri"])
def test_block_computes_its_formula(placement):
    torch.manual_seed(0)
    block = Block(cfg(norm_placement=placement))
    randomize_gains(block)
    x = torch.randn(2, 5, 8) * 3
    a, m = block.attn, block.mlp
    if placement == "pre":
        h = x + a(layer_norm(x, block.attn_in.weight))
        expected = h + m(layer_norm(h, block.mlp_in.weight))
    elif placement == "post":
        h = layer_norm(x + a(x), block.attn_out.weight)
        expected = layer_norm(h + m(h), block.mlp_out.weight)
    else:
        h = x + layer_norm(a(layer_norm(x, block.attn_in.weight)), block.attn_out.weight)
        expected = h + layer_norm(m(layer_norm(h, block.mlp_in.weight)), block.mlp_out.weight)
    torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_post_output_is_normalized_and_peri_stream_is_not():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8) * 50 + 7
    post = Block(cfg(norm_placement="post"))
    out = post(x)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(2, 5), atol=1e-3, rtol=0)
    peri = Block(cfg(norm_placement="peri"))
    out = peri(x)
    # the residual stream keeps its scale: at most two unit-variance terms were added
    assert (out - x).var(-1, unbiased=False).max() < 5
    assert out.var(-1).mean() > 100


def test_peri_normalizes_the_sublayer_output_before_the_add():
    torch.manual_seed(0)
    block = Block(cfg(norm_placement="peri", norm="rmsnorm"))
    with torch.no_grad():
        block.attn.proj.weight.mul_(1000)  # a sublayer output far from unit scale
    x = torch.randn(2, 5, 8)
    added = block.sublayer(x, block.attn, block.attn_in, block.attn_out) - x
    rms = added.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones(2, 5), atol=1e-3, rtol=0)


@pytest.mark.parametrize("bias", [False, True])
def test_frozen_output_gain_stays_fixed_after_an_optimizer_step(bias):
    torch.manual_seed(0)
    model_cfg = cfg(norm_placement="peri", freeze_output_gain=True, bias=bias)
    module = PerlnModule(model_cfg, TrainConfig(steps=5), ProbeConfig(), 1e-2,
                         torch.zeros(1, 8, dtype=torch.long), [])
    opt = module.configure_optimizers()["optimizer"]
    block = module.model.blocks[0]
    before_out = block.attn_out.weight.detach().clone()
    before_in = block.attn_in.weight.detach().clone()
    idx = torch.randint(0, 17, (4, 8))
    _, loss = module.model(idx, idx)
    loss.backward()
    opt.step()
    assert torch.equal(block.attn_out.weight, before_out)
    assert torch.equal(block.mlp_out.weight, torch.ones(8))
    assert not torch.equal(block.attn_in.weight, before_in)  # the input gains do learn
    if bias:  # only γ is frozen: the output norms' β still learns
        assert block.attn_out.bias.requires_grad and block.mlp_out.bias.grad is not None
        assert not torch.equal(block.mlp_out.bias, torch.zeros(8))


@pytest.mark.parametrize("setting, expected", [
    ("auto", {"pre": False, "post": False, "peri": True}),
    ("on", {"pre": True, "post": True, "peri": True}),
    ("off", {"pre": False, "post": False, "peri": False}),
    (True, {"pre": True, "post": True, "peri": True}),   # YAML reads a bare on/off as bool
    (False, {"pre": False, "post": False, "peri": False}),
])
def test_embedding_norm_is_part_of_peri_by_default(setting, expected):
    for placement, on in expected.items():
        model = GPT(cfg(norm_placement=placement, embedding_norm=setting))
        assert isinstance(model.emb_norm, torch.nn.LayerNorm) == on, placement
        assert model.has_embedding_norm == on


def test_peri_embedding_output_is_normalized():
    torch.manual_seed(0)
    model = GPT(cfg(norm_placement="peri"))
    torch.nn.init.uniform_(model.emb_norm.weight, 0.5, 1.5)
    idx = torch.randint(0, 17, (2, 8))
    # y0 = Norm(x_embed): the 0.02-std embedding is brought to the gains' scale
    expected = layer_norm(model.tok_emb(idx), model.emb_norm.weight)
    torch.testing.assert_close(model.embed(idx), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="embedding_norm"):
        GPT(cfg(embedding_norm="sometimes"))


def test_round_to_rounds_forward_and_passes_the_gradient_straight_through():
    x = torch.tensor([1.0001, 3.14159265, 70000.0, -1e-9], requires_grad=True)
    y = round_to(x, torch.float16)
    assert y[0].item() == 1.0 and y[1].item() == pytest.approx(3.140625)  # 11-bit mantissa
    assert y[2].item() == float("inf")    # past the fp16 maximum 65504
    assert y[3].item() == 0.0             # below fp16's smallest subnormal
    (y[:2] * torch.tensor([2.0, 3.0])).sum().backward()
    assert x.grad.tolist() == [2.0, 3.0, 0.0, 0.0]
    assert round_to(x, None) is x
    assert round_to(torch.tensor([1.0001]), torch.bfloat16).item() == 1.0


def test_fp16_stream_rounds_every_block_output_and_tracks_the_peak():
    torch.manual_seed(0)
    model = GPT(cfg(norm_placement="pre", n_layer=3), stream_dtype="fp16")
    model.track_peak = True
    idx = torch.randint(0, 17, (2, 8))
    logits, _, hidden = model(idx, return_hidden=True)
    x = model.embed(idx).half().float()
    peak = 0.0
    for block, h in zip(model.blocks, hidden, strict=True):
        x = block(x)
        peak = max(peak, x.abs().max().item())
        x = x.half().float()
        torch.testing.assert_close(h, x, rtol=0, atol=0)
    assert model.peak.item() == pytest.approx(peak, rel=1e-6)
    model.eval()
    model.peak = None
    model(idx)
    assert model.peak is None  # evaluation forwards do not touch the training peak
    with pytest.raises(ConfigError, match="stream_dtype"):
        GPT(cfg(), stream_dtype="fp8")


def test_fp16_stream_overflow_turns_the_loss_nan_where_fp32_does_not():
    torch.manual_seed(0)
    models = {d: GPT(cfg(norm_placement="pre"), stream_dtype=d) for d in ("fp32", "fp16")}
    models["fp16"].load_state_dict(models["fp32"].state_dict())
    for m in models.values():
        with torch.no_grad():
            m.blocks[0].mlp.down.weight.mul_(1e8)  # a Pre-LN stream far past 65504
    idx = torch.randint(0, 17, (2, 8))
    assert models["fp32"](idx, return_hidden=True)[2][0].abs().max() > 65504
    assert torch.isfinite(models["fp32"](idx, idx)[1])
    assert not torch.isfinite(models["fp16"](idx, idx)[1])


@pytest.mark.parametrize("kw", [dict(), dict(position="learned", mlp="swiglu", norm="rmsnorm"),
                                dict(norm_placement="post", embedding_norm=True)])
def test_model_is_causal_and_tied(kw):
    torch.manual_seed(0)
    model = GPT(cfg(**kw))
    assert model.head.weight is model.tok_emb.weight
    idx = torch.randint(0, 17, (1, 8))
    changed = idx.clone()
    changed[0, -1] = (idx[0, -1] + 1) % 17
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :-1], b[:, :-1])
    assert not torch.allclose(a[:, -1], b[:, -1])
    logits, loss = model(idx, idx)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, 17), idx.view(-1)))


def test_final_norm_only_for_pre_and_peri():
    assert isinstance(GPT(cfg(norm_placement="post")).final_norm, torch.nn.Identity)
    assert isinstance(GPT(cfg(norm_placement="peri")).final_norm, torch.nn.LayerNorm)


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(cfg(n_layer=8, d_model=64, n_head=4))
    std = model.blocks[0].attn.proj.weight.std().item()
    assert abs(std - 0.02 / 4) < 0.0015  # 0.02 / sqrt(2 * 8)
    assert abs(model.blocks[0].attn.qkv.weight.std().item() - 0.02) < 0.002


@pytest.mark.parametrize("kw, words", [
    (dict(norm_placement="middle"), "norm_placement"),
    (dict(d_model=10, n_head=4), "not divisible"),
    (dict(norm="batchnorm"), "model.norm"),
])
def test_bad_model_config_is_a_clear_error(kw, words):
    with pytest.raises(ConfigError, match=words):
        GPT(cfg(**kw))
