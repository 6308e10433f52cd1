"""PatchCLIP: the CLIP branch (global cues).

For an image, an OpenCLIP ViT gives a class token and a grid of patch tokens. Both are mapped
into the joint image–text space (``ln_post`` then the visual projection), so each patch can be
compared with text embeddings:

- language map L: per patch, softmax over {normal, anomalous} of τ·cos(patch, text_c), where
  text_c is the mean of the normalised embeddings of the class's prompt ensemble
  (prompts.py); L = p(anomalous);
- global score: the same softmax on the class token (WinCLIP's zero-shot classifier);
- visual map V (k-shot): ½·(1 − max_j cos(patch, bank_j)), the cosine distance of each query
  patch to its nearest neighbour in the memory bank of the k reference images' patches.

``model="tiny"`` builds a small randomly initialised OpenCLIP model (no download): its
tokenizer is OpenCLIP's SimpleTokenizer, whose BPE vocabulary ships inside the wheel.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipfusion.config import ClipConfig
from clipfusion.prompts import prompt_ensemble
from reprokit.errors import ConfigError, require_online

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def build_open_clip(cfg: ClipConfig) -> tuple[nn.Module, object, str]:
    """(model, tokenizer, description of the weights)."""
    import open_clip

    if cfg.model == "tiny":
        if cfg.pretrained:
            raise ConfigError("clip.pretrained needs a named clip.model (e.g. "
                              "ViT-B-16-plus-240); the tiny model has no pretrained weights")
        with torch.random.fork_rng():
            torch.manual_seed(cfg.init_seed)
            model = open_clip.model.CLIP(
                embed_dim=cfg.embed_dim,
                vision_cfg=dict(image_size=cfg.image_size, patch_size=cfg.patch_size,
                                width=cfg.width, layers=cfg.layers,
                                head_width=cfg.width // cfg.heads, mlp_ratio=4.0),
                text_cfg=dict(context_length=77, vocab_size=49408, width=cfg.text_width,
                              heads=cfg.text_heads, layers=cfg.text_layers),
            )
        tokenizer = open_clip.tokenizer.SimpleTokenizer()
        desc = (f"random init (seed {cfg.init_seed}) tiny OpenCLIP ViT: {cfg.image_size}px, "
                f"patch {cfg.patch_size}, width {cfg.width}, {cfg.layers} layers")
        return model, tokenizer, desc
    if cfg.model not in open_clip.list_models():
        raise ConfigError(f"clip.model {cfg.model!r} is not an OpenCLIP model name (see "
                          "open_clip.list_models()) nor 'tiny'")
    pretrained = cfg.pretrained
    if pretrained and not Path(pretrained).is_file():
        require_online(f"OpenCLIP weights {cfg.model}/{pretrained}",
                       "clip.model=tiny (random weights), or clip.pretrained=<local checkpoint "
                       "file>")
    with torch.random.fork_rng():
        torch.manual_seed(cfg.init_seed)
        model = open_clip.create_model(cfg.model, pretrained=pretrained or None)
    tokenizer = open_clip.get_tokenizer(cfg.model)
    desc = (f"OpenCLIP {cfg.model} / {pretrained}" if pretrained
            else f"OpenCLIP {cfg.model} with RANDOM weights (clip.pretrained unset)")
    return model, tokenizer, desc


class PatchCLIP(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.cfg = cfg
        self.model, self.tokenizer, self.weights = build_open_clip(cfg)
        self.model.eval().requires_grad_(False)
        visual = self.model.visual
        if getattr(visual, "attn_pool", None) is not None or getattr(
                visual, "pool_type", "tok") != "tok" or getattr(visual, "final_ln_after_pool",
                                                                 False):
            raise ConfigError(f"clip.model {cfg.model!r}: PatchCLIP needs a plain ViT with a "
                              "class token (no attention pooling)")
        self.input_size = tuple(visual.image_size)
        self.register_buffer("mean", torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(OPENAI_STD).view(1, 3, 1, 1), False)
        self._text_cache: dict[str, torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self.mean.device

    # ------------------------------------------------------------ text

    def _tokenize(self, texts: list[str]) -> torch.Tensor:
        out = self.tokenizer(texts)
        return out.to(self.device)

    @torch.no_grad()
    def text_embeddings(self, category: str) -> torch.Tensor:
        """(2, D) normalised class embeddings [normal, anomalous]; cached per category."""
        if category not in self._text_cache:
            prompts = prompt_ensemble(category)
            rows = []
            for state in ("normal", "anomalous"):
                emb = self.model.encode_text(self._tokenize(prompts[state])).float()
                rows.append(F.normalize(F.normalize(emb, dim=-1).mean(0), dim=-1))
            self._text_cache[category] = torch.stack(rows)
        return self._text_cache[category]

    # ------------------------------------------------------------ image

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 3, H, W) -> the model's input size and normalisation."""
        x = images.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bicubic", align_corners=False)
        return (x - self.mean) / self.std

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + class token + positions + ln_pre: (B, 1 + N, width)."""
        visual = self.model.visual
        x = visual.conv1(x.to(visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        return visual.ln_pre(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Transformer output tokens -> the joint space (ln_post and projection, every token)."""
        visual = self.model.visual
        x = visual.ln_post(x)
        return x @ visual.proj if visual.proj is not None else x

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``global`` (B, D) and ``patches`` (B, gh, gw, D), both L2-normalised, float32."""
        x = self.embed_tokens(self.preprocess(images))
        x = self.head(self.model.visual.transformer(x)).float()
        x = F.normalize(x, dim=-1)
        grid = self.model.visual.grid_size
        patches = x[:, 1:].reshape(x.shape[0], grid[0], grid[1], -1)
        return {"global": x[:, 0], "patches": patches}

    # ------------------------------------------------------------ maps

    def anomaly_probability(self, features: torch.Tensor, category: str) -> torch.Tensor:
        """p(anomalous) of normalised features (..., D) against the prompt ensembles."""
        text = self.text_embeddings(category).to(features.device)
        logits = self.cfg.temperature * features @ text.T
        return logits.softmax(-1)[..., 1]

    def language_map(self, patches: torch.Tensor, category: str) -> torch.Tensor:
        """(B, gh, gw) language-guided map L."""
        return self.anomaly_probability(patches, category)

    def global_score(self, global_features: torch.Tensor, category: str) -> torch.Tensor:
        return self.anomaly_probability(global_features, category)


def memory_bank_distance(query: torch.Tensor, bank: torch.Tensor,
                         chunk: int = 4096) -> torch.Tensor:
    """½(1 − max cos) of each query feature to the bank; features normalised, last dim D.

    query (..., D), bank (M, D) -> (...). Zero for a feature that is in the bank."""
    flat = query.reshape(-1, query.shape[-1])
    bank = bank.to(flat.dtype)
    best = torch.cat([(flat[i:i + chunk] @ bank.T).amax(dim=1)
                      for i in range(0, flat.shape[0], chunk)])
    return (0.5 * (1.0 - best)).clamp_min(0.0).reshape(query.shape[:-1])


@torch.no_grad()
def winclip_window_map(clip: PatchCLIP, images: torch.Tensor, category: str,
                       scales: tuple[int, ...] = (2, 3), window_batch: int = 512) -> torch.Tensor:
    """WinCLIP-style multi-scale sliding windows: every k×k window of patches (stride 1) is
    encoded on its own (its tokens plus the class token go through the whole transformer,
    WinCLIP's masking), scored against the prompts, and each patch averages the scores of
    the windows covering it. Used by ``clipfusion bench`` as the cost reference: it runs the
    transformer once per window, where PatchCLIP runs it once per image."""
    x = clip.embed_tokens(clip.preprocess(images))
    gh, gw = clip.model.visual.grid_size
    b = x.shape[0]
    total = torch.zeros(b, gh, gw, device=x.device)
    count = torch.zeros(gh, gw, device=x.device)
    grid_index = torch.arange(gh * gw, device=x.device).view(gh, gw)
    for k in scales:
        windows = [grid_index[i:i + k, j:j + k].reshape(-1)
                   for i in range(gh - k + 1) for j in range(gw - k + 1)]
        index = torch.stack(windows) + 1  # (W, k*k), +1 skips the class token
        for start in range(0, len(windows), max(1, window_batch // b)):
            idx = index[start:start + max(1, window_batch // b)]
            tokens = x[:, idx]  # (B, w, k*k, width)
            cls = x[:, :1].unsqueeze(1).expand(-1, idx.shape[0], -1, -1)
            seq = torch.cat([cls, tokens], dim=2).flatten(0, 1)
            out = clip.head(clip.model.visual.transformer(seq)[:, 0]).float()
            score = clip.anomaly_probability(F.normalize(out, dim=-1), category)
            score = score.view(b, idx.shape[0])
            for w, cells in enumerate(idx - 1):
                rows, cols = cells // gw, cells % gw
                total[:, rows, cols] += score[:, w:w + 1]
        for i in range(gh - k + 1):
            for j in range(gw - k + 1):
                count[i:i + k, j:j + k] += 1
    return total / count.clamp_min(1)
