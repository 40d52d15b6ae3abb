"""The WordPiece tokenizer: trained with `tokenizers`, saved so `AutoTokenizer.from_pretrained(DIR)` works.

The normalization lives *inside* the tokenizer (a `tokenizers.normalizers` pipeline), so every later
user of the saved tokenizer (pretraining, GLUE fine-tuning, the exported model) sees text exactly as
the corpus was prepared.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from crammer.errors import CrammerError
from crammer.progress import interactive, progress_bar

SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


def build_normalizer(lowercase: bool, strip_accents: bool, ascii_only: bool) -> normalizers.Normalizer:
    """The cramming recipe's normalization (NFD, lowercase, strip accents), or with `strip_accents=False`
    NFC, which keeps every accent and voicing mark composed with its letter (`ä`, `ド`: one character each,
    as they are written and as `decode` gives them back); optionally ASCII only."""
    steps: list[normalizers.Normalizer] = [normalizers.NFD() if strip_accents else normalizers.NFC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    if strip_accents:
        steps.append(normalizers.StripAccents())
    if ascii_only:
        steps.append(normalizers.Replace(Regex(r"[^\x00-\x7F]"), ""))
    return normalizers.Sequence(steps)


def normalizer_for(normalization: str, ascii_only: bool) -> normalizers.Normalizer:
    """`uncased`: the cramming recipe; `cased`: NFC only (`crammer.data.language` chooses for `auto`)."""
    uncased = normalization == "uncased"
    return build_normalizer(lowercase=uncased, strip_accents=uncased, ascii_only=ascii_only)


def train_wordpiece(
    corpus: Callable[[], Iterable[str]], vocab_size: int, normalizer: normalizers.Normalizer, show_progress: bool
) -> Tokenizer:
    """Train a BERT-style WordPiece tokenizer; a small corpus may give fewer than `vocab_size` tokens.

    The same corpus always gives the same tokenizer, which `tokenizers`' trainer alone does not
    (huggingface/tokenizers#1794): it numbers the word-continuing pieces (`##e`) in hash-map order as
    it meets them, and those ids break ties between equally frequent merges, so two runs can learn
    different pieces. Hence `corpus` is read twice: a quick pass for the characters, so that all those
    pieces can be handed to the trainer up front in code-point order, then the training pass.
    """
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    characters: set[str] = set()
    for text in progress_bar(corpus(), show=show_progress, desc="data: alphabet", unit=" docs", dynamic_ncols=True):
        characters.update(text)
    pieces = continuing_pieces(characters, normalizer, pre_tokenizer)
    specials = list(SPECIAL_TOKENS.values())
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials + pieces,
                                        continuing_subword_prefix="##",
                                        show_progress=show_progress and interactive())  # its bar is \r frames
    tok = _wordpiece(None, normalizer, pre_tokenizer)
    tok.train_from_iterator(corpus(), trainer=trainer)
    # The trainer registered the pieces as special tokens (unsplittable, dropped when decoding);
    # rebuild from its vocabulary so they are ordinary WordPiece entries again.
    tok = _wordpiece(tok.get_vocab(with_added_tokens=False), normalizer, pre_tokenizer)
    tok.add_special_tokens(specials)
    return tok


def continuing_pieces(characters: Iterable[str], normalizer: normalizers.Normalizer,
                      pre_tokenizer: pre_tokenizers.PreTokenizer) -> list[str]:
    """`##c` for each character c that can follow another inside a word once normalized."""
    normalized = set(normalizer.normalize_str("".join(set(characters))))  # our normalizers work per character
    inside = [c for c in normalized if len(pre_tokenizer.pre_tokenize_str(f"a{c}a")) == 1]
    return [f"##{c}" for c in sorted(inside)]


def _wordpiece(vocab: dict[str, int] | None, normalizer: normalizers.Normalizer,
               pre_tokenizer: pre_tokenizers.PreTokenizer) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(vocab, unk_token=SPECIAL_TOKENS["unk"], continuing_subword_prefix="##",
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _given_file(name_or_path: str) -> Path:
    """The file of a given tokenizer: the path itself, or the `tokenizer.json` in a folder."""
    given = Path(name_or_path).expanduser()
    return given / "tokenizer.json" if given.is_dir() else given


def load_tokenizer(name_or_path: str) -> Tokenizer:
    """A given tokenizer: a `tokenizer.json`, a folder holding one, or a hub name (needs network)."""
    given, path = Path(name_or_path).expanduser(), _given_file(name_or_path)
    if path.is_file():
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception on a malformed file
            raise CrammerError(f"{path}: not a tokenizers JSON file ({e})") from None
    elif given.exists() or name_or_path.endswith(".json") or name_or_path.startswith((".", "/", "~")):
        raise CrammerError(f"{path}: no such tokenizer file")
    else:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(name_or_path).backend_tokenizer
        except Exception as e:
            raise CrammerError(
                f"--tokenizer {name_or_path}: not a local path, and loading it from the hub failed "
                f"({type(e).__name__})"
            ) from None
    missing = [t for t in SPECIAL_TOKENS.values() if tok.token_to_id(t) is None]
    if missing:
        raise CrammerError(f"--tokenizer {name_or_path}: lacks the BERT special tokens {', '.join(missing)}")
    # A fine-tuning tokenizer.json often truncates (e.g. at 128) and pads: packing needs whole documents
    # and no [PAD] inside blocks.
    tok.no_truncation()
    tok.no_padding()
    return tok


def tokenizer_fingerprint(name_or_path: str | None) -> str | None:
    """The content hash of a given local tokenizer (its path alone would not notice an edit or a swap), the hub
    name of a remote one, None when the tokenizer is trained here (the recipe hash covers that)."""
    if not name_or_path:
        return None
    path = _given_file(name_or_path)
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else name_or_path


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    return {key: tok.token_to_id(token) for key, token in SPECIAL_TOKENS.items()}


def lowercases(tok: Tokenizer) -> bool:
    """Whether the tokenizer's own normalizer lowercases (recorded as `do_lower_case`)."""
    return tok.normalizer is not None and tok.normalizer.normalize_str("A") == "a"


def save_for_transformers(tok: Tokenizer, out: Path, seq_len: int) -> None:
    """Save with `[CLS] $A [SEP]` / `[CLS] $A [SEP] $B [SEP]` so fine-tuning gets proper CLS/SEP."""
    from transformers import PreTrainedTokenizerFast

    ids = special_token_ids(tok)
    tok = Tokenizer.from_str(tok.to_str())  # a copy: the caller's tokenizer keeps encoding without specials
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["cls"]), ("[SEP]", ids["sep"])],
    )
    tok.no_truncation()
    tok.no_padding()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=seq_len,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],  # BERT's segment ids too
        do_lower_case=lowercases(tok),
        **{f"{key}_token": token for key, token in SPECIAL_TOKENS.items()},
    )
    fast.save_pretrained(str(out))
