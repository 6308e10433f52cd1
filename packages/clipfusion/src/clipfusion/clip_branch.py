"""PatchCLIP: the CLIP branch (global cues).

For an image, an OpenCLIP ViT gives a class token and a grid of patch tokens. Both are mapped
into the joint image–text space (``ln_post`` then the visual projection), so each patch can be
compared with text embeddings:

- language map L: per patch, softmax over {normal, anomalous} of cos(patch, text_c) / T
  (T = ``clip.temperature``, 0.07 as anomalib's WinCLIP), where text_c is the mean of the
  normalised embeddings of the class's prompt ensemble (prompts.py); L = p(anomalous),
  averaged over ``clip.language_layers`` (each block's tokens through ln_post + projection);
- global score: the same softmax on the class token (WinCLIP's zero-shot classifier);
- visual map V (k-shot): ½·(1 − max_j cos(patch, bank_j)), the cosine distance of each query
  patch to its nearest neighbour in the memory bank of the k reference images' patches; the
  bank holds the tokens of ``clip.bank_layers``, by default unprojected (ln_post without the
  projection: the width-dim output tokens anomalib's WinCLIP matches), averaged over blocks.

``model="tiny"`` builds a small randomly initialised OpenCLIP model (no download): its
tokenizer is OpenCLIP's SimpleTokenizer, whose BPE vocabulary ships inside the wheel.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipfusion.config import ClipConfig
from clipfusion.memory import top1_similarity
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
        n = len(visual.transformer.resblocks)
        self.language_blocks = self._block_indices(cfg.language_layers, n, "language_layers")
        self.bank_blocks = self._block_indices(cfg.bank_layers, n, "bank_layers")

    @staticmethod
    def _block_indices(layers: list[int], n: int, key: str) -> list[int]:
        """1-based (or negative) block numbers -> 0-based indices, checked."""
        out = []
        for i in layers:
            j = int(i) - 1 if int(i) > 0 else n + int(i)
            if not 0 <= j < n:
                raise ConfigError(f"clip.{key}: block {i} does not exist; the ViT has blocks "
                                  f"1..{n} (or -1..-{n})")
            out.append(j)
        return out

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
            prompts = prompt_ensemble(category, self.cfg.prompt_states)
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

    def run_blocks(self, x: torch.Tensor, keep: set[int]) -> dict[int, torch.Tensor]:
        """Tokens (B, L, width) after each transformer block whose index is in `keep`; the
        blocks after the last kept one are not run."""
        transformer = self.model.visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        out = {}
        for i, block in enumerate(transformer.resblocks[:max(keep) + 1]):
            x = block(x)
            if i in keep:
                out[i] = x if batch_first else x.transpose(0, 1)
        return out

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor) -> dict:
        """``global`` (B, D): the class token in the joint space; ``language`` [(B, gh, gw, D)]
        per language block (projected); ``bank`` [(B, gh·gw, C)] per bank block (C = width
        unprojected, D projected). All L2-normalised, float32."""
        last = len(self.model.visual.transformer.resblocks) - 1
        tokens = self.run_blocks(self.embed_tokens(self.preprocess(images)),
                                 {*self.language_blocks, *self.bank_blocks, last})
        gh, gw = self.model.visual.grid_size
        b = images.shape[0]
        glob = F.normalize(self.head(tokens[last][:, 0]).float(), dim=-1)
        language = [F.normalize(self.head(tokens[i][:, 1:]).float(), dim=-1).reshape(
            b, gh, gw, -1) for i in self.language_blocks]
        if self.cfg.bank_tokens == "projected":
            bank = [F.normalize(self.head(tokens[i][:, 1:]).float(), dim=-1)
                    for i in self.bank_blocks]
        else:
            ln = self.model.visual.ln_post
            bank = [F.normalize(ln(tokens[i][:, 1:]).float(), dim=-1) for i in self.bank_blocks]
        return {"global": glob, "language": language, "bank": bank}

    # ------------------------------------------------------------ maps

    def anomaly_probability(self, features: torch.Tensor, category: str) -> torch.Tensor:
        """p(anomalous) of normalised features (..., D) against the prompt ensembles:
        softmax over {normal, anomalous} of cos / temperature."""
        text = self.text_embeddings(category).to(features.device)
        logits = features @ text.T / self.cfg.temperature
        return logits.softmax(-1)[..., 1]

    def language_map(self, language: list[torch.Tensor], category: str) -> torch.Tensor:
        """(B, gh, gw) language-guided map L: p(anomalous) averaged over the blocks."""
        return torch.stack([self.anomaly_probability(x.float(), category)
                            for x in language]).mean(0)

    def global_score(self, global_features: torch.Tensor, category: str) -> torch.Tensor:
        return self.anomaly_probability(global_features, category)


def _windows(gh: int, gw: int, k: int, device) -> torch.Tensor:
    """(W, k·k) patch indices of every k×k window of a gh×gw grid (stride 1)."""
    grid = torch.arange(gh * gw, device=device).view(gh, gw)
    return torch.stack([grid[i:i + k, j:j + k].reshape(-1)
                        for i in range(gh - k + 1) for j in range(gw - k + 1)])


@torch.inference_mode()
def window_embeddings(clip: PatchCLIP, images: torch.Tensor, scales: tuple[int, ...] = (2, 3),
                      window_batch: int = 512) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """WinCLIP's window masking: every k×k window of patches (stride 1) goes through the whole
    transformer on its own (its tokens plus the class token); per scale, (cells (W, k·k),
    normalised class-token embeddings (B, W, D) in the joint space)."""
    x = clip.embed_tokens(clip.preprocess(images))
    gh, gw = clip.model.visual.grid_size
    b = x.shape[0]
    out = []
    for k in scales:
        cells = _windows(gh, gw, k, x.device)
        step = max(1, window_batch // b)
        emb = []
        for start in range(0, len(cells), step):
            idx = cells[start:start + step] + 1  # +1 skips the class token
            tokens = x[:, idx]  # (B, w, k*k, width)
            cls = x[:, :1].unsqueeze(1).expand(-1, idx.shape[0], -1, -1)
            seq = torch.cat([cls, tokens], dim=2).flatten(0, 1)
            e = clip.head(clip.model.visual.transformer(seq)[:, 0]).float()
            emb.append(F.normalize(e, dim=-1).view(b, idx.shape[0], -1))
        out.append((cells, torch.cat(emb, dim=1)))
    return out


def _spread(scores: list[torch.Tensor], cells: list[torch.Tensor], gh: int,
            gw: int) -> torch.Tensor:
    """Per patch, the mean of the scores (B, W) of the windows covering it -> (B, gh, gw)."""
    total, count = 0.0, 0.0
    for sc, c in zip(scores, cells, strict=True):
        cover = torch.zeros(c.shape[0], gh * gw, device=sc.device)
        cover.scatter_(1, c, 1.0)
        total = total + sc @ cover
        count = count + cover.sum(0)
    return (total / torch.as_tensor(count).clamp_min(1)).view(-1, gh, gw)


@torch.inference_mode()
def winclip_window_map(clip: PatchCLIP, images: torch.Tensor, category: str,
                       scales: tuple[int, ...] = (2, 3), window_batch: int = 512) -> torch.Tensor:
    """WinCLIP-style multi-scale zero-shot map: each window's p(anomalous), averaged over the
    windows covering a patch. It runs the transformer once per window, where PatchCLIP runs it
    once per image."""
    gh, gw = clip.model.visual.grid_size
    wins = window_embeddings(clip, images, scales, window_batch)
    return _spread([clip.anomaly_probability(e, category) for _, e in wins],
                   [c for c, _ in wins], gh, gw)


@torch.inference_mode()
def winclip_reference(clip: PatchCLIP, images: torch.Tensor, category: str,
                      bank: list[torch.Tensor] | None = None, scales: tuple[int, ...] = (2, 3),
                      window_batch: int = 512) -> dict[str, torch.Tensor]:
    """The full WinCLIP-style pipeline on the same backbone, as the cost reference of
    ``clipfusion bench``: the full-image pass (global score and patch tokens), the window
    pass (zero-shot map) and, with a few-shot ``bank`` (per scale, the (M, D) window
    embeddings of the reference images, from ``window_embeddings``), each window's distance
    to its nearest reference window, spread to the patches."""
    gh, gw = clip.model.visual.grid_size
    full = clip.encode_images(images)
    wins = window_embeddings(clip, images, scales, window_batch)
    cells = [c for c, _ in wins]
    out = {"global": clip.global_score(full["global"], category),
           "language": _spread([clip.anomaly_probability(e, category) for _, e in wins],
                               cells, gh, gw)}
    if bank is not None:
        dist = [0.5 * (1 - top1_similarity(e, m)) for (_, e), m in zip(wins, bank, strict=True)]
        out["visual"] = _spread(dist, cells, gh, gw)
    return out
