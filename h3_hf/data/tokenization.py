"""Tokenizers built locally with the `tokenizers` library (no download)."""

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def build_word_level_tokenizer(vocabulary: list[str], *, split_chars: bool = False, padding_side: str = "left",
                               special_tokens: dict | None = None) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over ``vocabulary`` (ids in the given order, special tokens appended).

    Text is split on whitespace (or into characters with ``split_chars=True``). A whitespace tokenizer decodes
    every token with the space that precedes it, as GPT-2's tokens carry theirs: ``decode([0, 4])`` is
    ``" 0 4"`` and ``decode([4])`` is ``" 4"``. That is what makes a continuation read correctly when it is
    appended to its prompt, as the text-generation pipeline does (``"0 4 => 0"`` + ``" 4"``); strip the result
    for display. Encoding ignores the leading space, so ``tok(tok.decode(ids))["input_ids"] == ids``.

    Args:
        vocabulary: the plain tokens; their ids are 0..len-1 so that they match dataset ids.
        split_chars: tokenise text character by character (otherwise on whitespace); characters decode
            without separators.
        padding_side: "left" for generation (the default), "right" for classification.
        special_tokens: mapping like ``{"pad_token": "<pad>"}``; defaults to pad/bos/eos/unk. Tokens
            that are already in ``vocabulary`` keep their id.

    The result saves as an ordinary fast tokenizer (``tokenizer.json`` and ``tokenizer_config.json``, no code), so
    ``PreTrainedTokenizerFast.from_pretrained(folder)`` and ``AutoTokenizer.from_pretrained(folder)`` read it back.
    """
    special = dict(SPECIAL_TOKENS if special_tokens is None else special_tokens)
    vocab = {tok: i for i, tok in enumerate(vocabulary)}
    if len(vocab) != len(vocabulary):
        raise ValueError("vocabulary has duplicate tokens")
    for tok in special.values():
        vocab.setdefault(tok, len(vocab))
    unk = special.get("unk_token")
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    if split_chars:
        tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
        tok.decoder = decoders.Fuse()
    else:
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        # each token gets the space before it, then the pieces are joined
        tok.decoder = decoders.Sequence([decoders.Replace(Regex("^"), " "), decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, padding_side=padding_side, **special)
