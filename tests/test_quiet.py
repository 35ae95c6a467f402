"""Dependency messages dropped by their source and words, and only those."""
import logging
import subprocess
import sys

from diffengine.quiet import HUB_SYMLINKS, NO_TEXT_ENCODER_LORA, without_message


def shown_warnings(module: str, message: str) -> str:
    """What a fresh Python that imported diffengine prints when ``module``
    issues ``message`` (pytest's own warning filters left out)."""
    code = ("import warnings, diffengine\n"
            f"warnings.warn_explicit({message!r}, UserWarning, 'x.py', 1, "
            f"module={module!r})")
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, check=True).stderr


def test_the_hub_symlinks_warning_is_dropped_and_no_other():
    words = HUB_SYMLINKS[1]
    hub = "huggingface_hub.utils._validators"
    assert shown_warnings(hub, words + " in `hf_hub_download`.") == ""
    assert "another warning" in shown_warnings(hub, "another warning")
    assert words in shown_warnings("mymodule", words)


def test_a_logger_message_is_dropped_inside_the_block_only(caplog):
    name, words = NO_TEXT_ENCODER_LORA
    logger = logging.getLogger(name)
    with without_message(name, words):
        logger.warning(f"{words} CLIPTextModel found")
        logger.warning("something else")
    logger.warning(f"{words} CLIPTextModel found")
    assert [r.getMessage() for r in caplog.records] == [
        "something else", f"{words} CLIPTextModel found"]
