"""What every diffengine command shares: its one way out and the parsing of
``--cfg-options``.

Every entry point (``tools/train.py``, ``tools/NAME.py``) ends through
:func:`run`: a mistake the user can fix (a :class:`DiffEngineError`) is one
line, ``diffengine: error: ...``, and status 1; an interrupted training is
its own line and 128 + the signal; anything else is a bug and keeps its
traceback. This module imports no torch, so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from mmengine.config import Config, DictAction

from diffengine.errors import ConfigError, DiffEngineError

# Status of a command stopped by Ctrl-C, as a shell reports it (128 + SIGINT).
INTERRUPTED = 130
# The weight precisions a tool writes: the names of diffengine.models.utils.
# dtypes.DTYPES, spelled out: importing them takes seconds, too long for
# --help (a test keeps them equal).
DTYPES = ("float32", "float16", "bfloat16")

Main = Callable[[list[str] | None], int | None]


def exit_status(main: Main, argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` and give the status the command exits with.

    Args:
        main (Callable): A tool's ``main``; it returns None or a status.
        argv (list[str], optional): Its arguments. Defaults to None
            (``sys.argv[1:]``).

    Returns:
        int: ``main``'s status (0 for None), or the error's status after
        printing its line to stderr.
    """
    try:
        return main(argv) or 0
    except DiffEngineError as err:
        print(err.line(), file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        # a second Ctrl-C, or one outside training: nothing to save
        print("diffengine: stopped by SIGINT", file=sys.stderr)
        return INTERRUPTED


def run(main: Main) -> NoReturn:
    """Exit the process with :func:`exit_status` of ``main``."""
    sys.exit(exit_status(main))


def tool_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """The parser of the tool ``prog``, described by the first line of its
    module docstring ``doc``."""
    return argparse.ArgumentParser(prog=prog,
                                   description=doc.splitlines()[0])


def add_choice(parser: argparse.ArgumentParser, flag: str,
               choices: tuple[str, ...], default: str, help: str) -> None:
    """Add the option ``flag``, one of ``choices``, to ``parser``; its help
    ends with the default."""
    parser.add_argument(flag, choices=choices, default=default,
                        help=f"{help} (default: {default})")


def add_lora_argument(parser: argparse.ArgumentParser,
                      files: str = "a LoRA .safetensors file") -> None:
    """Add the positional ``lora``: a step folder or, as ``files`` says,
    a file."""
    parser.add_argument(
        "lora", help=f"step folder (work_dirs/<config>/step<N>) or {files}")


def add_base_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--base``, the base model when not the one the step records."""
    parser.add_argument(
        "--base", help="hub id or diffusers folder of the base model "
        "(default: the one the step was trained on, from its metadata)")


def add_lora_scale_argument(parser: argparse.ArgumentParser,
                            help: str) -> None:
    """Add ``--scale`` (also ``--lora-scale``), the LoRA's strength, 1 as
    trained."""
    parser.add_argument("--scale", "--lora-scale", dest="lora_scale",
                        type=float, default=1.0, help=help)


def _split_top_level(text: str) -> list[str]:
    """``text`` cut at the commas outside brackets, as mmengine cuts it."""
    parts, depth, start = [], 0, 0
    for idx, char in enumerate(text):
        depth += (char in "([") - (char in ")]")
        if char == "," and depth == 0:
            parts.append(text[start:idx])
            start = idx + 1
    if start < len(text):
        parts.append(text[start:])
    return parts


class ConfigOptionsAction(DictAction):
    """mmengine's ``DictAction`` that keeps the spaces inside values.

    mmengine removes every space of a value, so that ``custom_hooks.0.prompt=
    [a photo of sks ring]`` became ``['aphotoofsksring']``. Here only the
    spaces around a value or a list element go; quotes around them still
    do too. A malformed option is a command-line error (status 2) rather
    than a traceback.
    """

    @staticmethod
    def _parse_iterable(val: str) -> Any:
        val = val.strip().strip("'\"")
        if val[:1] + val[-1:] in ("()", "[]"):
            is_tuple, val = val[0] == "(", val[1:-1]
        elif "," in val:
            is_tuple = False
        else:
            return DictAction._parse_int_float_bool(val)
        values = [ConfigOptionsAction._parse_iterable(part)
                  for part in _split_top_level(val)]
        return tuple(values) if is_tuple else values

    def __call__(self, parser: argparse.ArgumentParser,
                 namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        for option in values or ():
            key, equals, value = option.partition("=")
            if not key or not equals:
                parser.error(f"{option_string} {option!r}: expected "
                             "KEY=VALUE, e.g. train_dataloader.batch_size=2")
            if value.count("(") != value.count(")") or value.count(
                    "[") != value.count("]"):
                parser.error(f"{option_string} {option!r}: unbalanced "
                             "brackets")
        super().__call__(parser, namespace, values, option_string)


def add_cfg_options(parser: argparse.ArgumentParser, help: str) -> None:
    """Add ``--cfg-options KEY=VALUE ...`` to ``parser``.

    Args:
        parser (argparse.ArgumentParser): A tool's parser.
        help (str): Its help text.
    """
    parser.add_argument("--cfg-options", nargs="+",
                        action=ConfigOptionsAction, metavar="KEY=VALUE",
                        help=help)


def load_config(path: str, options: dict | None = None) -> Config:
    """The config file ``path`` with ``--cfg-options`` merged in.

    Raises:
        ConfigError: If the file is missing or not valid Python, or as
            :func:`merge_options`.
    """
    if not osp.isfile(path):
        raise ConfigError(
            f"config file {path!r} does not exist; give the path of a "
            "config, e.g. configs/stable_diffusion_lora/tiny_sd_lora_demo.py.")
    try:
        cfg = Config.fromfile(path)
    except SyntaxError as err:
        raise ConfigError(f"{path}, line {err.lineno}: {err.msg}") from err
    return merge_options(cfg, options)


def merge_options(cfg: Config, options: dict | None) -> Config:
    """``cfg`` with the ``--cfg-options`` ``options`` merged in.

    Raises:
        ConfigError: If an option cannot be merged: an index past the end
            of a list, a key under a value that is no dict.
    """
    try:
        cfg.merge_from_dict(options or {})
    except (KeyError, TypeError) as err:
        # mmengine's KeyError message comes quoted
        raise ConfigError(
            f"--cfg-options {' '.join(options)}: {str(err).strip(chr(39))}"
        ) from err
    return cfg
