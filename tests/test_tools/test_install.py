"""Installs as users make them, each in a fresh venv with its own pip: a
wheel, and an editable install whose config and train script are edited
after installing. `mim` finds diffengine through each as it does from a
shell (``python -P``: like the ``mim`` script, it does not look in the
current folder)."""
import glob
import os
import shutil
import site
import subprocess
import sys
import zipfile

from tests.conftest import REPO

DEMO = os.path.join("configs", "stable_diffusion_lora", "tiny_sd_lora_demo.py")


def copy_source(dst: str) -> str:
    """The source tree as a checkout has it, links kept as links."""
    shutil.copytree(REPO, dst, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "work_dirs", "data", "*.egg-info", "build", "dist",
        "__pycache__"))
    return dst


def fresh_venv(path: str) -> tuple[str, str]:
    """A venv with its own pip, its python and site-packages.

    Its site-packages come first; this environment's follow (a path file),
    so that diffengine's dependencies need not be installed again. Path files
    of this environment, its editable install among them, are not read.
    """
    subprocess.run([sys.executable, "-m", "venv", path], check=True)
    python = os.path.join(path, "bin", "python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(purelib, "dependencies.pth"), "w") as f:
        f.write("\n".join(site.getsitepackages()) + "\n")
    return python, purelib


def pip_install(python: str, *args: str) -> None:
    result = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", *args],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def mim(python: str, cwd: str, *args: str) -> str:
    result = subprocess.run([python, "-P", "-m", "mim", *args], cwd=cwd,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def link_demo_data(cwd: str, tiny_sd: str, images: str) -> None:
    """``data/demo/`` as ``tools/make_demo.py`` writes it, 6 images (the
    demo config trains on 4 and holds 2 out for validation)."""
    os.makedirs(os.path.join(cwd, "data", "demo"))
    os.symlink(tiny_sd, os.path.join(cwd, "data", "demo", "tiny-sd"))
    os.symlink(images, os.path.join(cwd, "data", "demo", "zorbs"))


def replace_once(path: str, old: str, new: str) -> None:
    with open(path) as f:
        text = f.read()
    assert text.count(old) == 1, f"{old!r} in {path}"
    with open(path, "w") as f:
        f.write(text.replace(old, new))


def test_editable_install_runs_the_source_tree_as_edited(tmp_path, tiny_sd,
                                                         mixed_data):
    source = copy_source(str(tmp_path / "src"))
    # configs/ and tools/ are linked where a checkout's mim would look
    assert os.readlink(os.path.join(source, "diffengine", ".mim", "configs")) \
        == os.path.join("..", "..", "configs")
    python, purelib = fresh_venv(str(tmp_path / "venv"))
    # the venv's pip, the build in its own environment, as for a user
    pip_install(python, "-e", source)
    imported = subprocess.run(
        [python, "-c", "import diffengine; print(diffengine.__file__)"],
        cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert imported.strip() == os.path.join(source, "diffengine",
                                            "__init__.py")
    # mim's status and signals (diffengine_mim.py), copied beside the path
    # file that loads it
    for name in ("diffengine-mim.pth", "diffengine_mim.py"):
        assert os.path.isfile(os.path.join(purelib, name))

    replace_once(os.path.join(source, DEMO), "max_epochs=50", "max_epochs=1")
    replace_once(os.path.join(source, "tools", "train.py"),
                 'if __name__ == "__main__":\n',
                 'if __name__ == "__main__":\n    print("edited train.py")\n')
    link_demo_data(source, tiny_sd, mixed_data)
    log = mim(python, source, "train", "diffengine", DEMO)

    # mim ran the script the install put beside the metadata, which ran the
    # source tree's train.py on the source tree's config, both as edited
    assert os.path.join(purelib, "diffengine", ".mim", "tools",
                        "train.py") in log
    assert "edited train.py" in log
    assert "Epoch(train) [1][1/1]" in log and "Epoch(train) [2]" not in log
    work = os.path.join(source, "work_dirs", "tiny_sd_lora_demo")
    assert sorted(os.path.basename(p) for p in glob.glob(
        os.path.join(work, "epoch_*.pth"))) == ["epoch_1.pth"]


def test_wheel_carries_configs_and_tools(tmp_path, tiny_sd, mixed_data):
    source = copy_source(str(tmp_path / "src"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                    "-w", str(tmp_path / "dist"), source], check=True,
                   capture_output=True)
    wheel, = glob.glob(str(tmp_path / "dist" / "diffengine-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "diffengine/.mim/tools/train.py" in names
    assert ("diffengine/.mim/configs/stable_diffusion_lora/"
            "stable_diffusion_v15_lora_pokemon_blip.py") in names
    assert "diffengine/.mim/configs/_base_/default_runtime.py" in names
    for tool in ("generate", "demo", "export_lora", "merge_lora", "plot_loss",
                 "browse_dataset", "kohya_to_imagefolder",
                 "pretrain_demo_base"):
        assert f"diffengine/.mim/tools/{tool}.py" in names
        assert f"diffengine/tools/{tool}.py" in names
    assert "diffengine/export/kohya.py" in names
    assert {"diffengine-mim.pth", "diffengine_mim.py"} <= names
    # the demo's pretrained base ships in the package
    for part in ("unet/diffusion_pytorch_model.safetensors",
                 "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors", "model_index.json",
                 "pretraining.json"):
        assert f"diffengine/demo/weights/{part}" in names

    python, purelib = fresh_venv(str(tmp_path / "venv"))
    pip_install(python, "--no-index", wheel)
    run = str(tmp_path / "run")
    link_demo_data(run, tiny_sd, mixed_data)
    # a config named without its folder is looked up in the install
    log = mim(python, run, "train", "diffengine", "tiny_sd_lora_demo.py",
              "--cfg-options", "train_cfg.max_epochs=1")
    installed = os.path.join(purelib, "diffengine", ".mim")
    assert os.path.join(installed, DEMO) in log
    assert os.path.join(installed, "tools", "train.py") in log
    assert os.path.isfile(
        os.path.join(run, "work_dirs", "tiny_sd_lora_demo", "epoch_1.pth"))

    # a mistake: diffengine's one line and status, nothing of mim's
    mistake = subprocess.run(
        [python, "-P", "-m", "mim", "train", "diffengine",
         "tiny_sd_lora_demo.py", "--cfg-options", "train_cfg.max_epoch=1"],
        cwd=run, capture_output=True, text=True, timeout=600)
    assert mistake.returncode == 1, mistake.stdout + mistake.stderr
    assert "Traceback" not in mistake.stderr
    assert mistake.stderr.strip().splitlines()[-1].startswith(
        "diffengine: error: train_cfg.max_epoch")

    log = mim(python, run, "run", "diffengine", "plot_loss",
              os.path.join("work_dirs", "tiny_sd_lora_demo"), "--out",
              "loss.png")
    assert os.path.join(installed, "tools", "plot_loss.py") in log
    assert os.path.isfile(os.path.join(run, "loss.png"))
