"""Text-encoder outputs kept per caption, for frozen text encoders."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from diffengine.errors import ConfigError, DataError

# The model option that frees the text encoders once every caption is cached.
DROP_OPTION = "drop_text_encoders_after_caching"
# The ``latent_cache`` role of a transform that touches only the caption
# (``datasets.transforms.processing.TEXT``; not imported: the datasets
# package imports the models for a type hint).
CAPTION_TRANSFORM = "text"


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
        # set by freeze(): the captions cached are all there will be
        self.frozen = False

    def __len__(self) -> int:
        return len(self.embeddings)

    def __call__(self, text: list[str]) -> Any:
        """The embeddings of ``text`` (stacked as ``encode`` returns them),
        encoding the new captions."""
        missing = [t for t in dict.fromkeys(text) if t not in self.embeddings]
        if missing and self.frozen:
            raise ConfigError(
                f"the caption {missing[0]!r} has no cached embedding, and "
                f"{DROP_OPTION}=True freed the text encoders: only the "
                "training set's own captions are cached; leave the option off "
                "to encode other captions (caption transforms, validation, "
                "samples).")
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

    def fill(self, captions: Iterable[str], batch_size: int = 8) -> int:
        """Encode the captions not cached yet, ``batch_size`` at a time;
        how many were encoded."""
        missing = [t for t in dict.fromkeys(captions)
                   if t not in self.embeddings]
        for start in range(0, len(missing), batch_size):
            self(missing[start:start + batch_size])
        return len(missing)

    def freeze(self) -> None:
        """Encode nothing more: a caption not cached is then an error (the
        text encoders are gone)."""
        self.frozen = True
        self.encode = None


def dataset_captions(dataset) -> list[str]:
    """Every caption a ``CaptionedImageDataset`` can give, each once: each
    row's caption (all of them where a row draws one from several), bad
    rows left out.

    Raises:
        ConfigError: If a transform of its pipeline makes captions while
            training (``RandomTextDrop``, ``ShuffleCaptionTags``), which
            nothing could encode once the text encoders are freed.
    """
    for transform in dataset.pipeline.transforms:
        if getattr(transform, "latent_cache", None) == CAPTION_TRANSFORM:
            raise ConfigError(
                f"{DROP_OPTION}=True with {type(transform).__name__} in the "
                "dataset pipeline: it makes new captions while training, "
                "which the freed text encoders could not encode; drop one of "
                "the two.")
    captions: dict[str, None] = {}
    for index in range(len(dataset)):
        if index in dataset.bad_rows:
            continue
        try:
            caption = dataset.caption_at(index)
        except DataError:
            continue  # the pre-flight scan reported it
        captions.update(dict.fromkeys(
            [caption] if isinstance(caption, str) else caption))
    return list(captions)
