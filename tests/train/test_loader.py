from collections import Counter

import numpy as np
import torch

from crammer.data import PackedCorpus
from crammer.train.config import MaskingConfig
from crammer.train.loader import BatchStream
from crammer.train.masking import MLMCollator


def stream(corpus, **kw):
    collator = MLMCollator(MaskingConfig(), corpus.vocab_size, corpus.special_tokens)
    return BatchStream(corpus, collator, kw.pop("micro_batch", 4), **kw)


def originals(batch):
    """Undo the masking: the token blocks the batch was made from."""
    return torch.where(batch.labels != -100, batch.labels, batch.input_ids)


def test_stored_order_and_resume_position(corpus):
    data = PackedCorpus(corpus)
    s = stream(data)
    first = [next(s) for _ in range(5)]
    s.close()
    assert s.position == 5
    assert torch.equal(originals(first[0]), torch.from_numpy(data.get_batch(np.arange(4))))
    assert torch.equal(originals(first[3]), torch.from_numpy(data.get_batch(np.arange(12, 16))))
    resumed = stream(data, position=3)
    again = next(resumed)
    resumed.close()
    assert torch.equal(again.input_ids, first[3].input_ids) and torch.equal(again.labels, first[3].labels)


def test_ddp_ranks_read_disjoint_halves_of_the_single_process_batch(corpus):
    data = PackedCorpus(corpus)
    single = stream(data, micro_batch=8, order="shuffled", seed=3)
    ranks = [stream(data, micro_batch=4, order="shuffled", seed=3, rank=r, world_size=2) for r in (0, 1)]
    for _ in range(3):
        whole, halves = next(single), [next(r) for r in ranks]
        assert torch.equal(whole.input_ids, torch.cat([h.input_ids for h in halves]))
        assert torch.equal(whole.masked_positions, torch.cat([h.masked_positions for h in halves]))
        assert torch.equal(whole.labels, torch.cat([h.labels for h in halves]))
    for s in (single, *ranks):
        s.close()


def test_shuffled_epoch_is_a_permutation_and_differs_from_stored(corpus):
    data = PackedCorpus(corpus)
    s = stream(data, micro_batch=64, order="shuffled", seed=1)
    epoch = torch.cat([originals(next(s)) for _ in range(len(data) // 64)])
    s.close()
    stored = torch.from_numpy(data.get_batch(np.arange(len(epoch))))
    assert not torch.equal(epoch, stored)
    everything = torch.from_numpy(data.get_batch(np.arange(len(data))))
    read, available = Counter(map(tuple, epoch.tolist())), Counter(map(tuple, everything.tolist()))
    assert not read - available  # every sequence read at most once per epoch
