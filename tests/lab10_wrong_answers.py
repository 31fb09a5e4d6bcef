"""Typical wrong lab-10 answers shared by the grading tests (the mistakes tests/test_lab10_checks.py rejects)."""

TRAIN_TIES_TO_LARGEST = '''def train(text, vocab_size):
    words = {}
    for p in bpe.pretokenize(text):
        words[tuple(p.encode())] = words.get(tuple(p.encode()), 0) + 1
    merges = []
    while 256 + len(merges) < vocab_size:
        pairs = count_pairs(words)
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties to the largest pair
        words = {tuple(merge(list(w), best, 256 + len(merges))): f for w, f in words.items()}
        merges.append(best)
    return merges'''
"""Exercise 3: a BPE trainer that breaks count ties towards the largest pair (the lab asks for the smallest)."""

FLOPS_WITHOUT_HEAD = (
    "def flops_per_byte(vocab_size, bytes_per_tok, n_body, d_model):\n    return 2 * n_body / bytes_per_tok"
)
"""Exercise 7: FLOPs per byte that forget the output head."""
