"""SD1.5 text conditioning: CLIP tokenizer and ViT-L/14 text tower (open_clip blocks)."""
from .encoder import CLIPTextEncoder, TextEncoderConfig
from .load import load_text_encoder, text_encoder_from_hf, text_encoder_state, text_encoder_to_hf
from .tokenizer import END_OF_TEXT, START_OF_TEXT, Tokenizer

__all__ = ["CLIPTextEncoder", "TextEncoderConfig", "Tokenizer", "load_text_encoder",
           "text_encoder_from_hf", "text_encoder_state",
           "text_encoder_to_hf", "START_OF_TEXT", "END_OF_TEXT"]
