"""The real SmolLM2 loads offline, scores real text sensibly and answers a trivial question."""

from __future__ import annotations

import json
import math

import pytest
import torch

from utils import assets, corpora, model


@pytest.fixture(scope="module")
def smol():
    return model.load_smollm2()


def test_loads_once_per_process(smol):
    assert model.load_smollm2() is smol
    m, tok = smol
    assert sum(p.numel() for p in m.parameters()) == 134_515_008
    assert tok.decode(tok("Hello world")["input_ids"]) .endswith("Hello world")


def test_perplexity_is_finite_and_sane(smol):
    m, tok = smol
    _, val = corpora.docs_split()
    ppl = model.perplexity(m, tok(val)["input_ids"], window=256, max_windows=4)
    assert math.isfinite(ppl) and 3 < ppl < 60, ppl
    # shuffled tokens are far less predictable than real text
    ids = torch.tensor(tok(val)["input_ids"][: 4 * 256])
    shuffled = ids[torch.randperm(ids.numel(), generator=torch.Generator().manual_seed(0))]
    assert model.perplexity(m, shuffled, window=256) > 10 * ppl


def test_answers_a_trivial_chat_prompt(smol):
    m, tok = smol
    assert "Paris" in model.generate_greedy(m, tok, "What is the capital of France?", max_new_tokens=16)


def test_bad_arguments_get_clear_errors(smol):
    m, tok = smol
    with pytest.raises(ValueError, match="dtype"):
        model.load_smollm2(dtype="int8")
    with pytest.raises(ValueError, match="full window"):
        model.perplexity(m, torch.arange(10), window=256)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate_greedy(m, tok, "hi", max_new_tokens=0)
    with pytest.raises(RuntimeError, match="no CUDA"):
        model.load_smollm2(device="cuda") if not torch.cuda.is_available() else (_ for _ in ()).throw(
            RuntimeError("no CUDA (skipped: a GPU is present)"))


def test_damaged_converted_copy_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path))
    folder = model.converted_dir()
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"not really weights")
    (folder / "manifest.json").write_text(json.dumps({"model.safetensors": "0" * 64}))
    with pytest.raises(model.ModelCacheError, match="delete the folder|Delete it"):
        model.prepare()


def test_missing_everything_says_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv(assets.ENV_VAR, str(tmp_path))
    with pytest.raises(assets.AssetMissingError, match="make assets"):
        model.prepare()
