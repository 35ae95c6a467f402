"""The guides in docs/ run: their commands, on the tiny model.

How blocks are picked, marked and rewritten is described in docs/README.md
("How the guides are tested"); keep the two in step.
"""
from __future__ import annotations

import contextlib
import glob
import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from mmengine.config import Config

from diffengine.datasets import (
    AspectRatioBatchSampler,
    DreamBoothDataset,
    HFDataset,
    KohyaFolderDataset,
)
from diffengine.datasets.transforms import (
    BucketResizeCrop,
    CenterCrop,
    ComputeTimeIds,
    ImageToNormalizedTensor,
    PackInputs,
    RandomCrop,
    RandomHorizontalFlip,
    RandomTextDrop,
    ResizeShortestEdge,
    ShuffleCaptionTags,
)
from diffengine.demo import ShapeScorer, make_concept_dataset
from diffengine.engine import (
    DenoisingLossMetric,
    LoRACheckpointHook,
    LoRAEMAHook,
    ResumableEpochTrainLoop,
    SpeedLogProcessor,
    ValidationLossLoop,
    VisualizationHook,
)
from diffengine.models import (
    Flux,
    StableDiffusion,
    StableDiffusion3,
    StableDiffusionXL,
)
from diffengine.models.losses import (
    DeBiasEstimationLoss,
    HuberLoss,
    L2Loss,
    SNRL2Loss,
)
from diffengine.models.schedules import DDPMSchedule, FlowMatchSchedule
from diffengine.models.utils.noise import OffsetNoise, PyramidNoise, WhiteNoise
from diffengine.models.utils.timesteps import (
    CubicSamplingTimeSteps,
    EarlierTimeSteps,
    LaterTimeSteps,
    LogitNormalTimeSteps,
    ModeTimeSteps,
    RangeTimeSteps,
    ShiftedTimeSteps,
    TimeSteps,
)
from tests.conftest import REPO
from tests.test_datasets.test_kohya_folder import write_kohya_folder
from tools.train import parse_args

DOCS = os.path.join(REPO, "docs")
# In the order of docs/README.md: later guides use what earlier ones train.
GUIDES = ["lora.md", "text_encoder_lora.md", "techniques.md", "own_images.md",
          "dreambooth.md", "multi_gpu.md", "inference.md", "export.md",
          "merging.md", "sdxl.md", "sd3.md", "flux.md", "adapters.md"]
# The tiny model that stands for each model family.
TINY_MODELS = {"StableDiffusion": "data/demo/tiny-sd",
               "StableDiffusionXL": "data/demo/tiny-sdxl",
               "StableDiffusion3": "data/demo/tiny-sd3",
               "Flux": "data/demo/tiny-flux"}
SUBSTITUTIONS = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": TINY_MODELS[
        "StableDiffusion"],
    "stabilityai/stable-diffusion-xl-base-1.0": TINY_MODELS[
        "StableDiffusionXL"],
    # one tiny SD3.5-shaped model stands for Medium and Large
    "stabilityai/stable-diffusion-3.5-medium": TINY_MODELS[
        "StableDiffusion3"],
    "stabilityai/stable-diffusion-3.5-large": TINY_MODELS[
        "StableDiffusion3"],
    "black-forest-labs/FLUX.1-dev": TINY_MODELS["Flux"],
    # [schnell] embeds no guidance: a tiny model of its own
    "black-forest-labs/FLUX.1-schnell": "data/demo/tiny-flux-schnell",
}
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
MARKER = re.compile(r"<!-- docs-test: (\w+) ?(.*?) -->\s*$")
BIN = os.path.dirname(sys.executable)


@dataclass
class Block:
    guide: str
    language: str
    text: str
    marker: str | None = None
    argument: str = ""


def read_blocks(guide: str) -> list[Block]:
    """The fenced blocks of a guide with the marker just above each."""
    with open(os.path.join(DOCS, guide), encoding="utf-8") as f:
        text = f.read()
    blocks = []
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = MARKER.match(before)
        blocks.append(Block(guide, match[1], match[2],
                            marker[1] if marker else None,
                            marker[2] if marker else ""))
    return blocks


def tiny_training_options(command: list[str], cwd: str) -> list[str]:
    """``--cfg-options`` that make ``mim train`` a one-epoch tiny run."""
    args = parse_args(command)
    cfg = Config.fromfile(os.path.join(cwd, args.config))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    # the tiny model of the config's base, else of its family
    tiny = SUBSTITUTIONS.get(cfg.model.get("model"),
                             TINY_MODELS[cfg.model.type])
    options = [f"model.model={tiny}",
               "train_cfg.max_epochs=1",
               "train_dataloader.num_workers=0"]
    dataset = cfg.train_dataloader.dataset
    if not os.path.exists(os.path.join(cwd, dataset.dataset)):  # hub data
        options.append("train_dataloader.dataset.dataset=data/demo/zorbs")
        if dataset.type != "DreamBoothDataset":
            options.append("train_dataloader.dataset.caption_column=text")
    if dataset.type == "DreamBoothDataset":
        options += ["train_dataloader.dataset.num_class_images=4",
                    "train_dataloader.dataset.class_generation."
                    "num_inference_steps=2"]
    for i, transform in enumerate(dataset.pipeline):
        if "size" in transform:
            options.append(f"train_dataloader.dataset.pipeline.{i}.size=64")
    for i, hook in enumerate(cfg.get("custom_hooks", [])):
        if hook["type"] == "VisualizationHook":
            options += [f"custom_hooks.{i}.interval=1",
                        f"custom_hooks.{i}.num_inference_steps=2"]
    return options


def last_step(match: re.Match, cwd: str) -> str:
    steps = glob.glob(os.path.join(cwd, match[1], "step*"))
    if not steps:
        return match[0]
    last = max(int(os.path.basename(s)[len("step"):]) for s in steps)
    return f"{match[1]}/step{last}"


def rewrite(text: str, cwd: str) -> str:
    """A command or script as the tests run it (see docs/README.md).

    Step folders are resolved when the command runs, after the commands
    before it have trained.
    """
    for old, new in SUBSTITUTIONS.items():
        text = text.replace(old, new)
    text = re.sub(r"(work_dirs/[\w.-]+)/step\d+",
                  lambda m: last_step(m, cwd), text)
    if text.startswith("mim train diffengine "):
        options = tiny_training_options(shlex.split(text)[3:], cwd)
        text += " --cfg-options " + " ".join(shlex.quote(o) for o in options)
    if text.startswith("mim run diffengine generate "):
        text = re.sub(r" --steps \d+", "", text) + " --steps 2"
    return re.sub(r"num_inference_steps=\d+", "num_inference_steps=2", text)


def commands(block: Block) -> list[str]:
    """The commands of a bash block, continuation lines joined."""
    lines = re.sub(r"\\\n\s*", " ", block.text).splitlines()
    return [line for line in lines
            if line.strip() and not line.lstrip().startswith("#")]


@contextlib.contextmanager
def working_directory(path: str):
    previous = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def entry_point(words: list[str]):
    """The ``main`` and argv a diffengine command starts, else None.

    ``mim train diffengine``, ``mim run diffengine NAME`` and ``python
    tools/NAME.py`` start ``main`` of ``tools/train.py``,
    ``diffengine/tools/NAME.py`` and ``tools/NAME.py``; tests/test_tools
    checks that ``mim`` dispatches there.
    """
    if words[:3] == ["mim", "train", "diffengine"] and (
            "--launcher" not in words):
        return importlib.import_module("tools.train").main, words[3:]
    if words[:3] == ["mim", "run", "diffengine"]:
        module = importlib.import_module(f"diffengine.tools.{words[3]}")
        return module.main, words[4:]
    if words[0] == "python" and words[1].startswith("tools/"):
        name = os.path.basename(words[1])[:-len(".py")]
        return importlib.import_module(f"tools.{name}").main, words[2:]
    return None


def run_command(command: str, cwd: str) -> None:
    """Run one command of a guide: diffengine's in this process (no torch
    import per command), any other in bash."""
    words = shlex.split(command)
    found = entry_point(words)
    if found is not None:
        main, argv = found
        with working_directory(cwd):
            main(argv)
        return
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"])
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command],
                            cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (
        f"{command}\n{result.stdout[-2000:]}{result.stderr[-3000:]}")


def check_names(block: Block) -> None:
    """A block that is not run: valid bash naming existing configs/tools."""
    subprocess.run(["bash", "-n", "-c", block.text], check=True)
    for path in re.findall(r"(?:configs|tools)/[\w./-]+\.py", block.text):
        assert os.path.isfile(os.path.join(REPO, path)), (block.guide, path)
    for tool in re.findall(r"mim run diffengine (\w+)", block.text):
        assert os.path.isfile(os.path.join(REPO, "tools", f"{tool}.py"))


@pytest.fixture(scope="module")
def project(tmp_path_factory, shapes_data, tiny_sdxl, tiny_sd3, tiny_flux,
            tiny_flux_schnell):
    """A scratch folder as the repository root looks to a user, with the
    tiny SDXL, SD3.5 and FLUX.1 models beside the demo's, and the demo's
    images, so that a guide after lora.md also runs alone (``-k sd3``)."""
    cwd = tmp_path_factory.mktemp("project")
    for name in ("configs", "tools"):
        os.symlink(os.path.join(REPO, name), cwd / name)
    os.makedirs(cwd / "data" / "demo")
    os.symlink(tiny_sdxl, cwd / TINY_MODELS["StableDiffusionXL"])
    os.symlink(tiny_sd3, cwd / TINY_MODELS["StableDiffusion3"])
    os.symlink(tiny_flux, cwd / TINY_MODELS["Flux"])
    os.symlink(tiny_flux_schnell,
               cwd / SUBSTITUTIONS["black-forest-labs/FLUX.1-schnell"])
    # what `python tools/make_demo.py` in lora.md writes again, identically
    make_concept_dataset(str(cwd / "data" / "demo" / "zorbs"))
    write_kohya_folder(str(cwd / "data" / "my_images"), shapes_data)
    return str(cwd)


@pytest.mark.parametrize("guide", GUIDES)
def test_guide_commands_run(guide, project):
    blocks = read_blocks(guide)
    ran = 0
    for block in blocks:
        marker = block.marker
        if marker == "gpus" and torch.cuda.device_count() >= int(
                block.argument):
            marker = None
        if block.language == "bash" and marker in ("skip", "gpus"):
            check_names(block)
        elif block.language == "bash":
            for command in commands(block):
                run_command(rewrite(command, project), project)
                ran += 1
        elif block.language == "python" and marker == "file":
            with open(os.path.join(project, block.argument), "w") as f:
                f.write(rewrite(block.text, project))
        elif block.language == "python" and marker == "run":
            with working_directory(project):
                exec(compile(rewrite(block.text, project), block.guide,
                             "exec"), {})
            ran += 1
    assert ran or guide == "multi_gpu.md", f"{guide} runs nothing"


# What the guides promise, once all of them ran (they run in GUIDES order).
PROMISED = [
    "work_dirs/tiny_sd_lora_demo/step*/pytorch_lora_weights.safetensors",
    "work_dirs/stable_diffusion_v15_lora_pokemon_blip/*/vis_data/vis_image/"
    "yoda-pokemon_*.png",
    "loss.png",
    "work_dirs/stable_diffusion_v15_lora_ema_pokemon_blip/step*/"
    "pytorch_lora_weights.safetensors",
    "yoda.png",
    "browse/0000.png",
    "browse/0000.txt",
    "work_dirs/my_lora/step*/pytorch_lora_weights.safetensors",
    "browse_buckets/0000.png",
    "work_dirs/my_buckets/step*/pytorch_lora_weights.safetensors",
    "work_dirs/stable_diffusion_v15_dreambooth_lora_dog/class_images/"
    "a_photo_of_a_dog-*/class_00003.jpg",
    "work_dirs/stable_diffusion_v15_dreambooth_lora_dog/step*/"
    "pytorch_lora_weights.safetensors",
    "sks_dog.png",
    # the five photos of data/my_images; no class images are drawn yet
    "browse_dreambooth/0004.png",
    "data/my_images/metadata.jsonl",
    "yoda_diffusers.png",
    "pokemon_lora.safetensors",
    "pokemon_lora_diffusers.safetensors",
    "yoda_kohya.png",
    "pokemon_sd15/model_index.json",
    "merged.png",
    "yoda_xl.png",
    "pokemon_xl.safetensors",
    "pokemon_sdxl/model_index.json",
    "yoda_xl_diffusers.png",
    "pokemon_sd15.safetensors",
    "merged_single_file.png",
    "work_dirs/stable_diffusion_3_5_large_lora_pokemon_blip/step*/"
    "pytorch_lora_weights.safetensors",
    "work_dirs/my_sd35/step*/pytorch_lora_weights.safetensors",
    "yoda_sd35.png",
    "pokemon_sd35.safetensors",
    "pokemon_sd35/text_encoder_3/config.json",
    "yoda_sd35_diffusers.png",
    "work_dirs/flux_dev_lora_pokemon_blip/step*/"
    "pytorch_lora_weights.safetensors",
    "work_dirs/flux_schnell_lora_pokemon_blip/step*/"
    "pytorch_lora_weights.safetensors",
    "work_dirs/my_flux/step*/pytorch_lora_weights.safetensors",
    "yoda_flux.png",
    "pokemon_flux.safetensors",
    "pokemon_flux/transformer/config.json",
    "yoda_flux_diffusers.png",
    "work_dirs/pokemon_loha/step*/lycoris_weights.safetensors",
    "yoda_loha.png",
    "pokemon_loha.safetensors",
]


def test_guides_leave_what_they_promise(project):
    if not os.path.isdir(os.path.join(project, "work_dirs")):
        pytest.skip("the guides did not run (run the whole module)")
    missing = [p for p in PROMISED
               if not glob.glob(os.path.join(project, p))]
    assert not missing


def test_every_tool_is_in_a_guide():
    used = set()
    for guide in GUIDES:
        for block in read_blocks(guide):
            used |= set(re.findall(r"mim run diffengine (\w+)", block.text))
    tools = {os.path.basename(p)[:-3]
             for p in glob.glob(os.path.join(REPO, "tools", "*.py"))}
    # the README runs make_demo; pretrain_demo_base rebuilds the shipped
    # base (half an hour), described in the README
    assert tools - used == {"__init__", "train", "make_demo",
                            "pretrain_demo_base", "demo"}


REFERENCED = [StableDiffusion, StableDiffusionXL, StableDiffusion3, Flux,
              HFDataset,
              KohyaFolderDataset, ShapeScorer, ResumableEpochTrainLoop,
              ValidationLossLoop, DenoisingLossMetric, DreamBoothDataset,
              AspectRatioBatchSampler, BucketResizeCrop,
              ResizeShortestEdge, RandomCrop, CenterCrop, RandomHorizontalFlip,
              RandomTextDrop, ShuffleCaptionTags, ComputeTimeIds,
              ImageToNormalizedTensor,
              PackInputs, LoRACheckpointHook, LoRAEMAHook, VisualizationHook,
              SpeedLogProcessor, L2Loss, SNRL2Loss, DeBiasEstimationLoss,
              HuberLoss, WhiteNoise, OffsetNoise, PyramidNoise, TimeSteps,
              LaterTimeSteps, EarlierTimeSteps, RangeTimeSteps,
              CubicSamplingTimeSteps, LogitNormalTimeSteps, ModeTimeSteps,
              ShiftedTimeSteps, DDPMSchedule, FlowMatchSchedule]


@pytest.mark.parametrize("component", REFERENCED,
                         ids=[c.__name__ for c in REFERENCED])
def test_config_reference_names_every_option(component):
    with open(os.path.join(DOCS, "config_reference.md"),
              encoding="utf-8") as f:
        text = f.read()
    name = component.__name__
    # the component's section, or its row of the transforms table
    section = re.search(rf"^### `{name}`\n(.*?)(?=^##)", text, re.S | re.M)
    row = re.search(rf"^\| `{name}` \|.*$", text, re.M)
    assert section or row, f"config_reference.md does not cover {name}"
    body = section[1] if section else row[0]
    # SpeedLogProcessor's are those of mmengine's LogProcessor
    options = [p for p in inspect.signature(component.__init__).parameters
               if p not in ("self", "args", "kwargs", "options")]
    if "options" in inspect.signature(component.__init__).parameters:
        # **options go to the base class: its options are this one's too
        base = component.__mro__[1]
        options += [p for p in inspect.signature(base.__init__).parameters
                    if p not in ("self", "name", "options")]
    missing = [o for o in options if f"`{o}`" not in body]
    assert not missing, f"{name}: {missing}"
