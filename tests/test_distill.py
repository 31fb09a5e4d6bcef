"""utils.distill: the KD losses against torch's kl_div, the T² gradient scale, the top-k cache, the student."""

import pytest
import torch
import torch.nn.functional as F

from utils import distill
from utils.model import sharp_tiny_llama


def _logits(seed: int, shape=(3, 5, 40), scale: float = 3.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("t", [1.0, 2.0, 0.5])
def test_forward_and_reverse_kl_match_kl_div(t):
    s, te = _logits(0), _logits(1)
    lq, lp = F.log_softmax(s / t, -1).reshape(-1, 40), F.log_softmax(te / t, -1).reshape(-1, 40)
    fwd = F.kl_div(lq, lp, log_target=True, reduction="batchmean") * t * t        # KL(p‖q)
    rev = F.kl_div(lp, lq, log_target=True, reduction="batchmean") * t * t        # KL(q‖p)
    torch.testing.assert_close(distill.forward_kl(s, te, t), fwd)
    torch.testing.assert_close(distill.reverse_kl(s, te, t), rev)
    assert not torch.allclose(fwd, rev)                                            # the test can tell them apart


def test_t_squared_keeps_the_gradient_scale():
    # Hinton et al.: without T², the gradient shrinks as 1/T²; with it, it stays of the same order across T.
    s0, te = _logits(2, scale=1.0), _logits(3, scale=1.0)
    norms = {}
    for t in (1.0, 4.0, 8.0):
        s = s0.clone().requires_grad_(True)
        distill.forward_kl(s, te, t).backward()
        norms[t] = float(s.grad.norm())          # d KL / d s ≈ (s − t)/(V·T²) at large T: T² cancels it
    assert 0.8 < norms[8.0] / norms[4.0] < 1.25 and 0.3 < norms[8.0] / norms[1.0] < 3
    s = s0.clone().requires_grad_(True)
    (distill.forward_kl(s, te, 8.0) / 64).backward()                              # without T²: 64× smaller
    assert float(s.grad.norm()) < norms[8.0] / 30


def test_topk_with_full_k_is_the_full_kl_and_smaller_k_approximates_it():
    s, te = _logits(4), _logits(5)
    full = distill.forward_kl(s, te, 2.0)
    top = distill.topk_logits(te, 40)
    torch.testing.assert_close(distill.forward_kl_topk(s, top, 2.0), full, rtol=2e-3, atol=2e-3)  # float16 values
    torch.testing.assert_close(distill.reverse_kl_topk(s, top, 2.0), distill.reverse_kl(s, te, 2.0),
                               rtol=2e-3, atol=2e-3)
    # with a small k the student pays for its mass outside the teacher's top k (it is not renormalised away)
    top8 = distill.topk_logits(te, 8)
    inside = s.clone().scatter_(-1, top8.indices.long(), 30.0)                      # all mass on the top 8
    assert float(distill.reverse_kl_topk(s, top8)) > float(distill.reverse_kl_topk(inside, top8)) + 1.0
    lp = distill.topk_log_probs(distill.topk_logits(te, 8), 1.0)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(3, 5))                # renormalised over the top k
    assert distill.topk_logits(te, 8).indices.dtype == torch.int32


def test_bad_input_is_refused():
    s, te = _logits(0), _logits(1)
    for t in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            distill.forward_kl(s, te, t)
    with pytest.raises(ValueError, match="vocabularies differ"):
        distill.forward_kl(s, _logits(1, shape=(3, 5, 41)))
    with pytest.raises(ValueError, match="vocabularies differ"):
        distill.reverse_kl(s, _logits(1, shape=(3, 5, 39)))
    for k in (0, 41, 2.5):
        with pytest.raises(ValueError, match="k must be"):
            distill.topk_logits(te, k)


def _tiny(seed=0, layers=4):
    return sharp_tiny_llama(vocab_size=53, hidden_size=32, num_hidden_layers=layers, head_dim=8, std=0.3, seed=seed)


def test_teacher_cache_round_trips_and_is_keyed(tmp_path, capsys):
    teacher = _tiny()
    ids = torch.randint(0, 53, (5, 12), generator=torch.Generator().manual_seed(0))
    top, info = distill.cached_teacher_topk(teacher, ids, 7, tmp_path, batch_size=2)
    assert not info["hit"] and info["path"].is_file() and top.values.shape == (5, 12, 7)
    with torch.no_grad():
        want = distill.topk_logits(teacher(ids).logits, 7)
    assert torch.equal(top.indices, want.indices) and torch.equal(top.values, want.values)
    again, info2 = distill.cached_teacher_topk(teacher, ids, 7, tmp_path)
    assert info2["hit"] and torch.equal(again.values, top.values) and torch.equal(again.indices, top.indices)
    # another teacher, other tokens or another k: a different file, never the old one
    other, info3 = distill.cached_teacher_topk(_tiny(seed=1), ids, 7, tmp_path)
    assert not info3["hit"] and info3["path"] != info["path"] and not torch.equal(other.values, top.values)
    _, info4 = distill.cached_teacher_topk(teacher, ids[:, :11], 7, tmp_path)
    _, info5 = distill.cached_teacher_topk(teacher, ids, 6, tmp_path)
    assert not info4["hit"] and not info5["hit"]
    # a file that does not hold what its name says (copied over) is refused and recomputed
    info["path"].write_bytes(info3["path"].read_bytes())
    fixed, info6 = distill.cached_teacher_topk(teacher, ids, 7, tmp_path)
    assert not info6["hit"] and torch.equal(fixed.values, top.values)
    assert "recomputing" in capsys.readouterr().out
    info["path"].write_bytes(b"not a torch file")
    _, info7 = distill.cached_teacher_topk(teacher, ids, 7, tmp_path)
    assert not info7["hit"]


def test_layer_dropped_student_equals_the_teacher_on_its_kept_blocks():
    teacher = _tiny(layers=5)
    keep = [0, 2, 4]
    student = distill.layer_dropped_student(teacher, keep)
    assert student.config.num_hidden_layers == 3 and teacher.config.num_hidden_layers == 5
    ids = torch.randint(0, 53, (2, 10), generator=torch.Generator().manual_seed(1))
    # the teacher run through only the kept blocks (skip the others) gives the student's logits
    layers = teacher.model.layers
    saved = list(layers)
    try:
        teacher.model.layers = torch.nn.ModuleList([saved[i] for i in keep])
        for j, layer in enumerate(teacher.model.layers):
            layer.self_attn.layer_idx = j
        teacher.config.num_hidden_layers = 3
        with torch.no_grad():
            want = teacher(ids).logits
    finally:
        teacher.model.layers = torch.nn.ModuleList(saved)
        for j, layer in enumerate(saved):
            layer.self_attn.layer_idx = j
        teacher.config.num_hidden_layers = 5
    with torch.no_grad():
        got = student(ids).logits
        full = teacher(ids).logits
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, full, atol=1e-3)                      # dropping blocks does change the model
    assert student.model.layers[0].self_attn.q_proj.weight.data_ptr() != \
        teacher.model.layers[0].self_attn.q_proj.weight.data_ptr()        # a copy: training it leaves the teacher alone
    with pytest.raises(ValueError, match="block indices"):
        distill.layer_dropped_student(teacher, [0, 5])
    assert distill.parameter_count(student) < distill.parameter_count(teacher)


def test_expected_calibration_error():
    # a perfectly calibrated toy: confidence 0.75 and 3 of 4 right -> ECE 0; overconfident -> ECE > 0
    logits = torch.tensor([[torch.log(torch.tensor(3.0)), 0.0]] * 4)        # p = [0.75, 0.25]
    ece, bins = distill.expected_calibration_error(logits, torch.tensor([0, 0, 0, 1]), bins=10)
    assert ece == pytest.approx(0.0, abs=1e-6)
    ece, _ = distill.expected_calibration_error(logits, torch.tensor([0, 1, 1, 1]), bins=10)
    assert ece == pytest.approx(0.5, abs=1e-6)
    assert float(bins["count"].sum()) == 4
    with pytest.raises(ValueError):
        distill.expected_calibration_error(logits, torch.tensor([0, 0, 0, 1]), bins=0)


def test_keyed_cache_writes_atomically_and_refuses_a_mismatch(tmp_path, capsys):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(4)}

    blob, info = distill.keyed_cache(tmp_path, "thing", ["a", 1], compute)
    assert not info["hit"] and torch.equal(blob["x"], torch.arange(4)) and len(calls) == 1
    assert not list(tmp_path.glob("*.partial"))
    again, info2 = distill.keyed_cache(tmp_path, "thing", ["a", 1], compute)
    assert info2["hit"] and len(calls) == 1 and info2["fill_seconds"] == info["fill_seconds"]
    # another key: another file; a file failing the caller's check: recomputed, the reason printed
    _, info3 = distill.keyed_cache(tmp_path, "thing", ["a", 2], compute)
    assert not info3["hit"] and info3["path"] != info["path"]
    _, info4 = distill.keyed_cache(tmp_path, "thing", ["a", 1], compute, valid=lambda b: b["x"].numel() == 5)
    assert not info4["hit"] and len(calls) == 3 and "recomputing" in capsys.readouterr().out
