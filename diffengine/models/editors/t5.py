"""T5-XXL's token sequence, which the transformers of SD3 and Flux read."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from transformers import T5EncoderModel, T5TokenizerFast

from diffengine.errors import ConfigError
from diffengine.models.editors.base import TextEncoder, token_ids


def t5_encoder(name: str) -> TextEncoder:
    """T5-XXL under the attribute ``name`` (SD3's ``text_encoder_3``,
    Flux's ``text_encoder_2``); it takes no adapter (diffusers' loaders
    read none)."""
    return TextEncoder(name, T5EncoderModel, T5TokenizerFast, lora=False)


class T5Conditioning:
    """What a family whose prompts go through T5 adds to
    ``LatentDiffusionModel``: T5's token sequence, ``max_sequence_length``
    tokens long in training and sampling alike.

    Attributes:
        t5 (TextEncoder): The family's T5 (:func:`t5_encoder`).
        max_sequence_length (int): T5 tokens per prompt, set by the
            family's ``__init__`` (:meth:`check_max_sequence_length`).
    """

    t5: ClassVar[TextEncoder]
    max_sequence_length: int

    @staticmethod
    def check_max_sequence_length(max_sequence_length: int | None) -> None:
        """Refuse a length below one token (None: the family's)."""
        if max_sequence_length is not None and max_sequence_length < 1:
            raise ConfigError(
                f"max_sequence_length={max_sequence_length} must be >= 1.")

    def t5_embeddings(self, text: list[str]) -> torch.Tensor:
        """T5's last hidden states of ``text``, B × L × D_T5."""
        encoder = getattr(self, self.t5.name)
        return encoder(token_ids(getattr(self, self.t5.tokenizer), text,
                                 encoder, self.max_sequence_length))[0]

    def pipeline_call_options(self) -> dict[str, Any]:
        """T5's length, so that samples are conditioned as training is."""
        return {"max_sequence_length": self.max_sequence_length}
