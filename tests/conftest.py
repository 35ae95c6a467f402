"""Shared fixtures: a tiny SD-1.x model and small image folders on disk."""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from diffengine.adapters import LORA, AdapterPart
from diffengine.adapters.formats import DIFFUSERS_FILE
from diffengine.architectures import flux_architecture, sd3_architecture
from diffengine.demo import make_shapes_dataset
from diffengine.models import StableDiffusion
from diffengine.testing import (
    make_tiny_flux,
    make_tiny_sd,
    make_tiny_sd3,
    make_tiny_sdxl,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# --cfg-options that train the demo config on other data: all of it, and no
# validation (the demo holds a quarter of its own images out for it).
NO_VALIDATION = ["train_dataloader.dataset.validation_fraction=0",
                 "val_dataloader=None", "val_cfg=None", "val_evaluator=None"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# Both attentions of every SD3 block, image and text streams: by suffix,
# which reaches SD3.5 Medium's second attention (attn2) too.
SD3_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
               "add_k_proj", "add_v_proj", "to_add_out"]
# attention plus every convolution of the resnets, the transformers'
# projections and the down/up samplers (LoCon)
UNET_CONV_TARGETS = [*UNET_TARGETS, "conv1", "conv2", "conv_shortcut",
                     "proj_in", "proj_out", "conv"]
# Each adapter kind under test: its options besides r, alpha and targets.
# "LoKr" at r=4 has full and decomposed factors side by side; "LoKr-small"
# decomposes both factors and keeps Tucker cores on the 3x3 convolutions.
KIND_OPTIONS = {
    "LoRA": {},
    "DoRA": dict(use_dora=True),
    "LoHa": dict(type="LoHa"),
    "LoHa-Tucker": dict(type="LoHa", use_effective_conv2d=True),
    "LoKr": dict(type="LoKr"),
    "LoKr-small": dict(type="LoKr", r=1, decompose_both=True,
                       use_effective_conv2d=True),
}


# A small UNet laid out as SD 1.x's: three attending levels then a plain
# one, two resnets a level (the demo model has the opposite order and one).
SD1_LAYOUT_UNET = dict(
    block_out_channels=(32, 32, 64, 64), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", ) * 3 + ("DownBlock2D", ),
    up_block_types=("UpBlock2D", ) + ("CrossAttnUpBlock2D", ) * 3,
    cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    sample_size=16)


def tiny_pipeline(flip: bool = False) -> list[dict]:
    """The tests' 32 px pipeline: resize, centre crop (and random flip)."""
    return [
        dict(type="ResizeShortestEdge", size=32),
        dict(type="CenterCrop", size=32),
        *([dict(type="RandomHorizontalFlip", p=0.5)] if flip else []),
        dict(type="ImageToNormalizedTensor"),
        dict(type="PackInputs"),
    ]


def tiny_train_config(work_dir, tiny_sd: str, shapes_data: str, *,
                      model: dict | None = None,
                      dataset: dict | None = None,
                      sampler: dict | None = None,
                      **cfg) -> dict:
    """A runner config training the tiny model on the shapes: LoRA r=2 on
    the UNet's attention, batch 2, AdamW lr 1e-3.

    ``model`` and ``dataset`` add or replace options of those parts, ``sampler``
    replaces the unshuffled ``DeterministicSampler``, and the other keyword
    arguments are top-level keys.
    """
    return dict(
        model=dict(dict(type="StableDiffusion", model=tiny_sd,
                        unet_lora_config=dict(r=2,
                                              target_modules=UNET_TARGETS)),
                   **(model or {})),
        work_dir=str(work_dir),
        train_dataloader=dict(
            batch_size=2,
            num_workers=0,
            sampler=sampler or dict(type="DeterministicSampler",
                                    shuffle=False),
            dataset=dict(dict(type="HFDataset", dataset=shapes_data,
                              pipeline=tiny_pipeline()), **(dataset or {}))),
        optim_wrapper=dict(optimizer=dict(type="AdamW", lr=1e-3)),
        default_scope="diffengine",
        **cfg)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> str:
    """A tiny SD-1.x pipeline folder in diffusers format."""
    return make_tiny_sd(str(tmp_path_factory.mktemp("models") / "tiny-sd"))


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> str:
    """A tiny SD3.5-shaped pipeline folder (``qk_norm``, a second attention
    in block 0) in diffusers format."""
    return make_tiny_sd3(str(tmp_path_factory.mktemp("models") / "tiny-sd35"))


@pytest.fixture(scope="session")
def tiny_sd3_medium(tmp_path_factory) -> str:
    """A tiny SD3-Medium-shaped pipeline folder in diffusers format."""
    return make_tiny_sd3(str(tmp_path_factory.mktemp("models") / "tiny-sd3"),
                         variant="sd3")


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory) -> str:
    """A tiny FLUX.1 [dev]-shaped pipeline folder in diffusers format."""
    return make_tiny_flux(
        str(tmp_path_factory.mktemp("models") / "tiny-flux-dev"))


@pytest.fixture(scope="session")
def tiny_flux_schnell(tmp_path_factory) -> str:
    """A tiny FLUX.1 [schnell]-shaped pipeline folder in diffusers format."""
    return make_tiny_flux(
        str(tmp_path_factory.mktemp("models") / "tiny-flux-schnell"),
        variant="schnell")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory) -> str:
    """A tiny SDXL pipeline folder in diffusers format."""
    return make_tiny_sdxl(str(tmp_path_factory.mktemp("models") / "tiny-sdxl"))


def perturb_lora(model, seed=1):
    """Move the adapters away from their (no-op) initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param += 0.3 * torch.randn(param.shape, generator=generator)



def adapted_model(model_class: type, base: str, **kwargs):
    """A ``model_class`` of ``base`` with a rank-4 LoRA (alpha 2) on its
    denoiser's usual targets, each adapter weight drawn from N(0, 0.05) (away
    from LoRA's zero start)."""
    option, targets = ("unet_lora_config", UNET_TARGETS) if (
        model_class.denoiser_name == "unet") else (
            "transformer_lora_config", SD3_TARGETS)
    model = model_class(base, **{
        option: dict(r=4, lora_alpha=2, target_modules=targets)}, **kwargs)
    for name, param in model.named_parameters():
        if param.requires_grad:
            generator = torch.Generator().manual_seed(len(name))
            param.data.normal_(0, 0.05, generator=generator)
    return model


def save_perturbed_step(model_class: type, base: str, step_dir: str,
                        resolution: str):
    """A ``model_class`` of ``base`` with a UNet + text-encoder LoRA whose
    alpha differs from its rank, moved off its initialisation and saved as
    ``step_dir`` (its step the folder name's number); the model."""
    model = model_class(
        base,
        unet_lora_config=dict(r=4, lora_alpha=2, target_modules=UNET_TARGETS),
        text_encoder_lora_config=dict(r=2, lora_alpha=8,
                                      target_modules=TEXT_TARGETS))
    perturb_lora(model)
    step = os.path.basename(step_dir).removeprefix("step")
    model.save_lora_weights(step_dir, {"step": step, "resolution": resolution})
    return model

def save_injected_step(pipe, step_dir: str, configs: dict[str, dict],
                       architecture, training: dict, seed: int) -> None:
    """Inject LoRA by peft into each part of ``pipe`` that ``configs``
    names (``LoraConfig`` options), move it off its initialisation
    (``seed`` + the part's index) and save ``step_dir`` as a diffengine
    step file (diffusers' format, the adapter configs, ``diffengine.*``
    metadata: ``training``, ``architecture``, the step and a resolution)."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    parts = {}
    for index, (part, options) in enumerate(configs.items()):
        module = getattr(pipe, part)
        module.requires_grad_(False)
        config = LoraConfig(**options)
        inject_adapter_in_model(config, module)
        perturb_lora(module, seed + index)
        metadata = {k: sorted(v) if isinstance(v, (set, frozenset)) else v
                    for k, v in config.to_dict().items()}
        state = {k: v.detach().clone().contiguous() for k, v in
                 get_peft_model_state_dict(module).items()}
        parts[part] = AdapterPart(LORA, metadata, state)
    step = os.path.basename(step_dir).removeprefix("step")
    DIFFUSERS_FILE.write(step_dir, parts, type(pipe),
                         architecture.kohya_prefixes,
                         {"architecture": architecture.name, "step": step,
                          "resolution": "64x64", **training})


def save_perturbed_sd3_step(base: str, step_dir: str,
                            transformer_config: dict | None = None,
                            text_encoder_config: dict | None = None,
                            seed: int = 1):
    """An SD3 pipeline of ``base`` with LoRA injected by peft into its
    transformer and both CLIP text encoders, moved off its initialisation
    and saved as ``step_dir`` as a diffengine step file (diffusers' format,
    the adapter configs and ``diffengine.*`` metadata); the pipeline.

    Args:
        base (str): The SD3 diffusers folder.
        step_dir (str): The step folder (its step the name's number).
        transformer_config (dict, optional): ``LoraConfig`` options of the
            transformer. Defaults to r=4, alpha 2 on :data:`SD3_TARGETS`.
        text_encoder_config (dict, optional): The same for each CLIP;
            None for r=2, alpha 8 on :data:`TEXT_TARGETS`, ``{}`` for no
            text-encoder LoRA.
        seed (int): Seeds the perturbation.
    """
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(base)
    if text_encoder_config is None:
        text_encoder_config = dict(r=2, lora_alpha=8,
                                   target_modules=TEXT_TARGETS)
    configs = {"transformer": transformer_config or dict(
        r=4, lora_alpha=2, target_modules=SD3_TARGETS)}
    if text_encoder_config:
        configs.update(text_encoder=text_encoder_config,
                       text_encoder_2=text_encoder_config)
    save_injected_step(pipe, step_dir, configs,
                       sd3_architecture(pipe.transformer.config),
                       {"base_model": base}, seed)
    return pipe


# Settings of the reference images of ``lora_step``.
SAMPLE = dict(prompt="a red circle", seed=7, num_inference_steps=3,
              output_type="np")


@pytest.fixture(scope="session")
def lora_step(tmp_path_factory, tiny_sd):
    """A step folder of a UNet + text-encoder LoRA with alpha != rank.

    ``reference`` is the image the in-memory model makes with ``SAMPLE``.
    """
    step_dir = str(tmp_path_factory.mktemp("work") / "step6")
    model = save_perturbed_step(StableDiffusion, tiny_sd, step_dir,
                                "64x48")
    settings = {k: v for k, v in SAMPLE.items() if k != "prompt"}
    reference = model.infer([SAMPLE["prompt"]], **settings)[0]
    return SimpleNamespace(step_dir=step_dir, reference=reference,
                           model=model)


def kind_configs(kind: str) -> dict:
    """``unet_lora_config`` (attention and convolutions, r=4, alpha 3) and
    ``text_encoder_lora_config`` (r=2, alpha 5) of a kind of
    :data:`KIND_OPTIONS`; strengths that are not powers of two, so that a
    scale applied twice or not at all shows."""
    options = dict(KIND_OPTIONS[kind])
    return dict(
        unet_lora_config=dict(dict(r=4, lora_alpha=3,
                                   target_modules=UNET_CONV_TARGETS),
                              **options),
        text_encoder_lora_config=dict(dict(r=2, lora_alpha=5,
                                           target_modules=TEXT_TARGETS),
                                      **options))


@pytest.fixture(scope="session")
def kind_step(tmp_path_factory, tiny_sd):
    """``kind_step(kind)``: a perturbed UNet + text-encoder model of a kind
    of :data:`KIND_OPTIONS` and its step folder, built once a session."""
    steps = {}

    def make(kind: str) -> SimpleNamespace:
        if kind not in steps:
            model = StableDiffusion(tiny_sd, **kind_configs(kind))
            perturb_lora(model)
            model.eval()
            step_dir = str(tmp_path_factory.mktemp(kind) / "step3")
            model.save_lora_weights(step_dir, {"step": "3"})
            steps[kind] = SimpleNamespace(model=model, step_dir=step_dir)
        return steps[kind]

    return make


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> str:
    """24 captioned 64-px RGB images (the demo dataset)."""
    return make_shapes_dataset(str(tmp_path_factory.mktemp("data") / "shapes"))


def write_mixed_folder(path: str) -> str:
    """An imagefolder of mixed modes and sizes, some captions as lists."""
    os.makedirs(path, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
    images = {
        "rgb.png": Image.fromarray(rgb),
        "rgba.png": Image.fromarray(rgb).convert("RGBA"),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "gray.png": Image.fromarray(rgb).convert("L").resize((70, 120)),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "gray16.png": Image.fromarray(
            rng.integers(0, 65536, (72, 72), dtype=np.uint16)),
    }
    with open(os.path.join(path, "metadata.jsonl"), "w") as f:
        for i, (name, image) in enumerate(images.items()):
            image.save(os.path.join(path, name))
            # a caption column holds strings or lists, one type per column
            text = [f"picture {i}", f"image {i}"] if i % 2 else [f"photo {i}"]
            f.write(json.dumps({"file_name": name, "text": text}) + "\n")
    return path


@pytest.fixture(scope="session")
def mixed_data(tmp_path_factory) -> str:
    return write_mixed_folder(str(tmp_path_factory.mktemp("data") / "mixed"))


# (width, height) of the images of ``orientation_data``: portraits and
# landscapes of 1:3, 4:3 photos and squares, as 300×900, 900×300, 640×480
# and 512×512 are, at a tenth of the size.
ORIENTATIONS = [(30, 90), (32, 96), (28, 84), (90, 30), (96, 32), (84, 28),
                (64, 48), (80, 60), (52, 52), (60, 60)]
FRAME = (255, 0, 0)


def framed_image(width: int, height: int, shade: int) -> Image.Image:
    """A grey picture in a red frame 4 px wide along all four edges: the
    subject that a crop must not cut."""
    array = np.full((height, width, 3), shade, dtype=np.uint8)
    array[:4], array[-4:], array[:, :4], array[:, -4:] = (FRAME, ) * 4
    return Image.fromarray(array)


def write_orientation_folder(path: str) -> str:
    """An imagefolder of framed images in the sizes of ``ORIENTATIONS``."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "metadata.jsonl"), "w") as f:
        for i, (width, height) in enumerate(ORIENTATIONS):
            name = f"{i:02d}_{width}x{height}.png"
            framed_image(width, height, 60 + 15 * i).save(
                os.path.join(path, name))
            f.write(json.dumps({"file_name": name,
                                "text": f"a framed picture {i}"}) + "\n")
    return path


@pytest.fixture(scope="session")
def orientation_data(tmp_path_factory) -> str:
    return write_orientation_folder(
        str(tmp_path_factory.mktemp("data") / "orientations"))


def save_perturbed_flux_step(pipe, step_dir: str, transformer_config: dict,
                             text_encoder_config: dict | None = None,
                             training: dict | None = None, seed: int = 1):
    """A Flux pipeline with LoRA injected by peft into its transformer and
    CLIP text encoder, moved off its initialisation and saved as
    ``step_dir`` as a diffengine step file, as
    :func:`save_perturbed_sd3_step` does for SD3; the pipeline.

    Args:
        pipe (FluxPipeline): Its transformer and ``text_encoder`` are
            injected in place.
        step_dir (str): The step folder (its step the name's number).
        transformer_config (dict): ``LoraConfig`` options of the
            transformer.
        text_encoder_config (dict, optional): The same for CLIP-L; None for
            no text-encoder LoRA.
        training (dict, optional): More ``diffengine.*`` metadata.
        seed (int): Seeds the perturbation.
    """
    configs = {"transformer": transformer_config}
    if text_encoder_config:
        configs["text_encoder"] = text_encoder_config
    save_injected_step(pipe, step_dir, configs,
                       flux_architecture(pipe.transformer.config),
                       {"base_model": "tiny-flux", **(training or {})}, seed)
    return pipe
