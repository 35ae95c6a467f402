"""safetensors metadata that A1111, ComfyUI and model browsers read.

``modelspec.*`` follows Stability AI's model spec (architecture, title,
resolution, date); ``ss_*`` are the kohya-ss keys that A1111 shows in its
LoRA cards (base model, rank, alpha, resolution, steps, images). The
``diffengine.*`` keys of the step file (base model, step, dataset, the
training config as JSON) are carried over as they are.

Rank and alpha, when the parts (or the modules of a part) differ, follow
kohya-ss: ``ss_network_dim`` / ``ss_network_alpha`` hold one number only
when every module of the file has that rank / alpha, else ``"Dynamic"``, the
word kohya's ``resize_lora`` writes for per-module ranks; loaders read each
module's rank off its weights and its strength off its ``.alpha``. The alpha
is kohya's (strength × rank, the ``.alpha`` the kohya export writes), so
rsLoRA and ``alpha_pattern`` are counted as they load. The numbers of each
part are in ``modelspec.description`` ("UNet rank 4, alpha 2; text encoder
rank 2, alpha 8") and, as peft's config has them (``r``, ``lora_alpha``),
in ``diffengine.<part>.rank`` / ``.alpha``.
"""
from __future__ import annotations

import datetime
import json
import os

import torch

from diffengine.adapter_file import TRAINING_METADATA_PREFIX, AdapterFile
from diffengine.adapters import kind_of_kohya
from diffengine.adapters.base import has_convolutions
from diffengine.adapters.kohya import kohya_modules, kohya_state_dict
from diffengine.architectures import architecture_of, is_flux
from diffengine.export.kohya import (
    DENOISERS,
    fuses_projections,
    to_kohya,
    to_peft,
)
from diffengine.version import __version__


def lora_summary(lora: AdapterFile) -> dict[str, str]:
    """``diffengine.<part>.rank`` / ``.alpha`` for each part of the LoRA."""
    summary = {}
    for part in lora.parts:
        summary[f"{TRAINING_METADATA_PREFIX}{part}.rank"] = str(lora.rank(part))
        summary[f"{TRAINING_METADATA_PREFIX}{part}.alpha"] = _number(
            lora.alpha(part))
    return summary


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# How the description names each part.
PART_NAMES = {"unet": "UNet", "transformer": "transformer",
              "text_encoder": "text encoder",
              "text_encoder_2": "second text encoder"}


def module_ranks_and_alphas(
        lora: AdapterFile, kohya: dict[str, torch.Tensor] | None = None
) -> dict[str, list[tuple[int, float]]]:
    """(rank, kohya alpha) of every module, by part.

    The alpha is the ``.alpha`` of the kohya file (strength × rank; the rank
    of a LoKr module of two full factors, which loaders apply at strength 1),
    rounded to 6 significant digits; the rank is the one loaders divide it
    by, or the configured one where a module shows none. A file that has no
    kohya form (parts no family has) gets each part's configured ``r`` and
    alpha.

    Args:
        lora (AdapterFile): The step file.
        kohya (dict, optional): Its kohya tensors; None if it has no kohya
            form.
    """
    if kohya is None:
        return {part: [(lora.rank(part), lora.alpha(part))]
                for part in lora.parts}
    prefixes = {prefix: part for part, prefix in
                architecture_of(lora).kohya_prefixes.items()}
    modules: dict[str, list[tuple[int, float]]] = {}
    for name, tensors in kohya_modules(kohya).items():
        part = next(p for prefix, p in prefixes.items()
                    if name.startswith(prefix))
        rank = kind_of_kohya(tensors).kohya_rank(tensors) or lora.rank(part)
        modules.setdefault(part, []).append(
            (rank, float(f"{tensors['alpha'].item():.6g}")))
    return modules


def network_metadata(lora: AdapterFile,
                     kohya: dict[str, torch.Tensor] | None
                     ) -> dict[str, str]:
    """``ss_network_module`` and ``ss_network_args`` as kohya's scripts
    write them: ``networks.lora`` for LoRA (LoCon as ``conv_dim`` /
    ``conv_alpha``), ``lycoris.kohya`` with LyCORIS' ``algo`` and options
    for DoRA, LoHa and LoKr; the denoiser's adapter (UNet or transformer)
    names the network."""
    part = next((p for p in DENOISERS if p in lora.parts), lora.parts[0])
    kind = lora.kind(part)
    metadata = {"ss_network_module": kind.network_module}
    config = lora.adapter_configs.get(part)
    if config is not None:
        has_conv = has_convolutions(lora.training, kohya or {})
        args = kind.network_args(config, has_conv)
        if args:
            metadata["ss_network_args"] = json.dumps(args)
    return metadata


def _one_or_dynamic(values: set[float]) -> str:
    return _number(next(iter(values))) if len(values) == 1 else "Dynamic"


def _span(word: str, values: set[float]) -> str:
    if len(values) == 1:
        return f"{word} {_number(next(iter(values)))}"
    return f"{word}s {_number(min(values))}-{_number(max(values))}"


def describe_parts(modules: dict[str, list[tuple[int, float]]]) -> str:
    """``UNet rank 4, alpha 2; text encoder rank 2, alpha 8``."""
    return "; ".join(
        f"{PART_NAMES.get(part, part)} "
        f"{_span('rank', {r for r, _ in pairs})}, "
        f"{_span('alpha', {a for _, a in pairs})}"
        for part, pairs in modules.items())


def export_metadata(lora: AdapterFile, title: str,
                    kohya: dict[str, torch.Tensor] | None = None
                    ) -> dict[str, str]:
    """The metadata of an exported adapter file.

    Args:
        lora (AdapterFile): The step file, with its training metadata (missing
            entries are left out).
        title (str): Shown as the LoRA's name (``modelspec.title``,
            ``ss_output_name``).
        kohya (dict, optional): The kohya tensors written, if the export is
            one; converted from ``lora`` (DoRA's magnitudes as peft's) when
            None. An SD3 file's ranks and alphas are read before q, k and v
            are fused.

    Returns:
        dict[str, str]: ``modelspec.*``, ``ss_*`` and ``diffengine.*`` keys.
    """
    training = lora.training
    architecture = architecture_of(lora)
    try:
        if fuses_projections(architecture) and not lora.is_kohya:
            # each module as trained: a fused qkv's rank 3r and alpha 3a
            # (see diffengine.export.mmdit) are the r and a of q, k and v
            kohya = kohya_state_dict(to_peft(lora),
                                     architecture.kohya_prefixes)
        elif kohya is None:
            kohya = to_kohya(lora)
    except ValueError:  # no kohya form: the configured numbers
        kohya = None
    modules = module_ranks_and_alphas(lora, kohya)
    kinds = "/".join(dict.fromkeys(lora.kind(p).name for p in lora.parts))
    pairs = [pair for part in modules.values() for pair in part]
    resolution = training.get("resolution")  # "WxH"
    date = datetime.datetime.fromtimestamp(
        os.path.getmtime(lora.path)).replace(microsecond=0).isoformat()
    prediction = training.get("prediction_type", "epsilon")
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{architecture.name}/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": title,
        "modelspec.date": date,
        "modelspec.prediction_type": "v" if prediction == "v_prediction"
        else "epsilon",
        "modelspec.description": f"{kinds} trained with diffengine "
        f"{__version__}: {describe_parts(modules)}",
        "ss_base_model_version": architecture.base_model_version,
        "ss_v2": "False",
        **network_metadata(lora, kohya),
        "ss_network_dim": _one_or_dynamic({r for r, _ in pairs}),
        "ss_network_alpha": _one_or_dynamic({a for _, a in pairs}),
        "ss_output_name": title,
        "ss_training_comment": f"diffengine {__version__}",
    }
    optional = {
        "modelspec.resolution": resolution,
        "ss_resolution": "({}, {})".format(*resolution.split("x"))
        if resolution else None,
        "ss_sd_model_name": training.get("base_model"),
        "ss_steps": training.get("step"),
        "ss_max_train_steps": training.get("max_steps"),
        "ss_epoch": training.get("epoch"),
        "ss_num_train_images": training.get("num_train_images"),
        "ss_seed": training.get("seed"),
        # the guidance Flux.1 dev embeds in training, as sd-scripts keeps it
        "ss_guidance_scale": training.get("guidance_scale")
        if is_flux(architecture) else None,
    }
    metadata.update({k: v for k, v in optional.items() if v is not None})
    metadata.update({f"{TRAINING_METADATA_PREFIX}{k}": v
                     for k, v in training.items()})
    metadata.update(lora_summary(lora))
    return metadata
