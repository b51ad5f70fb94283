"""A character-level tokenizer built in code (no download): ``tokenizers`` WordLevel + Fuse decoder.

Every character of the task alphabet plus ``':'`` is one token; ``[PAD]``, ``[BOS]``, ``[EOS]``, ``[UNK]`` are
special tokens with ids 0..3. It is wrapped in :class:`transformers.PreTrainedTokenizerFast`, so it behaves like
any Hugging Face tokenizer (``decode(..., skip_special_tokens=True)``, ``pad_token_id``, ``save_pretrained``).
The pad token is distinct from EOS (N+ implementation details, detail 3).
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .task import SEPARATOR

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


def build_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """Character-level tokenizer for ``alphabet`` + ``':'`` with pad/bos/eos/unk special tokens."""
    chars = sorted(set(alphabet) | {SEPARATOR})
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *chars])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tok = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side="right",
    )
    return tok


def encode_text(tok: PreTrainedTokenizerFast, text: str) -> list[int]:
    """Token ids of plain text (no special tokens added)."""
    ids: list[int] = tok.encode(text, add_special_tokens=False)
    return ids


def decode_reply(tok: PreTrainedTokenizerFast, ids: list[int]) -> str:
    """Reply text of response token ids: cut at the first EOS, special tokens removed."""
    eos = tok.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos)]
    return str(tok.decode(ids, skip_special_tokens=True))
