"""`mim run diffengine NAME` starts tools/NAME.py, which starts the package's
main: the docs test calls that main directly."""
import glob
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.test_tools.test_plot_loss import write_run

MIM = os.path.join(os.path.dirname(sys.executable), "mim")
TOOLS = sorted(
    os.path.basename(p)[:-len(".py")]
    for p in glob.glob(os.path.join(REPO, "diffengine", "tools", "*.py"))
    if not p.endswith("__init__.py"))


def test_there_are_the_tools():
    assert TOOLS == ["browse_dataset", "demo", "export_lora", "generate",
                     "kohya_to_imagefolder", "make_demo", "merge_lora",
                     "plot_loss", "pretrain_demo_base"]


@pytest.mark.parametrize("name", TOOLS)
def test_the_entry_point_only_calls_the_package(name):
    with open(os.path.join(REPO, "tools", f"{name}.py")) as f:
        code = f.read()
    assert f"from diffengine.tools.{name} import main\n" in code
    # through the one way out of every command (diffengine.cli)
    assert code.rstrip().endswith('if __name__ == "__main__":\n    run(main)')


def test_mim_run_starts_the_linked_tool(tmp_path):
    write_run(tmp_path, "20260101_100000", range(1, 11), lambda s: 1 / s)
    result = subprocess.run(
        [MIM, "run", "diffengine", "plot_loss", str(tmp_path), "--out",
         str(tmp_path / "loss.png")], capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.path.join("diffengine", ".mim", "tools", "plot_loss.py") in (
        result.stdout)
    assert "loss over 10 log lines" in result.stdout
    assert (tmp_path / "loss.png").is_file()
