"""Character-level CLIP and T5 tokenizers, written offline: every caption
tokenizes without a real vocabulary."""
from __future__ import annotations

import json
import os
from collections.abc import Callable

from transformers import CLIPTokenizer, PreTrainedTokenizerBase, T5Tokenizer


def _byte_alphabet() -> list[str]:
    """The 256 printable characters CLIP's byte-level BPE maps bytes to."""
    printable = (list(range(ord("!"), ord("~") + 1))
                 + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_char_tokenizer(path: str, max_length: int = 77) -> CLIPTokenizer:
    """Write a character-level CLIP tokenizer (vocab.json, empty merges).

    Each byte is a token, with and without the end-of-word mark, so every
    caption tokenizes without a real BPE vocabulary.
    """
    os.makedirs(path, exist_ok=True)
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        os.path.join(path, "vocab.json"),
        os.path.join(path, "merges.txt"),
        model_max_length=max_length)
    tokenizer.save_pretrained(path)
    return tokenizer


def write_t5_tokenizer(path: str, max_length: int = 77) -> T5Tokenizer:
    """Write a character-level T5 tokenizer (a Unigram model built in
    memory) with T5's special tokens: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2.

    Every printable ASCII character is a piece, and so is ``▁`` (the word
    boundary), so every caption tokenizes without a real vocabulary.
    """
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(ord("!"), ord("~") + 1)]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0,
                            model_max_length=max_length)
    tokenizer.save_pretrained(path)
    return tokenizer


def part_name(kind: str, index: int) -> str:
    """diffusers' name of a pipeline's ``index``-th (from 0) part of
    ``kind``: ``tokenizer``, ``tokenizer_2``, ``tokenizer_3``."""
    return kind + (f"_{index + 1}" if index else "")


def write_tokenizers(
        path: str, *writers: Callable[[str], PreTrainedTokenizerBase]
) -> list[PreTrainedTokenizerBase]:
    """Write one tokenizer per writer into the pipeline folder ``path``,
    in diffusers' order: ``tokenizer``, ``tokenizer_2``, ``tokenizer_3``.

    Args:
        path (str): The pipeline folder.
        *writers (Callable): Each takes a folder and writes a tokenizer
            there, e.g. :func:`write_char_tokenizer`.

    Returns:
        list: The tokenizers, in the order of ``writers``.
    """
    return [writer(os.path.join(path, part_name("tokenizer", i)))
            for i, writer in enumerate(writers)]
