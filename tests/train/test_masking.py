import torch

from crammer.train.config import MaskingConfig
from crammer.train.masking import MLMCollator

SPECIAL = {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}


def make(vocab=1000, **kw):
    return MLMCollator(MaskingConfig(**kw), vocab, SPECIAL)


def test_fixed_count_of_ordinary_positions_per_row():
    tokens = torch.randint(5, 1000, (16, 128))
    tokens[:, 0], tokens[:, 60] = 2, 3  # [CLS] and a document boundary
    batch = make()(tokens, torch.Generator().manual_seed(0))
    assert batch.masked_positions.shape == (16, 32)
    assert batch.attention_mask is None
    for row in range(16):
        pos = batch.masked_positions[row]
        assert len(set(pos.tolist())) == 32
        assert 0 not in pos and 60 not in pos  # specials are never masked
        assert torch.equal(batch.labels[row, pos], tokens[row, pos])
        others = torch.ones(128, dtype=torch.bool)
        others[pos] = False
        assert (batch.labels[row, others] == -100).all()
        assert torch.equal(batch.input_ids[row, others], tokens[row, others])


def test_80_10_10_corruption_and_random_tokens_are_ordinary():
    tokens = torch.randint(5, 1000, (256, 128))
    batch = make()(tokens, torch.Generator().manual_seed(1))
    pos = batch.masked_positions
    new, old = batch.input_ids.gather(1, pos), tokens.gather(1, pos)
    masked = (new == 4).float().mean().item()
    kept = (new == old).float().mean().item()
    random = ((new != 4) & (new != old)).float().mean().item()
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(random - 0.1 + 0.0001) < 0.01
    assert (new[(new != 4) & (new != old)] >= 5).all()


def test_padded_rows_fill_spare_slots_with_ignored_positions():
    tokens = torch.randint(5, 1000, (2, 40))
    tokens[0, 10:] = 0  # only 10 real tokens, M = 10 at 25%
    tokens[1, 4:] = 0  # only 4 real tokens
    batch = make()(tokens, torch.Generator().manual_seed(2))
    assert batch.masked_positions.shape == (2, 10)
    assert (batch.labels[1] != -100).sum() == 4
    assert (batch.input_ids[tokens == 0] == 0).all()  # padding stays padding
    assert torch.equal(batch.attention_mask, (tokens != 0).long())


def test_same_generator_seed_same_masks():
    tokens = torch.randint(5, 1000, (4, 64))
    a = make(fraction=0.15)(tokens, torch.Generator().manual_seed(7))
    b = make(fraction=0.15)(tokens, torch.Generator().manual_seed(7))
    assert a.masked_positions.shape == (4, 10)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.masked_positions, b.masked_positions)


def test_a_share_of_a_batch_is_masked_as_the_whole_batch_masks_it():
    """What lets a DDP rank read and mask only its rows and still match the single-process run."""
    tokens = torch.randint(5, 1000, (6, 64))
    whole = make()(tokens, torch.Generator().manual_seed(3))
    shares = [make()(tokens[i : i + 2], torch.Generator().manual_seed(3), first_row=i, batch_rows=6) for i in (0, 2, 4)]
    for field in ("input_ids", "labels", "masked_positions"):
        assert torch.equal(getattr(whole, field), torch.cat([getattr(s, field) for s in shares]))
