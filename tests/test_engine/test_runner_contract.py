"""Hooks and loops hold to mmengine's runner contract, and the runner
knows no dataset class.

Hooks and loops import no runner module and read no private runner
attribute (``runner._x``, ``self.runner._x``, ``getattr(runner, "_x")``), so
that they work with any runner that keeps mmengine's public surface. Read
from the source, inside functions too. The runner lets any dataset with a
``prepare`` method prepare itself.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from diffengine.datasets.preparation import PrepareContext
from tests.test_engine.test_hooks.test_lora_checkpoint_hook import make_runner

ENGINE = Path(__file__).resolve().parents[2] / "diffengine" / "engine"
HOOKS_AND_LOOPS = sorted([
    *(ENGINE / "hooks").glob("*.py"),
    ENGINE / "loops.py",
    ENGINE / "validation_loop.py",
    ENGINE / "log_processor.py",
])
RUNNER_MODULE = "diffengine.engine.runner"
# what the runner may import of diffengine.datasets: no dataset class
RUNNER_DATASET_IMPORTS = {"diffengine.datasets.preparation",
                          "diffengine.datasets.samplers"}


def is_runner(node: ast.expr) -> bool:
    """``runner`` or ``<anything>.runner``."""
    return (isinstance(node, ast.Name) and node.id == "runner") or (
        isinstance(node, ast.Attribute) and node.attr == "runner")


def runner_imports(tree: ast.Module) -> list[int]:
    """Lines that import the runner module, or a name from it."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""] + [
                f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        if any(name == RUNNER_MODULE or name.startswith(f"{RUNNER_MODULE}.")
               for name in names):
            lines.append(node.lineno)
    return lines


def private_runner_reads(tree: ast.Module) -> list[str]:
    """``line: name`` for each private attribute of a runner read."""
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and is_runner(node.value)):
            found.append(f"{node.lineno}: {node.attr}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr")
              and len(node.args) >= 2 and is_runner(node.args[0])
              and isinstance(node.args[1], ast.Constant)
              and str(node.args[1].value).startswith("_")):
            found.append(f"{node.lineno}: {node.args[1].value}")
    return found


@pytest.mark.parametrize("path", HOOKS_AND_LOOPS, ids=lambda p: p.name)
def test_hooks_and_loops_import_no_runner_and_read_no_private_attribute(
        path):
    tree = ast.parse(path.read_text())
    assert runner_imports(tree) == []
    assert private_runner_reads(tree) == []


def test_the_checks_see_what_they_forbid():
    tree = ast.parse(
        "from diffengine.engine.runner import step_dir_of\n"
        "import diffengine.engine.runner\n"
        "def f(self, runner):\n"
        "    from diffengine.engine import runner as r\n"
        "    return runner._resume, self.runner._train_loop, "
        "getattr(runner, '_seed'), runner.iter\n")
    assert runner_imports(tree) == [1, 2, 4]
    assert private_runner_reads(tree) == [
        "5: _resume", "5: _train_loop", "5: _seed"]


def test_the_runner_imports_no_dataset_module():
    tree = ast.parse((ENGINE / "runner.py").read_text())
    imported = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)} | {
        alias.name for node in ast.walk(tree)
        if isinstance(node, ast.Import) for alias in node.names}
    assert {m for m in imported if m and m.startswith("diffengine.datasets")
            } <= RUNNER_DATASET_IMPORTS


class Preparing:
    """A dataset of no class the runner knows, with a ``prepare``."""

    def __init__(self):
        self.contexts = []

    def __len__(self):
        return 4

    def prepare(self, context):
        self.contexts.append(context)


def test_any_dataset_with_prepare_prepares_before_its_loader(
        tmp_path, tiny_sd, shapes_data):
    runner = make_runner(tmp_path, tiny_sd, shapes_data)
    dataset = Preparing()
    runner._train_dataloader = dict(
        runner._train_dataloader, batch_size=3, dataset=dataset)
    assert runner.prepare_dataset()
    context, = dataset.contexts
    assert context == PrepareContext(model=runner.bare_model,
                                     work_dir=runner.work_dir, batch_size=3,
                                     logger=runner.logger)
    assert runner._train_dataloader["dataset"] is dataset
