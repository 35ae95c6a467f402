"""Dependency messages that a diffengine user can do nothing about, dropped
where they arise: each by its logger and the words of its message, so that
every other message of the same logger still shows."""
from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator

# transformers, when diffusers' pipelines import its image processors
# without torchvision (which diffengine does not need): two lines before
# anything else, at every command.
NO_TORCHVISION = ("transformers.utils.import_utils",
                  "requires torchvision (not installed); falling back")
# diffusers, when a step folder holds no text-encoder LoRA (the usual case:
# only the UNet trained).
NO_TEXT_ENCODER_LORA = ("diffusers.loaders.lora_base",
                        "No LoRA keys associated to")
# huggingface_hub, when diffusers downloads a model's config with the
# deprecated local_dir_use_symlinks: a warning at every load of a hub id.
HUB_SYMLINKS = (r"huggingface_hub\.utils\._validators",
                "The `local_dir_use_symlinks` argument is deprecated")


class DropMessage(logging.Filter):
    """A logging filter that drops the records whose message contains
    ``words``.

    Args:
        words (str): Part of the message to drop.
    """

    def __init__(self, words: str) -> None:
        super().__init__()
        self.words = words

    def filter(self, record: logging.LogRecord) -> bool:
        return self.words not in record.getMessage()


def drop_message(logger: str, words: str) -> DropMessage:
    """Drop the messages of ``logger`` that contain ``words``, from now on.

    Dependencies log through ``logging.getLogger(name)``; a filter added
    before they are imported applies to them once they are.
    """
    message_filter = DropMessage(words)
    logging.getLogger(logger).addFilter(message_filter)
    return message_filter


@contextlib.contextmanager
def without_message(logger: str, words: str) -> Iterator[None]:
    """Drop the messages of ``logger`` that contain ``words`` inside the
    block only."""
    message_filter = drop_message(logger, words)
    try:
        yield
    finally:
        logging.getLogger(logger).removeFilter(message_filter)


def drop_warning(module: str, words: str) -> None:
    """Drop the Python warnings that ``module`` (a regular expression of
    the module a warning is attributed to) issues with a message starting
    with ``words``, from now on."""
    warnings.filterwarnings("ignore", message=re.escape(words), module=module)
