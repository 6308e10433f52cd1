"""Recording cross-attention probabilities inside a diffusers UNet.

diffusers' default processor (scaled-dot-product attention) never materialises the attention
probabilities. ``RecordingAttnProcessor`` is a small attention processor that computes them
explicitly, softmax(QKᵀ/√d) (via ``Attention.get_attention_scores``), uses them as usual and,
for cross-attention, stores their mean over heads: (B, H·W, T) per layer, where T is the text
length, so each row sums to 1 over tokens. It is swapped in with the public
``unet.set_attn_processor``; self-attention layers keep their own processor.
"""

from __future__ import annotations

import torch


class AttentionStore:
    """Cross-attention probabilities of the last forward pass, by layer name."""

    def __init__(self):
        self.maps: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        self.maps.clear()

    def __len__(self) -> int:
        return len(self.maps)


class RecordingAttnProcessor:
    def __init__(self, store: AttentionStore, name: str):
        self.store = store
        self.name = name

    def __call__(self, attn, hidden_states: torch.Tensor,
                 encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 *args, **kwargs) -> torch.Tensor:
        is_cross = encoder_hidden_states is not None
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, seq_len, _ = (hidden_states if encoder_hidden_states is None
                             else encoder_hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))

        probs = attn.get_attention_scores(query, key, attention_mask)  # (B·heads, HW, T)
        if is_cross:
            heads = attn.heads
            self.store.maps[self.name] = (
                probs.float().view(batch, heads, probs.shape[1], probs.shape[2]).mean(1))
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install_recorders(unet, store: AttentionStore, blocks: list[str]) -> list[str]:
    """Give the cross-attention layers (``attn2``) of the named UNet parts a recording
    processor; return their names. Other layers keep their current processor."""
    processors = dict(unet.attn_processors)
    recorded = []
    for name in processors:
        layer = name.removesuffix(".processor")
        if ".attn2" in layer and any(layer.startswith(b) for b in blocks):
            processors[name] = RecordingAttnProcessor(store, layer)
            recorded.append(layer)
    if not recorded:
        raise ValueError(f"no cross-attention layer found in UNet parts {blocks}")
    unet.set_attn_processor(processors)
    return recorded
