import pytest
import torch

from crammer.train.config import MaskingConfig
from crammer.train.masking import MaskingSchedule, MLMCollator

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


def test_a_linear_masking_schedule_decreases_in_buckets_of_a_sixteenth_of_the_row():
    cfg = MaskingConfig(fraction=0.4, schedule="linear", final_fraction=0.15)
    schedule = MaskingSchedule(cfg, tokens_per_batch=1000, budget_tokens=100_000)  # 100 global micro-batches
    assert schedule(0) == pytest.approx(0.4) and schedule(50) == pytest.approx(0.275)
    assert schedule(100) == schedule(250) == pytest.approx(0.15) and schedule.mean_fraction == pytest.approx(0.275)
    collator = MLMCollator(cfg, 500, SPECIAL)
    tokens = torch.randint(5, 500, (4, 128), generator=torch.Generator().manual_seed(0))
    counts = [collator(tokens, torch.Generator().manual_seed(k), fraction=schedule(k)).masked_positions.shape[1]
              for k in range(0, 101, 5)]
    assert counts[0] == 48 and counts[-1] == 16 and all(c % 8 == 0 for c in counts)  # round(51.2 / 8) * 8, ...
    assert counts == sorted(counts, reverse=True) and len(set(counts)) <= 6  # a handful of shapes to compile


def test_a_wall_clock_masking_schedule_follows_the_observed_progress_and_constant_ignores_it():
    schedule = MaskingSchedule(MaskingConfig(fraction=0.3, schedule="linear", final_fraction=0.1))
    assert schedule(10**6) == pytest.approx(0.3)  # no token budget: batch k says nothing, progress does
    schedule.observe(0.5)
    assert schedule(0) == pytest.approx(0.2)
    constant = MaskingSchedule(MaskingConfig(fraction=0.3))
    constant.observe(0.9)
    assert constant(5) == 0.3
    collator = MLMCollator(MaskingConfig(fraction=0.3), 500, SPECIAL)
    tokens = torch.randint(5, 500, (2, 128), generator=torch.Generator().manual_seed(0))
    assert collator(tokens, torch.Generator()).masked_positions.shape[1] == round(0.3 * 128)  # unbucketed as before


def test_a_static_shape_compile_builds_one_graph_per_masking_bucket_not_per_step():
    """`torch.compile(dynamic=False)` (what CUDA graphs need) compiles once per distinct masked count: the
    schedule's buckets bound that to a handful over a whole run, where an exact count would recompile every step
    (and hit dynamo's recompile limit). Dynamo's own frame counter with the eager backend: no inductor time."""
    from torch._dynamo.testing import CompileCounter

    from crammer.model import CrammedBertForMaskedLM, make_config

    torch._dynamo.reset()
    model = CrammedBertForMaskedLM(make_config("tiny", 500, ["num_hidden_layers=1"])).eval()
    counter = CompileCounter()
    compiled = torch.compile(model, backend=counter, dynamic=False)
    cfg = MaskingConfig(fraction=0.4, schedule="linear", final_fraction=0.15)
    schedule = MaskingSchedule(cfg, tokens_per_batch=512, budget_tokens=512 * 200)  # 200 steps
    collator = MLMCollator(cfg, 500, SPECIAL)
    tokens = torch.randint(5, 500, (4, 128), generator=torch.Generator().manual_seed(0))
    counts = set()
    try:
        with torch.no_grad():
            for k in range(0, 201, 4):
                batch = collator(tokens, torch.Generator().manual_seed(k), fraction=schedule(k))
                compiled(batch.input_ids, labels=batch.labels, masked_positions=batch.masked_positions).loss.item()
                counts.add(batch.masked_positions.shape[1])
    finally:
        torch._dynamo.reset()  # no compiled frames left behind for other tests, pass or fail
    assert 3 <= len(counts) <= 6 and counter.frame_count == len(counts)
