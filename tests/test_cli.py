"""Every command's way out: a mistake is one ``diffengine: error:`` line and
status 1 (2 for a command line argparse refuses), a bug keeps its
traceback, and ``mim`` passes diffengine's line and status on unchanged."""
import argparse
import glob
import importlib
import os
import signal
import subprocess
import sys
import time

import pytest
from mmengine.config import DictAction

from diffengine.cli import ConfigOptionsAction, exit_status
from diffengine.datasets.kohya_folder import IMAGE_EXTENSIONS
from diffengine.errors import ConfigError
from tests.conftest import NO_VALIDATION, REPO

MIM = os.path.join(os.path.dirname(sys.executable), "mim")
DEMO = os.path.join("configs", "stable_diffusion_lora", "tiny_sd_lora_demo.py")
TOOLS = sorted(os.path.basename(p)[:-len(".py")]
               for p in glob.glob(os.path.join(REPO, "tools", "*.py"))
               if not p.endswith("__init__.py"))
NO_WEIGHTS = ("diffengine: error: 'empty' holds no "
              "pytorch_lora_weights.safetensors or lycoris_weights."
              "safetensors; give a step folder (work_dirs/<config>/step<N>) "
              "or a .safetensors file.")
NO_CONFIG = ("diffengine: error: config file 'nothere.py' does not exist; "
             "give the path of a config, e.g. configs/stable_diffusion_lora/"
             "tiny_sd_lora_demo.py.")
# Each tool with a mistake a user makes, and the line it gives; run in a
# folder holding an empty folder "empty".
BAD_ARGUMENTS = {
    "browse_dataset": (["nothere.py", "--out", "browse"], NO_CONFIG),
    "demo": (["a red zorb", "empty"], NO_WEIGHTS),
    "generate": (["a red zorb", "empty"], NO_WEIGHTS),
    "export_lora": (["empty", "--out", "lora.safetensors"], NO_WEIGHTS),
    "kohya_to_imagefolder": (["empty"], (
        f"diffengine: error: 'empty' holds no {'/'.join(IMAGE_EXTENSIONS)} "
        "images at its top level or in its subfolders.")),
    "make_demo": (["--picture", "empty", "picture.png"], (
        "diffengine: error: no <timestamp>/vis_data/vis_image under 'empty'; "
        "train with a VisualizationHook first.")),
    "merge_lora": (["empty", "--out", "merged"], NO_WEIGHTS),
    "plot_loss": (["empty"], (
        "diffengine: error: no <timestamp>/vis_data/scalars.json under "
        "'empty'; point at the work dir of a run (work_dirs/<config>).")),
    "pretrain_demo_base": (["--like", "empty", "--out", "base"], (
        "diffengine: error: 'empty/pretraining.json' does not exist; --like "
        "takes a base folder that tools/pretrain_demo_base.py wrote.")),
    "train": (["nothere.py"], NO_CONFIG),
}


def run(command, cwd, **kwargs):
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                          timeout=600, **kwargs)


def assert_one_error_line(result, line, status=1):
    """``result`` ended with ``status`` and its stderr holds ``line`` as its
    only diffengine line, the last one, without a traceback."""
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert [x for x in lines if "diffengine: " in x] == [line], lines
    assert lines[-1] == line


@pytest.fixture()
def folder(tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path


def test_every_tool_has_a_bad_argument_case():
    assert sorted(BAD_ARGUMENTS) == TOOLS


@pytest.mark.parametrize("tool", TOOLS)
def test_a_mistake_is_one_line_and_status_1(tool, folder):
    argv, line = BAD_ARGUMENTS[tool]
    result = run([sys.executable, os.path.join(REPO, "tools", f"{tool}.py"),
                  *argv], folder)
    assert_one_error_line(result, line)


def test_a_bad_command_line_is_argparse_status_2(folder):
    result = run([sys.executable, os.path.join(REPO, "tools", "train.py"),
                  DEMO, "--cfg-options", "model.model"], folder)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "train.py: error: --cfg-options 'model.model': expected KEY=VALUE, "
        "e.g. train_dataloader.batch_size=2")


def test_mim_run_passes_the_line_and_status_on(folder):
    result = run([MIM, "run", "diffengine", "merge_lora", "empty", "--out",
                  "merged"], folder)
    assert_one_error_line(result, NO_WEIGHTS)
    # nor mim's own deprecation warnings
    assert "pkg_resources" not in result.stderr


def test_mim_train_config_mistake_is_one_line(folder):
    # found before the model loads: no data needed
    result = run([MIM, "train", "diffengine", os.path.join(REPO, DEMO),
                  "--work-dir", "work", "--cfg-options",
                  "train_dataloader.batch_szie=2"], folder)
    assert_one_error_line(
        result, "diffengine: error: train_dataloader.batch_szie: unknown "
        "option of a data loader. Did you mean 'batch_size'?")
    assert "pkg_resources" not in result.stderr
    assert "requires torchvision" not in result.stderr


def test_exit_status_of_mistakes_bugs_and_interruptions(capsys):
    def mistake(argv):
        raise ConfigError("first\nmodel.unet_lora_config.r=0: must be a "
                          "positive integer, e.g. 8.")

    assert exit_status(mistake) == 1
    # the last line, as a DataLoader worker's traceback ends
    assert capsys.readouterr().err == (
        "diffengine: error: model.unet_lora_config.r=0: must be a positive "
        "integer, e.g. 8.\n")

    def interrupted(argv):
        raise KeyboardInterrupt

    assert exit_status(interrupted) == 130
    assert exit_status(lambda argv: 3) == 3
    assert exit_status(lambda argv: None) == 0

    def bug(argv):
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        exit_status(bug)


def test_cfg_options_keep_the_spaces_inside_values():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cfg-options", nargs="+", action=ConfigOptionsAction)
    options = parser.parse_args([
        "--cfg-options", "custom_hooks.0.prompt=[a photo of sks ring]",
        "model.model=/data/my models/sd15", "a=[(1, 2), [x, y z], 'q r']",
        "b=1,2", "c='quoted value'", "d=[]", "e=None", "f=0.5"]).cfg_options
    assert options == {
        "custom_hooks.0.prompt": ["a photo of sks ring"],
        "model.model": "/data/my models/sd15",
        "a": [(1, 2), ["x", "y z"], "q r"],
        "b": [1, 2], "c": "quoted value", "d": [], "e": None, "f": 0.5}
    with pytest.raises(SystemExit):
        parser.parse_args(["--cfg-options", "a=[1, 2"])
    # without spaces, values parse as mmengine parses them
    mmengine = argparse.ArgumentParser()
    mmengine.add_argument("--cfg-options", nargs="+", action=DictAction)
    same = ["a=[(1,2),[x,y],z]", "b=1,2", "c=True", "d='x'", "e=[]",
            "f=[dict(type='LocalVisBackend'),dict(type='Tensorboard')]",
            "g=(1,)", "h=1e-3", "i=[to_q,to_k,to_v,to_out.0]"]
    assert parser.parse_args(["--cfg-options", *same]).cfg_options == (
        mmengine.parse_args(["--cfg-options", *same]).cfg_options)


# What a --help may take at most, generous for a loaded machine: the tools
# import torch and diffusers only after parsing (several seconds each).
HELP_SECONDS = 5.0


@pytest.mark.parametrize("tool", TOOLS)
def test_help_is_quick_and_imports_no_torch(tool, folder):
    script = os.path.join(REPO, "tools", f"{tool}.py")
    code = ("import runpy, sys\n"
            f"sys.argv = [{script!r}, '--help']\n"
            "try:\n"
            f"    runpy.run_path({script!r}, run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('torch' in sys.modules, 'diffusers' in sys.modules)\n")
    result = run([sys.executable, "-c", code], folder)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False False"
    start = time.perf_counter()
    result = run([sys.executable, script, "--help"], folder)
    seconds = time.perf_counter() - start
    print(f"{tool} --help: {seconds:.2f} s")
    assert result.returncode == 0 and result.stderr == ""
    assert seconds < HELP_SECONDS


def start_demo_training(cwd, tiny_sd, data, work_dir):
    """``mim train`` of the demo on ``data`` in its own session (a terminal's
    process group), logging every iteration; it and its output lines."""
    command = [MIM, "train", "diffengine", os.path.join(REPO, DEMO),
               "--work-dir", str(work_dir), "--cfg-options",
               f"model.model={tiny_sd}",
               f"train_dataloader.dataset.dataset={data}", "custom_hooks=[]",
               "default_hooks.logger.interval=1", *NO_VALIDATION]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def stop_after_iteration(process, iteration, send):
    """Call ``send`` once ``process`` logged ``iteration``; its output and
    status."""
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "Epoch(train)" in line and f"][{iteration}/" in line:
            send()
            break
    lines.append(process.stdout.read())
    return "".join(lines), process.wait(timeout=600)


def test_ctrl_c_under_mim_train_saves_and_exits_130(tmp_path, tiny_sd,
                                                    shapes_data):
    process = start_demo_training(tmp_path, tiny_sd, shapes_data,
                                  tmp_path / "work")
    # Ctrl-C at a terminal: SIGINT to mim and the script alike
    log, status = stop_after_iteration(
        process, 2, lambda: os.killpg(process.pid, signal.SIGINT))
    assert status == 130, log[-3000:]
    assert "Traceback" not in log and "CalledProcessError" not in log
    saved, = glob.glob(str(tmp_path / "work" / "iter_*.pth"))
    assert log.strip().splitlines()[-1] == (
        f"diffengine: stopped by SIGINT after saving {saved}; continue "
        "with --resume")


def test_sigterm_to_mim_reaches_the_script_and_exits_143(tmp_path, tiny_sd,
                                                         shapes_data):
    process = start_demo_training(tmp_path, tiny_sd, shapes_data,
                                  tmp_path / "work")
    # preemption that signals the launcher only
    log, status = stop_after_iteration(
        process, 2, lambda: os.kill(process.pid, signal.SIGTERM))
    assert status == 143, log[-3000:]
    assert "Traceback" not in log
    saved, = glob.glob(str(tmp_path / "work" / "iter_*.pth"))
    assert log.strip().splitlines()[-1] == (
        f"diffengine: stopped by SIGTERM after saving {saved}; continue "
        "with --resume")


def test_the_mim_patch_loads_in_mim_train_and_run_only(tmp_path):
    probe = "import sys; print('diffengine_mim' in sys.modules)"
    plain = run([sys.executable, "-c", probe], tmp_path)
    assert plain.stdout.strip() == "False"
    # the path file reads the arguments, as mim's process has them
    script = tmp_path / "probe.py"
    script.write_text(probe + "\n")
    for args, loaded in ((["train", "diffengine"], "True"),
                         (["run", "diffengine"], "True"),
                         (["train", "mmpretrain"], "False")):
        result = run([sys.executable, str(script), *args], tmp_path)
        assert result.stdout.strip() == loaded, args


def test_the_choices_spelled_out_for_help_are_the_packages():
    # the library modules behind the two tools
    export_lora = importlib.import_module("diffengine.export.standalone_lora")
    merge_lora = importlib.import_module("diffengine.export.merged_model")
    from diffengine.models.utils.dtypes import DTYPES
    from diffengine.tools import export_lora as export_tool
    from diffengine.tools import merge_lora as merge_tool

    assert merge_tool.FORMATS == merge_lora.FORMATS
    assert export_tool.FORMATS == export_lora.FORMATS
    assert export_tool.DORA_READERS == export_lora.DORA_READERS
    assert merge_tool.DTYPES == export_tool.DTYPES == tuple(DTYPES)
