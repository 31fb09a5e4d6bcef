"""Knowledge distillation for notebook 08 and lab 08: the four objectives, a top-k teacher cache, a layer-dropped
student, and calibration (expected calibration error).

Conventions: logits are [..., V] (any leading shape, flattened to tokens); every loss is a mean over tokens.
p is the teacher's distribution, q the student's, both at temperature T.

- forward KL  KL(p‖q) · T²  (Hinton et al. 2015: the T² keeps the gradient's scale independent of T);
- reverse KL  KL(q‖p) · T²  (MiniLLM, arXiv:2306.08543: mode-seeking, q is pushed off where p is small);
- hard labels: next-token cross-entropy on the text; sequence-level KD is hard labels on text the teacher wrote.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


def check_temperature(t: float) -> float:
    t = float(t)
    if not t > 0 or t != t or t == float("inf"):
        raise ValueError(f"temperature T must be a finite number > 0, got {t!r} (T=1 is the model's own softmax)")
    return t


def check_vocab(student_logits: torch.Tensor, teacher_v: int) -> None:
    if student_logits.shape[-1] != teacher_v:
        raise ValueError(f"student and teacher vocabularies differ ({student_logits.shape[-1]:,} vs {teacher_v:,} "
                         "columns): distillation on logits needs the same tokenizer; align the vocabularies or "
                         "distil on text (sequence-level KD)")


def log_softmax_t(logits: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) over the last dimension, in float32."""
    return F.log_softmax(logits.float() / check_temperature(t), dim=-1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """T² · KL(p_T ‖ q_T), mean over tokens. Mass-covering: q pays wherever p has mass and q has little."""
    check_vocab(student_logits, teacher_logits.shape[-1])
    lq, lp = log_softmax_t(student_logits, t), log_softmax_t(teacher_logits, t)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    return kl.mean() * t * t


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    """T² · KL(q_T ‖ p_T), mean over tokens. Mode-seeking: q pays where it puts mass that p does not."""
    check_vocab(student_logits, teacher_logits.shape[-1])
    lq, lp = log_softmax_t(student_logits, t), log_softmax_t(teacher_logits, t)
    kl = (lq.exp() * (lq - lp)).sum(-1)
    return kl.mean() * t * t


def hard_label_loss(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy on the given targets (the text itself, or text the teacher generated)."""
    return F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]).float(), targets.reshape(-1))


# --------------------------------------------------------------------------- top-k teacher cache
@dataclass
class TopK:
    """The teacher's k largest logits per position (float16 values, int32 indices)."""

    values: torch.Tensor   # [..., k] float16 logits
    indices: torch.Tensor  # [..., k] int32 token ids

    @property
    def k(self) -> int:
        return self.values.shape[-1]

    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.indices.numel() * self.indices.element_size()


def topk_logits(teacher_logits: torch.Tensor, k: int) -> TopK:
    v = teacher_logits.shape[-1]
    if not isinstance(k, int) or k < 1 or k > v:
        raise ValueError(f"k must be an integer in 1..{v:,} (the vocabulary size), got {k!r}")
    val, idx = teacher_logits.float().topk(k, dim=-1)
    return TopK(val.half(), idx.int())


def topk_log_probs(top: TopK, t: float = 1.0) -> torch.Tensor:
    """The teacher's log-probabilities at temperature T, renormalised over its top k (they sum to one)."""
    return F.log_softmax(top.values.float() / check_temperature(t), dim=-1)


def forward_kl_topk(student_logits: torch.Tensor, top: TopK, t: float = 1.0,
                    vocab_size: int | None = None) -> torch.Tensor:
    """T² · KL(p̂_T ‖ q_T) with p̂ the teacher renormalised over its top k and q the student's full softmax."""
    if vocab_size is not None:
        check_vocab(student_logits, vocab_size)
    lq = log_softmax_t(student_logits, t).gather(-1, top.indices.long())
    lp = topk_log_probs(top, t)
    return (lp.exp() * (lp - lq)).sum(-1).mean() * t * t


def reverse_kl_topk(student_logits: torch.Tensor, top: TopK, t: float = 1.0, floor: float = -30.0) -> torch.Tensor:
    """T² · KL(q_T ‖ p̂_T): the student's full softmax q against the teacher renormalised over its top k.

    Outside the top k the teacher's probability is unknown; it is taken as exp(`floor`) (about 1e-13 by default),
    so the student pays for every bit of mass it puts there — the mode-seeking pressure of reverse KL. (Renormalising
    the student over the teacher's top k as well would leave its mass outside them untrained.) With k equal to the
    vocabulary this is the exact reverse KL.
    """
    lq = log_softmax_t(student_logits, t)
    lp = torch.full_like(lq, float(floor)).scatter_(-1, top.indices.long(), topk_log_probs(top, t))
    return (lq.exp() * (lq - lp)).sum(-1).mean() * t * t


def tensor_digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for x in tensors:
        x = x.detach().cpu().contiguous()
        h.update(str((tuple(x.shape), str(x.dtype))).encode())
        h.update(x.view(torch.uint8).numpy().tobytes() if x.dtype != torch.bool else x.numpy().tobytes())
    return h.hexdigest()


def model_digest(model) -> str:
    """sha256 over every parameter and buffer (names, shapes, values): a different teacher gets a different key."""
    h = hashlib.sha256()
    for name, x in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor_digest(x).encode())
    return h.hexdigest()


class StaleCacheError(RuntimeError):
    """A cached teacher file whose recorded key does not match the file's content."""


def keyed_cache(folder: Path, stem: str, key_parts, compute, valid=lambda blob: True,
                what: str = "teacher cache") -> tuple[dict, dict]:
    """A dict of tensors computed once and kept in `folder/{stem}-{key}.pt`, key = sha256 of `key_parts` (JSON).

    The file records its key; on load it must match and pass `valid(blob)`, otherwise (or if unreadable) it is
    recomputed and the reason printed — never reused. `compute()` returns the dict to save; the file is written to
    a `.partial` name first and then renamed, so an interrupted run never leaves a half-written cache. Returns
    (blob, info) with info = {"hit", "seconds", "fill_seconds", "path"}: "seconds" is this call's time,
    "fill_seconds" the time the run that filled the cache took.
    """
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:24]
    path = Path(folder) / f"{stem}-{key}.pt"
    t0 = time.perf_counter()
    if path.is_file():
        try:
            blob = torch.load(path, weights_only=True)
            if blob.get("key") != key or not valid(blob):
                raise StaleCacheError(f"{path.name} does not hold what it is named for")
            return blob, {"hit": True, "seconds": time.perf_counter() - t0, "fill_seconds": blob.get("seconds"),
                          "path": path}
        except Exception as e:  # noqa: BLE001 - any unreadable or mismatched file is recomputed, never reused
            print(f"{what}: {e if isinstance(e, StaleCacheError) else f'unreadable file {path.name}'}: recomputing")
    blob = dict(compute())
    seconds = time.perf_counter() - t0
    blob.update(key=key, seconds=seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    torch.save(blob, tmp)
    tmp.replace(path)
    return blob, {"hit": False, "seconds": seconds, "fill_seconds": seconds, "path": path}


def cached_teacher_topk(teacher, ids: torch.Tensor, k: int, folder: Path, batch_size: int = 8,
                        teacher_key: str | None = None, progress=None) -> tuple[TopK, dict]:
    """The teacher's top-k logits for every position of `ids` [n, L], computed once and cached in `folder`.

    The file name is keyed by the teacher's digest, the tokens' digest and k, so a different teacher, text or k
    never reuses a file; the file also records its key and is checked on load (a renamed or edited file is
    refused and recomputed). Returns (TopK [n, L, k], info) with info = {"hit", "seconds", "fill_seconds", "path",
    "bytes"}: "seconds" is this call's time, "fill_seconds" the time the run that filled the cache took.
    """
    if ids.dim() != 2:
        raise ValueError(f"ids must be [sequences, length], got shape {tuple(ids.shape)}")
    v = teacher.config.vocab_size
    if not isinstance(k, int) or k < 1 or k > v:
        raise ValueError(f"k must be an integer in 1..{v:,} (the vocabulary size), got {k!r}")
    tkey = teacher_key or model_digest(teacher)

    def compute() -> dict:
        vals, idxs = [], []
        starts = range(0, ids.shape[0], batch_size)
        with torch.inference_mode():
            for s in (progress(starts) if progress else starts):
                top = topk_logits(teacher(ids[s:s + batch_size]).logits, k)
                vals.append(top.values)
                idxs.append(top.indices)
        return {"values": torch.cat(vals), "indices": torch.cat(idxs)}

    blob, info = keyed_cache(folder, f"teacher-top{k}", [tkey, tensor_digest(ids), k], compute,
                             valid=lambda b: tuple(b["values"].shape[:2]) == tuple(ids.shape))
    top = TopK(blob["values"], blob["indices"])
    return top, info | {"bytes": top.nbytes()}


# --------------------------------------------------------------------------- students
def layer_dropped_student(teacher, keep: list[int]):
    """A copy of the teacher with only the blocks `keep` (DistilBERT's recipe: initialise from kept layers).

    Embeddings, final norm and the (tied) head are copied; the cache slots are renumbered.
    """
    from .pruning import remove_blocks

    n = teacher.config.num_hidden_layers
    keep = sorted(set(int(i) for i in keep))
    if not keep or keep[0] < 0 or keep[-1] >= n:
        raise ValueError(f"keep must list block indices in 0..{n - 1}, got {keep}")
    student = copy.deepcopy(teacher)
    remove_blocks(student, [i for i in range(n) if i not in keep])
    return student


def parameter_count(model, trainable_only: bool = False) -> int:
    """Parameters counted once even when tied (embedding == head)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


# --------------------------------------------------------------------------- calibration
def expected_calibration_error(logits: torch.Tensor, targets: torch.Tensor, bins: int = 15) -> tuple[float, dict]:
    """ECE of the top-1 prediction with equal-width confidence bins (Guo et al. 2017, eq. 3).

    Returns (ece, {"confidence", "accuracy", "count"} per bin) for a reliability diagram.
    """
    if bins < 1:
        raise ValueError("bins must be ≥ 1")
    p = F.softmax(logits.reshape(-1, logits.shape[-1]).float(), dim=-1)
    conf, pred = p.max(-1)
    correct = (pred == targets.reshape(-1)).float()
    b = torch.clamp((conf * bins).long(), max=bins - 1)
    count = torch.bincount(b, minlength=bins).float()
    sum_conf = torch.zeros(bins).index_add_(0, b, conf)
    sum_acc = torch.zeros(bins).index_add_(0, b, correct)
    n = max(1, conf.numel())
    ece = float((sum_conf - sum_acc).abs().sum() / n)
    with torch.no_grad():
        mean_conf = torch.where(count > 0, sum_conf / count.clamp_min(1), torch.nan)
        mean_acc = torch.where(count > 0, sum_acc / count.clamp_min(1), torch.nan)
    return ece, {"confidence": mean_conf, "accuracy": mean_acc, "count": count}
