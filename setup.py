"""Packaging for diffengine, with OpenMMLab's MIM extension.

``mim train diffengine CONFIG`` runs ``diffengine/.mim/tools/train.py`` and
finds configs under ``diffengine/.mim/configs``. A regular install copies
``configs/`` and ``tools/`` there; a develop (editable) install links them,
so edits to configs take effect at once.
"""
import os
import os.path as osp
import shutil
import sys
import warnings

from setuptools import find_packages, setup

MIM_FILES = ("configs", "tools")
HERE = osp.dirname(osp.abspath(__file__))


def parse_requirements(fname):
    """Requirement lines of ``requirements/<fname>``, comments dropped."""
    with open(osp.join(HERE, "requirements", fname)) as f:
        lines = (line.split("#")[0].strip() for line in f)
        return [line for line in lines if line]


def add_mim_extension():
    """Link (develop) or copy (build) ``configs/`` and ``tools/`` into
    ``diffengine/.mim``."""
    if "develop" in sys.argv:
        mode = "symlink"
    elif {"sdist", "bdist_wheel", "build", "egg_info"} & set(sys.argv) or (
            "install" in sys.argv):
        mode = "copy"
    else:
        return
    mim_path = osp.join(HERE, "diffengine", ".mim")
    os.makedirs(mim_path, exist_ok=True)
    for name in MIM_FILES:
        src = osp.join(HERE, name)
        dst = osp.join(mim_path, name)
        if osp.islink(dst) or osp.isfile(dst):
            os.remove(dst)
        elif osp.isdir(dst):
            shutil.rmtree(dst)
        if mode == "symlink":
            try:
                os.symlink(osp.relpath(src, mim_path), dst)
                continue
            except OSError:
                warnings.warn(f"cannot link {dst}; copying instead",
                              stacklevel=1)
        shutil.copytree(src, dst)


def read_readme():
    with open(osp.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


def read_version():
    scope = {}
    with open(osp.join(HERE, "diffengine", "version.py")) as f:
        exec(f.read(), scope)
    return scope["__version__"]


if __name__ == "__main__":
    add_mim_extension()
    setup(
        name="diffengine",
        version=read_version(),
        description="Train Stable Diffusion LoRA adapters from OpenMMLab "
        "configs; checkpoints load in diffusers as they are",
        long_description=read_readme(),
        long_description_content_type="text/markdown",
        license="Apache-2.0",
        python_requires=">=3.10",
        packages=find_packages(include=["diffengine", "diffengine.*"]),
        include_package_data=True,
        package_data={"diffengine": [".mim/configs/**/*", ".mim/tools/*",
                                     "demo_base/weights/*",
                                     "demo_base/weights/*/*"]},
        install_requires=parse_requirements("runtime.txt"),
        extras_require={"tests": parse_requirements("tests.txt")},
        zip_safe=False,
    )
