"""Output-for-output checks of an export against the crammer model it came from, on real tokenized text."""

from __future__ import annotations

import torch

# Plain English prose (written for this check): tokenized by the model's own tokenizer, so the ids are the kind
# a model meets, with [CLS]/[SEP] where its tokenizer puts them.
SAMPLE_TEXT = (
    "The river town grew up around a wooden bridge that merchants crossed on their way to the coast. In the "
    "eighteenth century a stone bridge replaced it, and mills were built along both banks to grind grain and, later, "
    "to spin cotton. When the railway arrived in 1847 the station was placed on the northern side, which drew new "
    "houses, a market hall and two churches up the hill. The mills closed one after another in the twentieth century; "
    "some were pulled down, others became flats, a museum of local history and a school of music. Today about twelve "
    "thousand people live there. Most of them work in the nearby city, an hour away by train, but the weekly market "
    "still fills the square every Saturday morning, as it has since the charter of 1302. Visitors come for the walks "
    "along the old towpath, for the bird reserve on the flooded gravel pits to the east, and for the festival of "
    "folk music held each summer in the grounds of the ruined abbey. The abbey itself was founded by monks from "
    "France, who drained the marshes, planted orchards and kept the first written records of the valley's weather."
)


def sample_batches(tokenizer, lengths: list[int]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, input_ids, attention_mask) int64 batches of 2 rows: at each length a full batch, and one whose second
    row is half as long and padded. Each row is [CLS] + a window of the sample text + [SEP]."""
    body = tokenizer(SAMPLE_TEXT, add_special_tokens=False, verbose=False)["input_ids"]  # longer than its max: fine
    longest = max(lengths)
    body = (body * (longest // len(body) + 2))[: longest + 8]  # repeat the text to fill the longest length
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id

    def row(length: int, start: int) -> list[int]:
        return [cls, *body[start:start + length - 2], sep]

    batches = []
    for length in lengths:
        ids = torch.tensor([row(length, 0), row(length, 3)])
        batches.append((f"length {length}", ids, torch.ones_like(ids)))
        short = max(length // 2, 3)
        padded = torch.full((2, length), pad)
        padded[0], padded[1, :short] = ids[0], torch.tensor(row(short, 5))
        mask = (torch.arange(length) < torch.tensor([[length], [short]])).long()
        batches.append((f"length {length} padded", padded, mask))
    return batches


def check_lengths(max_length: int) -> list[int]:
    """8, 128 and the model's maximum, those the model takes."""
    return sorted({n for n in (8, 128, max_length) if n <= max_length})


def max_difference(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, relative: bool = False) -> float:
    """The largest absolute difference at real (unpadded) tokens; `relative`: divided by the largest of `a`'s values
    there when that is above 1 (fp32 agrees to ~1e-6 of the values' size, and a trained model's logits reach tens,
    where 1e-5 absolute is below float32's resolution)."""
    keep = mask.bool()
    a, b = a.float()[keep], b.float()[keep]
    scale = a.abs().max().clamp(min=1.0) if relative else 1.0
    return ((a - b).abs().max() / scale).item()
