"""MapDiff: the diffusion branch (local detail).

One UNet pass per image:

1. the VAE encodes the image (scaled to [−1, 1]) to latents z₀ (posterior mean × scaling factor);
2. fixed noise ε is added at a small timestep t: z_t = √ᾱ_t z₀ + √(1−ᾱ_t) ε (the same ε for
   every image, so that an image and its copy give identical features);
3. the UNet predicts the noise of z_t conditioned on an anomaly prompt
   ("a photo of a {cls} with a damaged defect");
4. language map L: the cross-attention probabilities of the prompt's anomaly words
   (attention.py), summed over those tokens, averaged over heads and over the recorded layers
   (each upsampled to the latent grid);
5. visual map V (k-shot): the up-block feature maps (forward hooks), L2-normalised per
   location, against a memory bank of the k reference images' features: ½(1 − max cos),
   averaged over the hooked blocks.

``checkpoint=None`` builds a tiny randomly initialised VAE, UNet and CLIP text encoder from
configs (no download); the prompt is tokenised by OpenCLIP's SimpleTokenizer (the same BPE
vocabulary as Stable Diffusion's CLIP tokenizer).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from clipfusion.attention import AttentionStore, install_recorders
from clipfusion.config import DiffusionConfig
from clipfusion.memory import memory_bank_distance
from clipfusion.prompts import class_name
from reprokit.errors import ConfigError, require_online


class PromptTokenizer:
    """Token ids (1, 77) of a prompt and the ids of a single word, for either tokenizer."""

    def __init__(self, hf_tokenizer=None):
        self.hf = hf_tokenizer
        if hf_tokenizer is None:
            import open_clip

            self.simple = open_clip.tokenizer.SimpleTokenizer()

    def __call__(self, text: str) -> torch.Tensor:
        if self.hf is not None:
            return self.hf(text, padding="max_length", max_length=self.hf.model_max_length,
                           truncation=True, return_tensors="pt").input_ids
        return self.simple([text])

    def word_ids(self, word: str) -> list[int]:
        if self.hf is not None:
            return list(self.hf(word, add_special_tokens=False).input_ids)
        return list(self.simple.encode(word))


def token_positions(ids: list[int], word: list[int]) -> list[int]:
    """Positions in `ids` covered by occurrences of the sub-sequence `word`."""
    found = []
    for start in range(len(ids) - len(word) + 1):
        if ids[start:start + len(word)] == word:
            found.extend(range(start, start + len(word)))
    return found


def _tiny_models(cfg: DiffusionConfig):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    ch = list(cfg.block_channels)
    n = len(ch)
    vae_ch = list(cfg.vae_channels)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.init_seed)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * len(vae_ch),
                            up_block_types=("UpDecoderBlock2D",) * len(vae_ch),
                            block_out_channels=tuple(vae_ch), layers_per_block=1,
                            norm_num_groups=min(32, vae_ch[0]), sample_size=cfg.image_size)
        latent = cfg.image_size // 2 ** (len(vae_ch) - 1)
        unet = UNet2DConditionModel(
            sample_size=latent, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=tuple(ch),
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            cross_attention_dim=cfg.text_width, attention_head_dim=4,
            norm_num_groups=min(32, ch[0]))
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
            num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
            max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
            pad_token_id=0))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear")
    desc = (f"random init (seed {cfg.init_seed}) tiny VAE {vae_ch} (latent /"
            f"{2 ** (len(vae_ch) - 1)}), UNet {ch}, CLIP text encoder width {cfg.text_width}")
    return vae, unet, text, PromptTokenizer(), scheduler, desc


def _pretrained_models(cfg: DiffusionConfig):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    source = cfg.checkpoint
    if not Path(source).is_dir():
        require_online(f"Stable Diffusion weights {source!r}",
                       "diffusion.checkpoint=null (tiny random model), or a local diffusers "
                       "folder")
    kw = dict(local_files_only=Path(source).is_dir())
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **kw)
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **kw)
    text = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw)
    if Path(source).is_dir() and not (Path(source) / "tokenizer").is_dir():
        # a local folder without tokenizer files: SD 1.x/2.x use CLIP's BPE vocabulary,
        # which OpenCLIP's SimpleTokenizer ships
        tokenizer = PromptTokenizer()
    else:
        tokenizer = PromptTokenizer(
            CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw))
    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kw)
    return vae, unet, text, tokenizer, scheduler, f"Stable Diffusion {source}"


class MapDiff(nn.Module):
    def __init__(self, cfg: DiffusionConfig):
        super().__init__()
        self.cfg = cfg
        build = _tiny_models if cfg.checkpoint is None else _pretrained_models
        self.vae, self.unet, self.text_encoder, self.tokenizer, self.scheduler, self.weights = (
            build(cfg))
        for module in (self.vae, self.unet, self.text_encoder):
            module.eval().requires_grad_(False)
        self.store = AttentionStore()
        self.recorded_layers = install_recorders(self.unet, self.store, cfg.attention_blocks)
        n_up = len(self.unet.up_blocks)
        bad = [i for i in cfg.feature_blocks if not 0 <= i < n_up]
        if bad or not cfg.feature_blocks:
            raise ConfigError(f"diffusion.feature_blocks {cfg.feature_blocks}: the UNet has "
                              f"up_blocks 0..{n_up - 1}")
        self._features: dict[int, torch.Tensor] = {}
        for i in cfg.feature_blocks:
            self.unet.up_blocks[i].register_forward_hook(self._hook(i))
        self._prompt_cache: dict[str, tuple[torch.Tensor, list[int]]] = {}
        self._noise: torch.Tensor | None = None
        self._channels_last = False

    def channels_last(self) -> MapDiff:
        """NHWC convolutions for the VAE and UNet (the oneDNN/cuDNN kernels for that layout;
        the same maths, so the same maps up to float rounding)."""
        self.vae.to(memory_format=torch.channels_last)
        self.unet.to(memory_format=torch.channels_last)
        self._channels_last = True
        return self

    def _hook(self, index: int):
        def save(module, args, output):
            self._features[index] = output[0] if isinstance(output, tuple) else output
        return save

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def prompt(self, category: str) -> tuple[torch.Tensor, list[int]]:
        """(text hidden states (1, T, D), positions of the anomaly words); cached."""
        if category not in self._prompt_cache:
            text = self.cfg.prompt.format(cls=class_name(category))
            ids = self.tokenizer(text)
            positions = []
            for word in self.cfg.attention_words:
                positions += token_positions(ids[0].tolist(), self.tokenizer.word_ids(word))
            if not positions:
                raise ConfigError(f"none of diffusion.attention_words "
                                  f"{self.cfg.attention_words} occurs in the prompt {text!r}")
            hidden = self.text_encoder(ids.to(self.device)).last_hidden_state
            self._prompt_cache[category] = (hidden, sorted(set(positions)))
        return self._prompt_cache[category]

    def _fixed_noise(self, shape: torch.Size) -> torch.Tensor:
        if self._noise is None or self._noise.shape[1:] != shape[1:]:
            gen = torch.Generator().manual_seed(self.cfg.noise_seed)
            self._noise = torch.randn((1, *shape[1:]), generator=gen)
        return self._noise.to(self.device)

    @torch.inference_mode()
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> the VAE posterior mean × scaling factor (B, 4, h, w). Images are
        expected at ``diffusion.image_size`` (the loader reads them at that size); others
        are resized bilinearly."""
        size = self.cfg.image_size
        x = images.to(self.device, torch.float32)
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = (x * 2 - 1).to(self.vae.dtype)
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        latents = self.vae.encode(x).latent_dist.mean
        return latents * self.vae.config.scaling_factor

    @torch.inference_mode()
    def unet_maps(self, latents: torch.Tensor, category: str) -> dict:
        """One UNet pass at timestep t on the noised latents -> the L map and V features."""
        hidden, positions = self.prompt(category)
        t = torch.tensor([self.cfg.timestep], device=self.device)
        noisy = self.scheduler.add_noise(latents, self._fixed_noise(latents.shape).to(latents),
                                         t).to(self.unet.dtype)
        if self._channels_last:
            noisy = noisy.contiguous(memory_format=torch.channels_last)
        self.store.clear()
        self._features.clear()
        self.unet(noisy, t, encoder_hidden_states=hidden.expand(latents.shape[0], -1, -1).to(
            self.unet.dtype))
        grid = latents.shape[-2:]
        maps = []
        for probs in self.store.maps.values():
            side = int(round(probs.shape[1] ** 0.5))
            m = probs[..., positions].sum(-1).view(-1, 1, side, side)
            maps.append(F.interpolate(m, size=grid, mode="bilinear", align_corners=False))
        attention = torch.stack(maps).mean(0)[:, 0]
        features = [F.normalize(self._features[i].float(), dim=1).contiguous()
                    for i in self.cfg.feature_blocks]
        return {"attention": attention.float(), "attention_tokens": dict(self.store.maps),
                "features": features}

    def encode_images(self, images: torch.Tensor, category: str) -> dict:
        """``attention`` (B, h, w): the L map on the latent grid; ``attention_tokens``
        {layer: (B, HW, T)} the raw probabilities; ``features`` [(B, C, h, w)] normalised."""
        return self.unet_maps(self.encode_latents(images), category)


def feature_distance(query: list[torch.Tensor], bank: list[torch.Tensor],
                     out_size: tuple[int, int]) -> torch.Tensor:
    """V map (B, *out_size): mean over blocks of the memory-bank distance, upsampled."""
    maps = []
    for q, b in zip(query, bank, strict=True):
        dist = memory_bank_distance(q.permute(0, 2, 3, 1), b.permute(0, 2, 3, 1).reshape(
            -1, b.shape[1]))
        maps.append(F.interpolate(dist[:, None], size=out_size, mode="bilinear",
                                  align_corners=False)[:, 0])
    return torch.stack(maps).mean(0)
