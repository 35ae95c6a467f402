"""Text-encoder outputs kept per caption, for a frozen text encoder."""
from __future__ import annotations

from collections.abc import Callable

import torch


class TextEmbeddingCache:
    """Encode each distinct caption once and reuse its embedding.

    Only valid while the text encoder does not train: its output for a
    caption is then the same at every step. Captions of a batch that are not
    cached yet are encoded together, without gradient; the embeddings stay
    on the encoder's device, in its dtype (77 × 768 values a caption for
    SD 1.x, 118 KB in fp16).

    Args:
        encode (Callable[[list[str]], Tensor]): Captions → B × L × D
            embeddings.
    """

    def __init__(self, encode: Callable[[list[str]], torch.Tensor]) -> None:
        self.encode = encode
        self.embeddings: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.embeddings)

    def __call__(self, text: list[str]) -> torch.Tensor:
        """The embeddings of ``text``, B × L × D, encoding the new captions."""
        missing = [t for t in dict.fromkeys(text) if t not in self.embeddings]
        if missing:
            with torch.no_grad():
                encoded = self.encode(missing)
            self.embeddings.update(zip(missing, encoded, strict=True))
        return torch.stack([self.embeddings[t] for t in text])
