"""Length bucketing and dynamic padding: every example once per epoch, little padding, multiples of 8."""

from __future__ import annotations

import numpy as np
import torch

from crammer.eval.batching import IGNORE, Encoded, bucketed_batches, collate, encode
from crammer.eval.tasks import load_task


def _padding_share(lengths, batches, multiple=8):
    padded = sum(-(-max(lengths[i] for i in b) // multiple) * multiple * len(b) for b in batches)
    return 1 - sum(lengths) / padded


def test_buckets_cover_each_example_once_and_cut_padding(glue_dir, tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    lengths = encode(tokenizer, load_task("rte", glue_dir).train, max_length=128).lengths
    bucketed = bucketed_batches(lengths, 16, 50, torch.Generator().manual_seed(0))
    plain = bucketed_batches(lengths, 16, 1, torch.Generator().manual_seed(0))  # window 1 = random batches
    for batches in (bucketed, plain):
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        assert sum(len(b) < 16 for b in batches) <= -(-len(lengths) // (16 * 50))  # one short batch per window
    assert _padding_share(lengths, bucketed) < 0.05 < 0.2 < _padding_share(lengths, plain)
    again = bucketed_batches(lengths, 16, 50, torch.Generator().manual_seed(0))
    other = bucketed_batches(lengths, 16, 50, torch.Generator().manual_seed(1))
    assert again == bucketed and other != bucketed


def test_collate_pads_to_a_multiple():
    ids = [[2, 5, 6, 3], [2, 7, 3], [2] + [9] * 9 + [3]]
    data = Encoded.of(ids, token_type_ids=[[0, 0, 1, 1], [0, 0, 0], [0] * 11], labels=[1, 0, 1])
    batch = collate(data, [0, 1], pad_id=0, pad_multiple=8)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][1].tolist() == [2, 7, 3, 0, 0, 0, 0, 0]
    assert batch["attention_mask"].sum(1).tolist() == [4, 3]
    assert batch["token_type_ids"][0].tolist()[:4] == [0, 0, 1, 1]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    scores = Encoded.of(ids, None, [0.5, 1.0, 4.25])
    wide = collate(scores, [2, 1], pad_id=0, pad_multiple=8)
    assert wide["input_ids"].shape == (2, 16) and wide["labels"].dtype == torch.float32
    assert wide["input_ids"][0].tolist()[:11] == ids[2] and wide["labels"].tolist() == [4.25, 1.0]
    assert "token_type_ids" not in wide
    odd = collate(data, [2], pad_id=0, pad_multiple=1)
    assert odd["input_ids"].shape == (1, 11)
    multi = Encoded.of(ids, None, np.array([[1, 0], [1, 1], [0, 0]], dtype=np.float32))
    assert collate(multi, [1, 2], 0, 1)["labels"].tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_collate_aligns_token_labels_and_pads_them_with_ignore():
    tags = Encoded.of([[2, 5, 3], [2, 7, 8, 9, 3]], None, [[IGNORE, 4, IGNORE], [IGNORE, 1, IGNORE, 2, IGNORE]])
    batch = collate(tags, [0, 1], pad_id=0, pad_multiple=1)
    assert batch["labels"].tolist() == [[IGNORE, 4, IGNORE, IGNORE, IGNORE], [IGNORE, 1, IGNORE, 2, IGNORE]]
    assert batch["labels"].dtype == torch.long and batch["attention_mask"].tolist()[0] == [1, 1, 1, 0, 0]


def test_words_are_aligned_to_their_first_piece(minilm):
    from transformers import AutoTokenizer

    from crammer.eval.spec import spec_for
    from crammer.eval.tasks import Split

    tokenizer = AutoTokenizer.from_pretrained(minilm)
    words = [["Kraftfahrzeughaftpflicht", "in", "Berlin"], ["Paris"]]
    split = Split(words, None, [[1, 0, 2], [2]])
    data = encode(tokenizer, split, max_length=64, spec=spec_for("token-classification", ("O", "B-X", "B-LOC")))
    first = tokenizer(words[0], is_split_into_words=True)
    pieces = [len(tokenizer.tokenize(w)) for w in words[0]]
    assert pieces[0] > 1  # a long word is several pieces: only the first carries the tag
    expected = [IGNORE, 1] + [IGNORE] * (pieces[0] - 1) + [0, 2, IGNORE]
    assert data.input_ids(0) == first["input_ids"]
    assert data.labels[data.starts[0]:data.starts[0] + data.lengths[0]].tolist() == expected
    assert data.targets == [[1, 0, 2], [2]]
