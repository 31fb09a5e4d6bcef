"""SmolLM2-135M-Instruct from the offline GGUF: load (cached as safetensors), perplexity, greedy generation."""

from __future__ import annotations

import functools
import json
import math
import os
import time
from pathlib import Path

import torch

from . import assets

TOKENS_PER_WINDOW = 512
_CONVERTED = "smollm2-135m-instruct-fp32"


class ModelCacheError(assets.AssetError):
    """The converted safetensors copy is damaged."""


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def converted_dir() -> Path:
    """Folder of the safetensors copy, keyed to the GGUF's pinned sha256."""
    return assets.assets_dir() / f"{_CONVERTED}-{assets.GGUF_SHA256[:16]}"


def convert_gguf(verbose: bool = True) -> Path:
    """Parse the GGUF once (20-30 s), dequantize to fp32, save model + tokenizer as safetensors."""
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assets.gguf_path()
    out = converted_dir()
    tmp = out.with_name(out.name + ".partial")
    t0 = time.perf_counter()
    if verbose:
        print(f"Converting {gguf.name} to safetensors once (about 20-30 s); later loads take well under a second.")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are now plain fp32 tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    manifest = {
        "source": assets.GGUF_NAME,
        "source_sha256": assets.GGUF_SHA256,
        "model.safetensors": assets.sha256_of(tmp / "model.safetensors"),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    if verbose:
        print(f"  done in {time.perf_counter() - t0:.0f} s -> {out}")
    return out


def prepare() -> Path:
    """Make sure the fast-loading safetensors copy exists and is intact (converting the GGUF if needed)."""
    return _verified_dir()


def _verified_dir() -> Path:
    out = converted_dir()
    manifest = out / "manifest.json"
    if not manifest.is_file():
        assets.gguf_path()  # raises a clear AssetMissingError if the GGUF is not there either
        return convert_gguf()
    expected = json.loads(manifest.read_text())["model.safetensors"]
    try:
        assets.verify(out / "model.safetensors", expected, "The converted SmolLM2 weights")
    except assets.AssetCorruptError as e:
        raise ModelCacheError(f"{e}\nOr delete the folder {out}; it is rebuilt from the GGUF on the next load.") from e
    return out


@functools.lru_cache(maxsize=4)
def _load(dtype: torch.dtype, device: str):
    _quiet_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _verified_dir()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    return model, tok


def load_smollm2(dtype: torch.dtype | str = torch.float32, device: str = "cpu"):
    """(model, tokenizer) for SmolLM2-135M-Instruct, offline; cached on disk and within the process.

    The returned model is shared within the process: copy it (`copy.deepcopy`) before modifying weights.
    """
    if isinstance(dtype, str):
        if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
            raise ValueError(f"dtype must be a torch dtype such as 'float32' or 'bfloat16', got {dtype!r}")
        dtype = getattr(torch, dtype)
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    from .measure import resolve_device

    return _load(dtype, resolve_device(device))


def load_tokenizer():
    """SmolLM2's tokenizer alone (transformers' fast tokenizer from the converted copy), without loading the weights."""
    _quiet_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_verified_dir())


def release_cached_models() -> None:
    """Forget the process-wide cached models of `load_smollm2`, so that their memory is freed once no one else
    holds them (delete your own references too)."""
    import gc

    _load.cache_clear()
    gc.collect()


def perplexity(model, ids: torch.Tensor, window: int = TOKENS_PER_WINDOW, max_windows: int | None = None,
               batch_size: int = 4) -> float:
    """Perplexity of a 1-D token stream cut into non-overlapping windows of `window` tokens.

    Every window is scored independently (no context carried across windows), so the number depends on
    `window`; the course always uses the same window for comparisons.
    """
    ids = torch.as_tensor(ids).flatten()
    if window < 2:
        raise ValueError(f"window must be at least 2 tokens, got {window}")
    n = ids.numel() // window
    if max_windows is not None:
        n = min(n, max_windows)
    if n == 0:
        raise ValueError(f"need at least one full window of {window} tokens, got {ids.numel()} tokens")
    chunks = ids[: n * window].view(n, window)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, n, batch_size):
            batch = chunks[i : i + batch_size].to(device)
            logits = model(batch).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total += loss.item()
            count += batch[:, 1:].numel()
    return math.exp(total / count)


def chat_ids(tok, prompt: str) -> torch.Tensor:
    """Token ids of a one-turn chat prompt, with the assistant turn opened."""
    enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt")
    ids = enc if torch.is_tensor(enc) else enc["input_ids"]
    return ids


def generate_greedy(model, tok, prompt: str, max_new_tokens: int = 32, chat: bool = True) -> str:
    """Greedy continuation of `prompt` (as a chat turn by default), decoded without special tokens."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = next(model.parameters()).device
    ids = chat_ids(tok, prompt) if chat else tok(prompt, return_tensors="pt")["input_ids"]
    ids = ids.to(device)
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def sharp_tiny_llama(*, vocab_size: int, hidden_size: int, num_hidden_layers: int, head_dim: int, std: float,
                     seed: int = 0, num_attention_heads: int = 4, num_key_value_heads: int = 2,
                     max_position_embeddings: int = 128, **config):
    """A random tiny Llama (transformers) with every weight drawn from N(0, std²) after seeding with `seed`.

    A large std makes the logits sharp, so a wrong mask, RoPE or shifted target changes the argmax and the loss a lot
    (at the default std-0.02 init, attention is nearly uniform and such bugs hide). FFN width is 2 × hidden_size."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                      num_key_value_heads=num_key_value_heads, head_dim=head_dim,
                      max_position_embeddings=max_position_embeddings, **config)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=std)
    return model
