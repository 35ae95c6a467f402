"""Packaging for diffengine, with OpenMMLab's MIM extension.

``mim train diffengine CONFIG`` runs ``diffengine/.mim/tools/train.py`` and
looks for configs under ``diffengine/.mim/configs``, in the folder where the
distribution's metadata lies. ``diffengine/.mim/configs`` and ``.../tools``
are links to ``configs/`` and ``tools/``, so a wheel or an sdist carries
copies of them. An editable install (``pip install -e .``) is setuptools' own
PEP 660 one, extended by ``EditableWheel``. Both install
``diffengine-mim.pth`` with ``diffengine_mim.py``, which make ``mim train``
and ``mim run`` end with diffengine's status (see that module).
"""
import glob
import os.path as osp

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

HERE = osp.dirname(osp.abspath(__file__))
# A path file for site-packages whose one line imports diffengine_mim in
# mim's process only (see diffengine_mim.py); the module is its own
# top-level module, so that it imports nothing else.
MIM_PATH_FILE = "diffengine-mim.pth"
MIM_MODULE = "diffengine_mim"


def parse_requirements(fname):
    """Requirement lines of ``requirements/<fname>``, comments dropped."""
    with open(osp.join(HERE, "requirements", fname)) as f:
        lines = (line.split("#")[0].strip() for line in f)
        return [line for line in lines if line]


class BuildPy(build_py):
    """setuptools' build_py, plus :data:`MIM_PATH_FILE` at the top of the
    build, which a wheel installs into site-packages."""

    def run(self):
        super().run()
        if not self.editable_mode:
            self.copy_file(osp.join(HERE, MIM_PATH_FILE),
                           osp.join(self.build_lib, MIM_PATH_FILE))


class EditableWheel(editable_wheel):
    """setuptools' editable wheel, plus the scripts ``mim`` runs.

    openmim 0.3.9 looks for a package in ``<location of its metadata>/<name>``,
    which a PEP 660 install leaves in site-packages while the code stays in
    this tree. So this wheel adds ``diffengine/.mim/tools/NAME.py`` there,
    each running ``tools/NAME.py`` of this tree: edits take effect without
    reinstalling. It also adds copies of :data:`MIM_PATH_FILE` and its
    module. A ``diffengine`` folder without ``__init__.py`` in
    site-packages would hide the package from setuptools' meta-path finder;
    with ``package_dir={"": "."}`` setuptools instead writes a ``.pth`` file
    that puts this tree on ``sys.path``, where the package is found first.
    """

    # the method that picks how the editable wheel points at this tree, in
    # setuptools 64 to 84 alike; tests/test_tools/test_install.py uses it
    def _select_strategy(self, *args, **kwargs):
        return _WithMimTools(super()._select_strategy(*args, **kwargs))


class _WithMimTools:
    """An editable-install strategy that also writes the mim launchers."""

    def __init__(self, strategy):
        self.strategy = strategy

    def __enter__(self):
        self.strategy.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self.strategy.__exit__(*exc_info)

    def __call__(self, wheel, files, mapping):
        self.strategy(wheel, files, mapping)
        # copies, not links to this tree: the path file runs before
        # setuptools' own puts this tree on sys.path
        for name in (MIM_PATH_FILE, f"{MIM_MODULE}.py"):
            with open(osp.join(HERE, name)) as f:
                wheel.writestr(name, f.read())
        for tool in sorted(glob.glob(osp.join(HERE, "tools", "*.py"))):
            name = osp.basename(tool)
            if name != "__init__.py":
                wheel.writestr(
                    f"diffengine/.mim/tools/{name}",
                    f"import runpy\n\nrunpy.run_path({tool!r}, "
                    "run_name=\"__main__\")\n")


def read_readme():
    with open(osp.join(HERE, "README.md"), encoding="utf-8") as f:
        return f.read()


def read_version():
    scope = {}
    with open(osp.join(HERE, "diffengine", "version.py")) as f:
        exec(f.read(), scope)
    return scope["__version__"]


if __name__ == "__main__":
    setup(
        name="diffengine",
        version=read_version(),
        description="Train Stable Diffusion LoRA adapters from OpenMMLab "
        "configs; checkpoints load in diffusers as they are",
        long_description=read_readme(),
        long_description_content_type="text/markdown",
        license="Apache-2.0",
        python_requires=">=3.10",
        # the import root is this folder: an editable install is then a
        # .pth file naming it (see EditableWheel)
        package_dir={"": "."},
        packages=find_packages(include=["diffengine", "diffengine.*"]),
        py_modules=[MIM_MODULE],
        include_package_data=True,
        package_data={"diffengine": [".mim/configs/**/*", ".mim/tools/*",
                                     "demo/weights/*",
                                     "demo/weights/*/*"]},
        install_requires=parse_requirements("runtime.txt"),
        extras_require={"tests": parse_requirements("tests.txt"),
                        "quantization": parse_requirements("quantization.txt")},
        zip_safe=False,
        cmdclass={"build_py": BuildPy, "editable_wheel": EditableWheel},
    )
