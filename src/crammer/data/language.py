"""What the corpus's text is like, measured on a sample before anything is trained, and the two choices
that follow from it: the tokenizer's normalization and the compression filter's yardstick.

The cramming recipe was set for English: uncased (NFD, lowercase, strip accents) and "keep a document if
tokens < 0.3 x characters" (a token covers ~4 English characters). Both go wrong elsewhere: stripping
accents deletes Japanese voicing marks (`ド` -> `ト`) and the letters of most European languages
(`wäre` -> `ware`), and in scripts written without spaces between words (Chinese, Japanese, Thai, ...)
a token covers about one character, so nearly every document looked "badly compressed" and was dropped.

So, from the first `SAMPLE_CHARACTERS` characters (shared among the sources):
- **normalization** `auto`: `uncased` (the recipe, byte for byte) when nearly all letters are ASCII
  (`ASCII_LETTERS`: English and other languages written without accents), else `cased` (NFC only: case,
  accents and kana kept as written);
- **filter** (`filter_ratio` unset): for an English-like corpus the paper's rule with its 0.3 (so English is
  unchanged); for any other the *corpus rule*: a character of a script written with spaces (Latin, Cyrillic,
  digits, punctuation, ...) is allowed `filter_margin` (1.2) x the corpus's median tokens per such character,
  one of a script without spaces (`UNSPACED_RANGES`) `filter_margin_unspaced` (1.5) x the median for those,
  both measured on the sample with the trained tokenizer (`TokenRates`); a document is kept if its tokens stay
  under the sum of its characters' allowances. The margin is tighter where junk lives: base64, hex dumps and
  digit tables are ASCII, and in a Chinese or Japanese corpus the ASCII stretches (commands, options) already
  take ~0.4 tokens a character, so a digit table (~0.45-0.6) is only just above them. The paper's single
  multiple could not serve English too: its 0.3 sits at 1.13 x the median of the shared Wikipedia shard but
  at 1.29 x that of `wiki/sample.txt`, so no multiple of the median keeps both as they were.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from crammer.data.encode import CompressionFilter, document_pieces, unspaced_characters, unspaced_mask
from crammer.data.manifest import TextChoices

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SAMPLE_CHARACTERS = 1 << 21  # ~2 M characters: the scripts' shares and tokens per character to ~1%
ASCII_LETTERS = 0.995  # English Wikipedia: 99.86-99.90% of letters are ASCII; German manpages 98.6%, French 96.8%
PAPER_RATIO = 0.3  # the cramming paper's tokens-per-character limit, set for English
MIN_CLASS_CHARACTERS = 64  # a document's rate for a script class counts in the median from this many characters


def take_sample(per_source: Iterable[Iterator[str]], characters: int = SAMPLE_CHARACTERS) -> list[str]:
    """The first documents of each source, an equal share of `characters` from each (the last one cut)."""
    streams = list(per_source)
    quota = characters // max(len(streams), 1)
    sample = []
    for documents in streams:
        left = quota
        for text in documents:
            sample.append(text[:left])
            left -= len(sample[-1])
            if left <= 0:
                break
        getattr(documents, "close", lambda: None)()  # a generator holding an open file
    return sample


@dataclass(frozen=True)
class Scripts:
    """The letters and scripts of a sample."""

    documents: int
    characters: int
    non_ascii_letters: float  # share of the letters (str.isalpha) that are not ASCII
    unspaced: float  # share of the characters in scripts written without spaces

    @classmethod
    def of(cls, sample: list[str]) -> Scripts:
        letters = non_ascii = 0
        for text in sample:
            alpha = [c for c in text if c.isalpha()]
            letters += len(alpha)
            non_ascii += sum(1 for c in alpha if not c.isascii())
        characters = sum(map(len, sample))
        return cls(len(sample), characters, round(non_ascii / max(letters, 1), 6),
                   round(sum(map(unspaced_characters, sample)) / max(characters, 1), 6))

    @property
    def english_like(self) -> bool:
        """Nearly all letters ASCII: the text the uncased recipe and the paper's filter were made for."""
        return self.non_ascii_letters <= 1 - ASCII_LETTERS

    def describe(self) -> str:
        return (f"{1 - self.non_ascii_letters:.2%} of the letters ASCII, {self.unspaced:.1%} of the characters in "
                f"scripts without spaces, in a sample of {self.characters:,} characters ({self.documents} documents)")


def choose_normalization(scripts: Scripts) -> tuple[str, str]:
    """(`uncased` or `cased`, why) for `normalization=auto`."""
    if scripts.english_like:
        return "uncased", (f"auto: {scripts.describe()} (at least {ASCII_LETTERS:.1%}): English-like, the "
                           "cramming recipe (NFD, lowercase, strip accents)")
    return "cased", (f"auto: {scripts.describe()} (under {ASCII_LETTERS:.1%}): accents, kana and case carry "
                     "meaning, kept (NFC)")


@dataclass(frozen=True)
class TokenRates:
    """The corpus's median tokens per character of each script class, over the sample's documents."""

    spaced: float
    unspaced: float | None  # None: the sample has no text in scripts without spaces

    @classmethod
    def measure(cls, tok: Tokenizer, sample: list[str]) -> TokenRates:
        per_class: dict[bool, list[float]] = {False: [], True: []}
        totals = np.zeros((2, 2), dtype=np.int64)  # [spaced, unspaced] x [tokens, characters]
        for text in sample:
            counts = np.zeros((2, 2), dtype=np.int64)
            pieces = list(document_pieces(text))
            for piece, encoding in zip(pieces, tok.encode_batch(pieces, add_special_tokens=False)):
                mask = unspaced_mask(piece)
                starts = np.fromiter((a for a, _ in encoding.offsets), dtype=np.int64, count=len(encoding))
                unspaced_tokens = int(mask[np.minimum(starts, len(mask) - 1)].sum()) if len(mask) else 0
                counts += [[len(encoding) - unspaced_tokens, len(mask) - int(mask.sum())],
                           [unspaced_tokens, int(mask.sum())]]
            totals += counts
            for unspaced in (False, True):
                tokens, chars = counts[int(unspaced)]
                if chars >= MIN_CLASS_CHARACTERS:
                    per_class[unspaced].append(tokens / chars)

        def rate(unspaced: bool) -> float | None:
            if per_class[unspaced]:
                return round(statistics.median(per_class[unspaced]), 6)
            tokens, chars = totals[int(unspaced)]  # only short stretches of this class: pooled
            return round(tokens / chars, 6) if chars else None

        return cls(rate(False) or 0.0, rate(True))


def choose(normalization: str, given_tokenizer: str | None, filter_ratio: float | None,
           sample: Callable[[], list[str]]) -> TextChoices:
    """The normalization (the tokenizer is not trained yet) and how the filter will be chosen; `sample` is
    called only when an automatic choice needs it."""
    scripts = Scripts.of(sample()) if filter_ratio is None or (normalization == "auto" and not given_tokenizer) \
        else None
    if given_tokenizer:
        chosen, why = "given", f"the given tokenizer's own ({given_tokenizer})"
    elif normalization == "auto":
        chosen, why = choose_normalization(scripts)
    else:
        chosen, why = normalization, f"set: normalization={normalization}"
    if filter_ratio == 0:
        rule, rule_why = "none", "set: filter_ratio=0"
    elif filter_ratio is not None:
        rule, rule_why = "ratio", f"set: filter_ratio={filter_ratio:g}"
    elif scripts.english_like:
        rule, rule_why = "ratio", f"auto: English-like text: the cramming paper's rule, tokens < {PAPER_RATIO} x characters"
    else:
        rule, rule_why = "corpus", ("auto: not English-like: tokens < the corpus's median tokens per character "
                                    "of each script class x filter_margin (filter_margin_unspaced)")
    return TextChoices(normalization=chosen, normalization_reason=why, filter=rule, filter_reason=rule_why,
                       filter_spaced=(filter_ratio or PAPER_RATIO) if rule == "ratio" else None,
                       scripts=None if scripts is None else dataclasses.asdict(scripts))


def compression_filter(choices: TextChoices, margin: float, margin_unspaced: float, tok: Tokenizer,
                       sample: Callable[[], list[str]]) -> CompressionFilter | None:
    """The filter `choices` names, measuring the corpus's tokens per character with the trained tokenizer for
    the corpus rule (recorded in `choices`)."""
    if choices.filter == "none":
        return None
    if choices.filter == "corpus":
        rates = TokenRates.measure(tok, sample())
        choices.token_rates = dataclasses.asdict(rates)
        choices.filter_spaced = round(margin * rates.spaced, 6)
        choices.filter_unspaced = None if rates.unspaced is None else round(margin_unspaced * rates.unspaced, 6)
        choices.filter_reason += f": {choices.filter_spaced:g} tokens a character" + (
            "" if choices.filter_unspaced is None else f", {choices.filter_unspaced:g} in scripts without spaces")
    return CompressionFilter(choices.filter_spaced, choices.filter_unspaced)
