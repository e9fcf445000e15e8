"""CLIP tokenization with the SD1.5 conventions, on open_clip's bundled BPE vocabulary.

Each prompt becomes [start-of-text, BPE ids..., end-of-text] padded to 77 with end-of-text (49407),
as the SD1.5 CLIPTokenizer does (not with 0, as open_clip's own `tokenize` does). Text is cleaned
like CLIP's: ftfy fixes, HTML unescaping, whitespace collapsing, lower case.
"""
from __future__ import annotations

import warnings
from functools import lru_cache

import torch

START_OF_TEXT = 49406
END_OF_TEXT = 49407
CONTEXT_LENGTH = 77


@lru_cache(maxsize=1)
def _bpe():
    """open_clip's CLIP BPE tokenizer, built once (reading the vocabulary takes a moment)."""
    from open_clip.tokenizer import SimpleTokenizer
    bpe = SimpleTokenizer(clean="lower")
    if (bpe.sot_token_id, bpe.eot_token_id) != (START_OF_TEXT, END_OF_TEXT):
        raise RuntimeError("open_clip's BPE vocabulary is not CLIP's: special tokens are "
                           f"{bpe.sot_token_id}, {bpe.eot_token_id} instead of 49406, 49407")
    return bpe


class Tokenizer:
    """Prompts -> token ids [B, 77] for the SD1.5 text encoder."""

    def __init__(self, context_length: int = CONTEXT_LENGTH):
        self.context_length = context_length
        self.bpe = _bpe()

    def encode(self, prompt: str) -> list[int]:
        """BPE ids of one prompt, without the start/end tokens and without truncation."""
        return self.bpe.encode(prompt)

    def decode(self, ids) -> str:
        """Text of BPE ids (special tokens dropped)."""
        ids = [int(i) for i in ids if int(i) not in (START_OF_TEXT, END_OF_TEXT)]
        return self.bpe.decode(ids).strip()

    def __call__(self, prompts: str | list[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        room = self.context_length - 2  # start and end of text take two places
        out = torch.full((len(prompts), self.context_length), END_OF_TEXT, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids = self.encode(prompt)
            if len(ids) > room:
                warnings.warn(f"prompt {prompt!r} is {len(ids)} tokens long, the text encoder takes "
                              f"{room}: dropped the last {len(ids) - room} tokens "
                              f"({self.decode(ids[room:])!r})", stacklevel=2)
                ids = ids[:room]
            out[row, :len(ids) + 2] = torch.tensor([START_OF_TEXT, *ids, END_OF_TEXT])
        return out  # [B, 77]
