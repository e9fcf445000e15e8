"""The SD1.5 text encoder: the CLIP ViT-L/14 text tower, built from open_clip's transformer blocks.

SD1.5 conditions its UNet on the token states after the final LayerNorm (transformers'
`last_hidden_state`), [B, 77, 768]. There is no pooling and no projection head. Attention is causal
and no padding mask is used: padding tokens (end-of-text) see the prompt, the prompt never sees them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from open_clip.transformer import LayerNorm, QuickGELU, Transformer


@dataclass
class TextEncoderConfig:
    """Sizes of the CLIP text tower; the defaults are SD1.5's (OpenAI CLIP ViT-L/14)."""
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 768
    layers: int = 12
    heads: int | None = None  # None: width // 64 (CLIP's head size)
    mlp_width: int | None = None  # None: 4 * width
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        self.heads = self.heads or self.width // 64
        self.mlp_width = self.mlp_width or 4 * self.width
        if self.heads < 1 or self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible into {self.heads} heads")

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], heads: int | None = None,
                        **overrides) -> "TextEncoderConfig":
        """Read sizes from the shapes of a state dict in our naming (see text/load.py)."""
        vocab_size, width = state["token_embedding.weight"].shape
        blocks = [int(k.split(".")[2]) for k in state if k.startswith("transformer.resblocks.")]
        layers = 1 + max(blocks, default=-1)
        return cls(vocab_size=vocab_size, context_length=state["positional_embedding"].shape[0],
                   width=width, layers=layers, heads=heads,
                   mlp_width=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0], **overrides)


class CLIPTextEncoder(nn.Module):
    """Token ids [B, L<=77] -> token states [B, L, width] after the final LayerNorm."""

    def __init__(self, config: TextEncoderConfig | None = None):
        super().__init__()
        self.config = config = config or TextEncoderConfig()
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        norm = partial(LayerNorm, eps=config.layer_norm_eps)
        # mlp_ratio is how open_clip sizes the MLP; it must give back mlp_width exactly.
        mlp_ratio = config.mlp_width / config.width
        self.transformer = Transformer(config.width, config.layers, config.heads, mlp_ratio=mlp_ratio,
                                       act_layer=QuickGELU, norm_layer=norm, batch_first=True)
        got = self.transformer.resblocks[0].mlp.c_fc.out_features
        if got != config.mlp_width:
            raise ValueError(f"open_clip sized the MLP {got} wide instead of {config.mlp_width}")
        self.ln_final = norm(config.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    def causal_mask(self, length: int, like: torch.Tensor) -> torch.Tensor:
        """Additive [L, L] mask: -inf above the diagonal (a token attends to itself and earlier ones)."""
        # Additive float, not bool: open_clip's block casts the mask to the activation dtype.
        return torch.full((length, length), float("-inf"), dtype=like.dtype, device=like.device).triu_(1)

    def forward(self, tokens: torch.Tensor, clip_skip: int = 0) -> torch.Tensor:
        """Token states after the final norm; `clip_skip=n` stops n layers early ("clip skip n+1" in
        A1111/ComfyUI, transformers' `hidden_states[-1 - n]`), still applying the final norm."""
        layers = self.config.layers
        if not 0 <= clip_skip < layers:
            raise ValueError(f"clip_skip must be in 0..{layers - 1} (the number of final layers to skip; "
                             f"A1111/ComfyUI 'clip skip 2' is clip_skip=1), got {clip_skip}")
        if tokens.ndim != 2 or tokens.shape[1] > self.config.context_length:
            raise ValueError(f"expected token ids [B, L<={self.config.context_length}], "
                             f"got shape {tuple(tokens.shape)}")
        length = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:length]  # [B, L, width]
        mask = self.causal_mask(length, x)
        for block in self.transformer.resblocks[:layers - clip_skip]:
            x = block(x, attn_mask=mask)  # [B, L, width], batch first
        return self.ln_final(x)
