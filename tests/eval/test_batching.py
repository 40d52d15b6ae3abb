"""Length bucketing and dynamic padding: every example once per epoch, little padding, multiples of 8."""

from __future__ import annotations

import torch

from crammer.eval.finetune import Encoded, bucketed_batches, collate, encode
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
    data = Encoded(input_ids=[[2, 5, 6, 3], [2, 7, 3], [2] + [9] * 9 + [3]],
                   token_type_ids=[[0, 0, 1, 1], [0, 0, 0], [0] * 11], labels=[1, 0, 1])
    batch = collate(data, [0, 1], pad_id=0, pad_multiple=8, regression=False)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][1].tolist() == [2, 7, 3, 0, 0, 0, 0, 0]
    assert batch["attention_mask"].sum(1).tolist() == [4, 3]
    assert batch["token_type_ids"][0].tolist()[:4] == [0, 0, 1, 1]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [1, 0]
    wide = collate(data, [2, 1], pad_id=0, pad_multiple=8, regression=True)
    assert wide["input_ids"].shape == (2, 16) and wide["labels"].dtype == torch.float32
    odd = collate(data, [2], pad_id=0, pad_multiple=1, regression=False)
    assert odd["input_ids"].shape == (1, 11)
    no_types = Encoded(data.input_ids, None, data.labels)
    assert "token_type_ids" not in collate(no_types, [0], pad_id=0, pad_multiple=8, regression=False)
