"""Caption transforms: dropout and tag shuffling, as kohya's scripts have.

They touch only ``text``, so they run on cached latents too, and they run
before the text-embedding cache, which then holds each distinct caption
once (the empty one included).
"""
from __future__ import annotations

from typing import ClassVar

from mmcv.transforms import BaseTransform

from diffengine.datasets.transforms.processing import TEXT, sample_randomness
from diffengine.errors import ConfigError
from diffengine.registry import TRANSFORMS


@TRANSFORMS.register_module()
class RandomTextDrop(BaseTransform):
    """Replace the caption with the empty one with probability ``p``.

    Caption dropout (kohya's ``caption_dropout_rate``) trains the
    unconditional prediction that classifier-free guidance subtracts.

    Args:
        p (float): The dropout probability. Defaults to 0.1.
    """

    latent_cache: ClassVar[str] = TEXT

    def __init__(self, p: float = 0.1) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(
                f"RandomTextDrop p={p} is not a probability in [0, 1].")
        self.p = p

    def transform(self, results: dict) -> dict:
        if sample_randomness(results).rand().item() < self.p:
            results["text"] = ""
        return results


@TRANSFORMS.register_module()
class ShuffleCaptionTags(BaseTransform):
    """Shuffle a tag caption's tags, keeping the first ``keep_tokens``.

    kohya's ``shuffle_caption`` with ``keep_tokens``: ``"sks dog, red
    collar, grass"`` may become ``"sks dog, grass, red collar"``, so the
    model does not learn the tags' order. Tags are split at ``separator``
    and stripped, then joined with ``separator`` and a space.

    Args:
        keep_tokens (int): Leading tags left in place (the trigger word).
            Defaults to 1.
        separator (str): What separates tags. Defaults to ",".
    """

    latent_cache: ClassVar[str] = TEXT

    def __init__(self, keep_tokens: int = 1, separator: str = ",") -> None:
        if keep_tokens < 0:
            raise ConfigError(
                f"ShuffleCaptionTags keep_tokens={keep_tokens} must be >= 0.")
        if not separator.strip():
            raise ConfigError(
                f"ShuffleCaptionTags separator={separator!r} must hold a "
                "visible character, e.g. ','.")
        self.keep_tokens = keep_tokens
        self.separator = separator

    def transform(self, results: dict) -> dict:
        tags = [t.strip() for t in results["text"].split(self.separator)]
        kept, shuffled = tags[:self.keep_tokens], tags[self.keep_tokens:]
        order = sample_randomness(results).randperm(len(shuffled))[0]
        shuffled = [shuffled[i] for i in order.tolist()]
        results["text"] = f"{self.separator.strip()} ".join(kept + shuffled)
        return results
