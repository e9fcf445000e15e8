"""Text encoder and tokenizer: equivalence with transformers, key coverage, refusal of bad files."""
import gzip
import json
import os
import warnings

import pytest
import torch

from conftest import manifest_state
from text import (CLIPTextEncoder, TextEncoderConfig, Tokenizer, load_text_encoder,
                  text_encoder_from_hf, text_encoder_state, text_encoder_to_hf)
from runtime.weights import CheckpointError, save_safetensors

HEADS = 4


def tiny_reference(layers: int = 3):
    """A seeded tiny transformers CLIPTextModel with non-trivial weights (norms not identity)."""
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37,
                            num_hidden_layers=layers, num_attention_heads=HEADS,
                            max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    ref = CLIPTextModel(config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            elif p.ndim == 2 and "embedding" not in name:  # linear weights: large enough for peaked attention
                p.normal_(0, 1.5 / p.shape[1] ** 0.5)
            else:
                p.normal_(0, 0.5)
    return ref


def hf_state(ref) -> dict:
    """The reference weights under the text_model. prefix every published file uses."""
    return {("" if k.startswith("text_model.") else "text_model.") + k: v.clone()
            for k, v in ref.state_dict().items()}


def tokens() -> torch.Tensor:
    ids = Tokenizer()(["a photo of a cat", "an astronaut riding a horse, 4k"])
    torch.manual_seed(1)
    random = torch.randint(0, 49406, (1, 77))
    random[0, 0], random[0, -1] = 49406, 49407
    return torch.cat([ids, random])  # [3, 77]


def assert_close(ours, ref):
    tol = min(1e-4, 1e-5 * max(1.0, ref.abs().max().item()))
    diff = (ours - ref).abs().max().item()
    assert diff <= tol, f"max abs diff {diff:.3g} > {tol:.3g}"


def write_layout(layout: str, state: dict, ref, tmp) -> str:
    """Write the reference weights the way one kind of published file holds them."""
    corrupt_ids = {"text_model.embeddings.position_ids": torch.full((1, 77), 7.5)}  # must be ignored
    if layout == "diffusers_folder":
        (tmp / "pipe" / "text_encoder").mkdir(parents=True)
        ref.config.to_json_file(str(tmp / "pipe" / "text_encoder" / "config.json"))
        save_safetensors(state, tmp / "pipe" / "text_encoder" / "model.safetensors")
        return str(tmp / "pipe")
    if layout == "transformers5_unprefixed":
        save_safetensors({k.removeprefix("text_model."): v for k, v in state.items()}, tmp / "te.safetensors")
        return str(tmp / "te.safetensors")
    single = {"cond_stage_model.transformer." + k: v for k, v in {**state, **corrupt_ids}.items()}
    single["model.diffusion_model.out.2.bias"] = torch.zeros(4)  # the UNet's business, not ours
    if layout == "single_file_safetensors":
        save_safetensors(single, tmp / "sd15.safetensors")
        return str(tmp / "sd15.safetensors")
    assert layout == "single_file_ckpt"
    torch.save({"state_dict": single, "global_step": 1}, tmp / "sd15.ckpt")
    return str(tmp / "sd15.ckpt")


LAYOUTS = ["diffusers_folder", "transformers5_unprefixed", "single_file_safetensors", "single_file_ckpt"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_transformers(layout, tmp):
    ref = tiny_reference()
    path = write_layout(layout, hf_state(ref), ref, tmp)
    ours = load_text_encoder(path, heads=None if layout == "diffusers_folder" else HEADS)
    assert ours.config.heads == HEADS and ours.config.layers == 3 and ours.config.mlp_width == 37
    ids = tokens()
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=None, output_hidden_states=True)
        assert_close(ours(ids), expected.last_hidden_state)
        for n in (1, 2):  # clip skip: hidden_states[-1 - n] through the final norm
            assert_close(ours(ids, clip_skip=n), ref.final_layer_norm(expected.hidden_states[-1 - n]))
        assert not torch.allclose(ours(ids, clip_skip=1), ours(ids), atol=1e-2)


def test_state_dict_round_trip_and_low_precision():
    ref = tiny_reference()
    state = hf_state(ref)
    model = load_text_encoder(state, heads=HEADS)
    back = text_encoder_to_hf(model.state_dict())
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    ids = tokens()
    with torch.no_grad():
        full = model(ids)
        assert torch.equal(load_text_encoder(model.state_dict(), heads=HEADS)(ids), full)  # our names
        for dtype in (torch.bfloat16, torch.float16):
            low = load_text_encoder(state, heads=HEADS, dtype=dtype)
            out = low(ids)
            assert out.dtype == dtype and out.shape == (3, 77, 32)
            assert (out.float() - full).abs().max() < 0.1 * full.abs().max()


def test_clip_skip_range():
    model = CLIPTextEncoder(TextEncoderConfig(width=32, layers=2, heads=4))
    ids = torch.full((1, 77), 49407)
    assert model(ids, clip_skip=1).shape == (1, 77, 32)
    for bad in (-1, 2):
        with pytest.raises(ValueError, match="clip_skip must be in 0..1"):
            model(ids, clip_skip=bad)


# --- full-size key coverage (meta tensors: no weights are allocated) ---

def full_size_keys():
    with torch.device("meta"):
        model = CLIPTextEncoder(TextEncoderConfig())
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_full_size_diffusers_keys():
    hf = manifest_state("sd15_diffusers_text_encoder")
    ours = text_encoder_from_hf({**hf, **manifest_state("sd15_diffusers_text_encoder", "optional_keys")})
    assert {k: tuple(v.shape) for k, v in ours.items()} == full_size_keys()
    assert TextEncoderConfig.from_state_dict(ours) == TextEncoderConfig()
    back = text_encoder_to_hf(ours)
    assert {k: tuple(v.shape) for k, v in back.items()} == {k: tuple(v.shape) for k, v in hf.items()}


def test_full_size_single_file_keys():
    state = {**manifest_state("sd15_ldm_single_file"), **manifest_state("sd15_ldm_single_file", "optional_keys")}
    ours = text_encoder_state(state)  # picks cond_stage_model.transformer.*, drops position_ids
    assert {k: tuple(v.shape) for k, v in ours.items()} == full_size_keys()
    back = {"cond_stage_model.transformer." + k for k in text_encoder_to_hf(ours)}
    assert back == {k for k in manifest_state("sd15_ldm_single_file") if k.startswith("cond_stage_model.")}


# --- tokenizer ---

def test_tokenizer_known_ids():
    tok = Tokenizer()
    # Ids looked up in CLIP's BPE vocabulary: a</w> 320, photo</w> 1125, of</w> 539, cat</w> 2368,
    # an</w> 550, astronaut</w> 18376, riding</w> 6765, horse</w> 4558, !</w> 256.
    assert [tok.bpe.encoder[w] for w in ("a</w>", "photo</w>", "of</w>", "cat</w>", "!</w>")] == [
        320, 1125, 539, 2368, 256]
    ids = tok(["a photo of a cat", "  An ASTRONAUT   riding a horse! "])
    assert ids.dtype == torch.long and ids.shape == (2, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[1, :8].tolist() == [49406, 550, 18376, 6765, 320, 4558, 256, 49407]
    assert (ids[0, 7:] == 49407).all() and (ids[1, 8:] == 49407).all()  # padded with end-of-text
    assert torch.equal(tok("a photo of a cat")[0], ids[0])


def test_tokenizer_truncation_warns():
    tok = Tokenizer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fits = tok("cat " * 75)  # exactly 75 tokens: no warning
    assert fits[0].tolist() == [49406] + [2368] * 75 + [49407]
    with pytest.warns(UserWarning, match=r"'cat cat.*80 tokens long.*dropped the last 5 tokens"):
        ids = tok(["dog", "cat " * 80])
    assert ids.shape == (2, 77) and ids[1].tolist() == fits[0].tolist()


def test_tokenizer_matches_transformers(tmp):
    """transformers' CLIPTokenizer on the same BPE data (as vocab.json/merges.txt)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (tmp / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    hf = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"))
    prompts = ["a photo of a cat", "A  Photo   of a CAT!", "masterpiece, (best quality:1.2), 4k, 8K UHD",
               "café naïve don't 1234 ünïcödé 日本語 🐱", "<lora:foo:0.8> x" + "y" * 400]
    expected = hf(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(Tokenizer()(prompts), expected.input_ids)


# --- refusing bad input ---

def test_refuses_truncated_safetensors(tmp):
    save_safetensors(hf_state(tiny_reference(layers=2)), tmp / "te.safetensors")
    data = (tmp / "te.safetensors").read_bytes()
    (tmp / "te.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_text_encoder(tmp / "te.safetensors", heads=HEADS)


@pytest.mark.parametrize("keys, message", [
    ({"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
      "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280)}, "SDXL"),
    ({"cond_stage_model.model.token_embedding.weight": (49408, 1024),
      "cond_stage_model.model.positional_embedding": (77, 1024)}, "SD2.x"),
    ({"text_model.embeddings.token_embedding.weight": (49408, 1024),
      "text_model.embeddings.position_embedding.weight": (77, 1024),
      "text_model.encoder.layers.0.mlp.fc1.weight": (4096, 1024)}, "SD2.x"),
    ({"model.diffusion_model.out.2.bias": (4,)}, "holds no SD1.5 CLIP text encoder"),
])
def test_refuses_other_models(keys, message):
    with pytest.raises(CheckpointError, match=message):
        load_text_encoder({k: torch.empty(s, device="meta") for k, s in keys.items()})


def test_refuses_sd2_folder(tmp):
    (tmp / "text_encoder").mkdir()
    (tmp / "text_encoder" / "config.json").write_text(json.dumps({"hidden_act": "gelu", "hidden_size": 1024}))
    save_safetensors({"text_model.final_layer_norm.weight": torch.ones(1024)},
                     tmp / "text_encoder" / "model.safetensors")
    with pytest.raises(CheckpointError, match="quick_gelu"):
        load_text_encoder(tmp)
    (tmp / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no weights file here"):
        load_text_encoder(tmp / "empty")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update({"text_model.encoder.layers.1.mlp.fc2.weight": torch.zeros(37, 32)}), "wrong shape"),
    (lambda s: s.pop("text_model.final_layer_norm.bias"), "missing: ln_final.bias"),
    (lambda s: s.update({"text_projection.weight": torch.zeros(32, 32)}), "unexpected: text_projection"),
    (lambda s: s.pop("text_model.encoder.layers.0.self_attn.v_proj.bias"), "need q, k and v"),
    (lambda s: s.update({"text_model.encoder.layers.0.self_attn.k_proj.weight": torch.zeros(16, 32)}),
     "q/k/v shapes differ"),
])
def test_refuses_mismatched_weights(edit, message):
    state = hf_state(tiny_reference(layers=2))
    edit(state)
    with pytest.raises(CheckpointError, match=message):
        load_text_encoder(state, heads=HEADS)


def test_refuses_code_in_pickle(tmp):
    marker = tmp / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {"text_model.embeddings.token_embedding.weight": torch.zeros(2), "x": Evil()}},
               tmp / "evil.ckpt")
    with pytest.raises(CheckpointError, match="could run arbitrary code"):
        load_text_encoder(tmp / "evil.ckpt")
    assert not marker.exists()
