"""A decoder-only GPT whose only interesting switch is where the normalization goes.

Each block has two sublayers F (attention, then MLP). With ``Norm`` a LayerNorm or RMSNorm:

    pre:   h = x + F(Norm(x))                 (GPT-2, Llama)
    post:  h = Norm(x + F(x))                 (the original Transformer)
    peri:  h = x + Norm_out(F(Norm_in(x)))    (Gemma 2/3, OLMo-2; the paper's "Peri-LN")

Peri-LN normalizes what enters and what leaves each sublayer but never the residual
stream itself; as the paper defines it, it also normalizes the embedding output
(y0 = Norm(x_embed)), which is why ``embedding_norm="auto"`` turns that norm on for peri
only (Pre-LN and Post-LN are defined without it). Pre-LN and Peri-LN end with a final norm
before the head; Post-LN's stream is already normalized.

``stream_dtype`` emulates a low-precision residual stream: the embedding output and each
block's output are rounded to fp16 (or bf16) while every computation stays in fp32, which
is how the paper's fp16 training overflows (Pre-LN's hidden states pass 65504 and turn into
inf) at no extra cost on CPU. Everything else is a plain small GPT: causal SDPA attention (flash
kernels on GPU), rotary or learned positions, GELU or SwiGLU MLP, tied embeddings,
GPT-2 initialisation (std 0.02, residual projections scaled by 1/sqrt(2 L)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from reprokit.errors import ConfigError

PLACEMENTS = ("pre", "post", "peri")
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("rope", "learned")
MLPS = ("gelu", "swiglu")
EMBEDDING_NORMS = ("auto", "on", "off")
STREAM_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
FP16_MAX = 65504.0


def embedding_norm_on(setting, placement: str) -> bool:
    """``auto``: on for peri (the paper's Peri-LN has it), off for pre and post."""
    setting = _on_off(setting)
    return placement == "peri" if setting == "auto" else setting == "on"


def _on_off(setting) -> str:
    # YAML reads a bare on/off/true/false as a boolean
    if isinstance(setting, bool):
        return "on" if setting else "off"
    return str(setting)


@dataclass
class ModelConfig:
    vocab_size: int = 256
    block_size: int = 128
    n_layer: int = 12
    n_head: int = 4
    d_model: int = 64
    norm_placement: str = "peri"
    norm: str = "layernorm"
    position: str = "rope"
    mlp: str = "gelu"
    mlp_ratio: float = 4.0
    bias: bool = False
    embedding_norm: str = "auto"     # auto (on for peri only) | on | off: Norm(x_embed)
    freeze_output_gain: bool = False  # Peri-LN ablation: output-norm gains γ fixed at 1
    norm_eps: float = 1e-5
    init_std: float = 0.02
    rope_base: float = 10000.0

    def validate(self) -> None:
        if self.norm_placement not in PLACEMENTS:
            raise ConfigError(f"model.norm_placement must be one of {PLACEMENTS}, "
                              f"got {self.norm_placement!r}")
        if self.norm not in NORMS:
            raise ConfigError(f"model.norm must be one of {NORMS}, got {self.norm!r}")
        if self.position not in POSITIONS:
            raise ConfigError(f"model.position must be one of {POSITIONS}, got {self.position!r}")
        if _on_off(self.embedding_norm) not in EMBEDDING_NORMS:
            raise ConfigError(f"model.embedding_norm must be one of {EMBEDDING_NORMS}, "
                              f"got {self.embedding_norm!r}")
        if self.mlp not in MLPS:
            raise ConfigError(f"model.mlp must be one of {MLPS}, got {self.mlp!r}")
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"model.{name} must be a positive integer, "
                                  f"got {getattr(self, name)!r}")
        if self.d_model % self.n_head:
            raise ConfigError(f"model.d_model={self.d_model} is not divisible by "
                              f"model.n_head={self.n_head}")
        if self.position == "rope" and (self.d_model // self.n_head) % 2:
            raise ConfigError(f"rotary positions need an even head width, got "
                              f"{self.d_model // self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.mlp_ratio * self.d_model)
        if self.mlp == "swiglu":  # 2/3 keeps the parameter count of a GELU MLP
            hidden = int(2 * hidden / 3)
        return max(hidden, 1)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


class Rotary(nn.Module):
    """Rotary position embedding (rotate-half form) with a cached cos/sin table."""

    def __init__(self, head_dim: int, block_size: int, base: float):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(block_size, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos().repeat(1, 2), persistent=False)
        self.register_buffer("sin", angles.sin().repeat(1, 2), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, T, Dh)
        t = x.size(-2)
        half = x.size(-1) // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * self.cos[:t].to(x.dtype) + rotated * self.sin[:t].to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.proj.is_residual_projection = True
        self.rotary = Rotary(cfg.head_dim, cfg.block_size, cfg.rope_base) \
            if cfg.position == "rope" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        width = cfg.mlp_hidden * (2 if self.swiglu else 1)
        self.up = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.down = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=cfg.bias)
        self.down.is_residual_projection = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.swiglu:
            gate, value = h.chunk(2, dim=-1)
            return self.down(F.silu(gate) * value)
        return self.down(F.gelu(h))


class Block(nn.Module):
    """One transformer block; `norm_placement` decides where its norms sit.

    ``attn_in``/``mlp_in`` are the sublayer-input norms (pre, peri); ``attn_out``/``mlp_out``
    normalize the sublayer output (peri) or the residual sum (post).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.placement = cfg.norm_placement
        uses_in = self.placement in ("pre", "peri")
        uses_out = self.placement in ("post", "peri")
        self.attn_in = make_norm(cfg) if uses_in else nn.Identity()
        self.attn_out = make_norm(cfg) if uses_out else nn.Identity()
        self.mlp_in = make_norm(cfg) if uses_in else nn.Identity()
        self.mlp_out = make_norm(cfg) if uses_out else nn.Identity()
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        if cfg.freeze_output_gain and self.placement == "peri":
            for norm in (self.attn_out, self.mlp_out):
                norm.weight.requires_grad_(False)  # only γ; a bias β (bias=True) still learns

    def sublayer(self, x: torch.Tensor, f: nn.Module, norm_in: nn.Module,
                 norm_out: nn.Module) -> torch.Tensor:
        if self.placement == "pre":
            return x + f(norm_in(x))             # h = x + F(Norm(x))
        if self.placement == "post":
            return norm_out(x + f(x))            # h = Norm(x + F(x))
        return x + norm_out(f(norm_in(x)))       # h = x + Norm_out(F(Norm_in(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sublayer(x, self.attn, self.attn_in, self.attn_out)
        return self.sublayer(x, self.mlp, self.mlp_in, self.mlp_out)


def round_to(x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """`x` rounded to `dtype` in the forward pass, the gradient passed straight through (as
    if the stream were stored in fp16 under a perfect loss scale). Past fp16's range the
    value becomes inf, and the loss NaN: fp16 overflow."""
    if dtype is None:
        return x
    return x + (x.to(dtype).to(x.dtype) - x).detach()


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, stream_dtype: str = "fp32"):
        super().__init__()
        cfg.validate()
        if stream_dtype not in STREAM_DTYPES:
            raise ConfigError(f"train.stream_dtype must be one of {tuple(STREAM_DTYPES)}, "
                              f"got {stream_dtype!r}")
        self.cfg = cfg
        self.stream_dtype = STREAM_DTYPES[stream_dtype]
        # set by the training module: keep the largest |x| of the stream of the last training
        # forward (a device scalar, read to the host with the loss, no extra sync)
        self.track_peak = False
        self.peak: torch.Tensor | None = None
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model) \
            if cfg.position == "learned" else None
        self.has_embedding_norm = embedding_norm_on(cfg.embedding_norm, cfg.norm_placement)
        self.emb_norm = make_norm(cfg) if self.has_embedding_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.final_norm = make_norm(cfg) if cfg.norm_placement != "post" else nn.Identity()
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # tied embeddings
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.cfg.init_std
        if isinstance(module, nn.Linear):
            if getattr(module, "is_residual_projection", False):
                std = std / math.sqrt(2 * self.cfg.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        if idx.size(1) > self.cfg.block_size:
            raise ConfigError(f"sequence of {idx.size(1)} tokens exceeds block_size "
                              f"{self.cfg.block_size}")
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[: idx.size(1)]
        return self.emb_norm(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                return_hidden: bool = False):
        """Logits, the mean next-token cross-entropy (if `targets`), and, with `return_hidden`,
        the residual stream after each block (a list of L tensors, for the probes)."""
        x = round_to(self.embed(idx), self.stream_dtype)
        hidden, peaks = [], []
        track = self.track_peak and self.training
        for block in self.blocks:
            x = block(x)
            if track:  # before rounding: how far past fp16's range the stream went
                peaks.append(x.detach().abs().amax())
            x = round_to(x, self.stream_dtype)
            if return_hidden:
                hidden.append(x)
        if track:
            self.peak = torch.stack(peaks).amax()
        logits = self.head(self.final_norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return (logits, loss, hidden) if return_hidden else (logits, loss)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 N (matmuls, forward + backward) + attention scores."""
        c = self.cfg
        n = self.num_params() - (self.pos_emb.weight.numel() if self.pos_emb is not None else 0)
        return 6 * n + 12 * c.n_layer * c.d_model * c.block_size

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.8,
                 top_k: int | None = 40, generator: torch.Generator | None = None) -> torch.Tensor:
        for _ in range(max_new_tokens):
            context = idx[:, -self.cfg.block_size:]
            logits = self(context)[0][:, -1, :].float() / max(temperature, 1e-6)
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = F.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
        return idx
