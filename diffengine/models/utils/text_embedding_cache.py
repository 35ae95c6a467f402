"""Text-encoder outputs kept per caption, for frozen text encoders."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class TextEmbeddingCache:
    """Encode each distinct caption once and reuse its embedding.

    Only valid while the text encoders do not train: their output for a
    caption is then the same at every step. Captions of a batch that are not
    cached yet are encoded together, without gradient; the embeddings stay
    on the encoder's device, in its dtype (77 × 768 values a caption for
    SD 1.x, 118 KB in fp16).

    Args:
        encode (Callable[[list[str]], Tensor | tuple]): Captions → B × ...
            embeddings, or a tuple of such tensors (e.g. hidden states and a
            pooled embedding).
    """

    def __init__(self, encode: Callable[[list[str]], Any]) -> None:
        self.encode = encode
        self.embeddings: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.embeddings)

    def __call__(self, text: list[str]) -> Any:
        """The embeddings of ``text`` (stacked as ``encode`` returns them),
        encoding the new captions."""
        missing = [t for t in dict.fromkeys(text) if t not in self.embeddings]
        if missing:
            with torch.no_grad():
                encoded = self.encode(missing)
            rows = (zip(*encoded, strict=True) if isinstance(encoded, tuple)
                    else encoded)
            self.embeddings.update(zip(missing, rows, strict=True))
        rows = [self.embeddings[t] for t in text]
        if isinstance(rows[0], tuple):
            return tuple(torch.stack(column) for column in zip(*rows,
                                                                strict=True))
        return torch.stack(rows)
