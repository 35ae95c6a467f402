"""The reference: a plain PyTorch + diffusers + peft LoRA training loop.

It does what diffusers' ``examples/text_to_image/train_text_to_image_lora.py``
does at each step, without accelerate: the same transforms (resize, random
crop, random flip, normalise), captions tokenized in the dataset, the VAE
sample, noise and timesteps, the text encoder, the UNet with LoRA on its
attention, the MSE loss, gradient clipping at 1.0 and AdamW (lr 1e-4,
weight decay 1e-2) on the LoRA parameters, which stay fp32. With
``mixed_precision`` the frozen base is kept in that dtype and the step runs
under autocast, as accelerate does. It reads an image folder's
``metadata.jsonl`` (``file_name``, ``text``) with PIL.

An SDXL folder (one with ``text_encoder_2``) trains as diffusers'
``train_text_to_image_lora_sdxl.py`` does: both text encoders'
penultimate states, the pooled projection and the time ids (original
size, crop top-left, target size) as the UNet's added conditioning.

An SD3 folder (one with ``transformer``) trains as diffusers'
``examples/dreambooth/train_dreambooth_lora_sd3.py`` does with captions:
latents ``(sample − shift_factor)·scaling_factor``, a logit-normal draw
indexing the scheduler's shifted sigmas, the noisy input
``(1 − σ)·x + σ·ε``, the transformer at timestep ``σ·1000`` with the
prompt of ``StableDiffusion3Pipeline.encode_prompt`` (both CLIPs'
penultimate states zero-padded to T5's width, then T5's tokens, or zeros
without T5; the pooled projections concatenated), the target ``ε − x``
and LoRA on both attentions of every block.

A FLUX.1 folder (``model_index.json`` names ``FluxPipeline``) trains as
diffusers' ``examples/dreambooth/train_dreambooth_lora_flux.py`` does with
captions, with the framework's choices where that script differs: latents
``(sample − shift_factor)·scaling_factor`` packed into 2×2 patches
(``FluxPipeline._pack_latents``) with their position ids, σ drawn
logit-normal and shifted by the scheduler config's resolution-dependent
``mu`` (the script leaves [dev]'s σ unshifted), the transformer at timestep
σ with the distilled guidance 1.0 for [dev] (the script's default is 3.5;
the work is the same), the prompt of ``FluxPipeline.encode_prompt``
(CLIP-L's pooled output, T5's last states, zero text ids), the target
``ε − x`` and LoRA on the attention of every block.
"""
from __future__ import annotations

import json
import math
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import (
    compute_density_for_timestep_sampling,
    compute_loss_weighting_for_sd3,
)
from peft import LoraConfig
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5EncoderModel,
    T5TokenizerFast,
)

from benchmarks.measure import StepClock, summary

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
# Both attentions of every SD3 block, image and text streams, by suffix (as
# the SD3.5 configs: this reaches SD3.5 Medium's attn2 too).
SD3_TARGETS = [*UNET_TARGETS, "add_q_proj", "add_k_proj", "add_v_proj",
               "to_add_out"]
# diffusers' SD3 script's default: logit-normal draws (mean 0, std 1),
# whose loss weighting is 1.
WEIGHTING_SCHEME = "logit_normal"


class ImageFolder(Dataset):
    """Images and captions of ``metadata.jsonl``, transformed as diffusers'
    script does (``Resize``, ``RandomCrop``, ``RandomHorizontalFlip``,
    ``ToTensor``, ``Normalize([0.5], [0.5])``), captions tokenized."""

    def __init__(self, folder: str, resolution: int, tokenizers: list,
                 max_lengths: list[int] | None = None) -> None:
        with open(os.path.join(folder, "metadata.jsonl")) as f:
            self.rows = [json.loads(line) for line in f if line.strip()]
        self.folder = folder
        self.resolution = resolution
        self.tokenizers = tokenizers
        self.max_lengths = max_lengths or [
            tokenizer.model_max_length for tokenizer in tokenizers]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        image = Image.open(os.path.join(self.folder, row["file_name"]))
        image = image.convert("RGB")
        original_size = (image.height, image.width)
        size = self.resolution
        scale = size / min(image.size)
        image = image.resize((max(size, round(image.width * scale)),
                              max(size, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
        left = random.randint(0, image.width - size)
        top = random.randint(0, image.height - size)
        image = image.crop((left, top, left + size, top + size))
        if random.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32))
        pixels = pixels.permute(2, 0, 1) / 127.5 - 1.0
        input_ids = [tokenizer(
            row["text"], max_length=max_length, padding="max_length",
            truncation=True, return_tensors="pt").input_ids[0]
            for tokenizer, max_length in zip(
                self.tokenizers, self.max_lengths, strict=True)]
        time_ids = torch.tensor([*original_size, top, left, size, size],
                                dtype=torch.float32)
        return {"pixel_values": pixels, "input_ids": input_ids,
                "time_ids": time_ids}


def collate(examples: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack(
            [e["pixel_values"] for e in examples]).contiguous().float(),
        "input_ids": [torch.stack(ids) for ids in zip(
            *[e["input_ids"] for e in examples], strict=True)],
        "time_ids": torch.stack([e["time_ids"] for e in examples]),
    }


def encode_prompt(text_encoders: list, input_ids: list[torch.Tensor],
                  device: torch.device) -> dict:
    """The UNet's text conditioning: SD's last hidden states, or SDXL's
    concatenated penultimate ones with the pooled projection."""
    if len(text_encoders) == 1:
        return {"encoder_hidden_states": text_encoders[0](
            input_ids[0].to(device), return_dict=False)[0]}
    states = []
    for text_encoder, ids in zip(text_encoders, input_ids, strict=True):
        output = text_encoder(ids.to(device), output_hidden_states=True)
        states.append(output.hidden_states[-2])
    return {"encoder_hidden_states": torch.cat(states, dim=-1),
            "added_cond_kwargs": {"text_embeds": output[0]}}


def encode_sd3_prompt(text_encoders: list, input_ids: list[torch.Tensor],
                      max_sequence_length: int, joint_attention_dim: int,
                      device: torch.device
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``StableDiffusion3Pipeline.encode_prompt``: both CLIPs' penultimate
    states concatenated and zero-padded to T5's width, then T5's last
    states (zeros without T5); the pooled projections concatenated."""
    states, pooled = [], []
    for text_encoder, ids in zip(text_encoders[:2], input_ids, strict=False):
        output = text_encoder(ids.to(device), output_hidden_states=True)
        states.append(output.hidden_states[-2])
        pooled.append(output[0])
    clip = torch.cat(states, dim=-1)
    if len(text_encoders) == 3:
        t5 = text_encoders[2](input_ids[2].to(device))[0]
    else:
        t5 = clip.new_zeros(clip.shape[0], max_sequence_length,
                            joint_attention_dim)
    clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)


def unet_parts(model: str, rank: int, device: torch.device,
               weight_dtype: torch.dtype, **_: object) -> dict:
    """SD 1.x or SDXL: the text encoders, the UNet with LoRA and the step's
    loss as diffusers' text-to-image LoRA scripts compute it."""
    sdxl = os.path.isdir(os.path.join(model, "text_encoder_2"))
    tokenizers = [CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")]
    text_encoders = [CLIPTextModel.from_pretrained(model,
                                                   subfolder="text_encoder")]
    if sdxl:
        tokenizers.append(CLIPTokenizer.from_pretrained(
            model, subfolder="tokenizer_2"))
        text_encoders.append(CLIPTextModelWithProjection.from_pretrained(
            model, subfolder="text_encoder_2"))
    noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    for module in (unet, vae, *text_encoders):
        module.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank,
                                init_lora_weights="gaussian",
                                target_modules=UNET_TARGETS))
    unet.to(device, dtype=weight_dtype)
    # SDXL's VAE overflows in fp16; its script keeps it in fp32 then
    vae.to(device, dtype=torch.float32 if sdxl and (
        weight_dtype == torch.float16) else weight_dtype)
    for text_encoder in text_encoders:
        text_encoder.to(device, dtype=weight_dtype)

    def loss(batch: dict) -> torch.Tensor:
        pixels = batch["pixel_values"].to(device, dtype=vae.dtype)
        latents = vae.encode(pixels).latent_dist.sample()
        latents = latents * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(
            0, noise_scheduler.config.num_train_timesteps,
            (latents.shape[0], ), device=device).long()
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
        conditioning = encode_prompt(text_encoders, batch["input_ids"],
                                     device)
        if sdxl:
            conditioning["added_cond_kwargs"]["time_ids"] = batch[
                "time_ids"].to(device)
        model_pred = unet(noisy_latents, timesteps, **conditioning,
                          return_dict=False)[0]
        return F.mse_loss(model_pred.float(), noise.float())

    return dict(denoiser=unet, tokenizers=tokenizers, max_lengths=None,
                loss=loss)


def sd3_parts(model: str, rank: int, device: torch.device,
              weight_dtype: torch.dtype, use_t5: bool = True,
              max_sequence_length: int = 77, **_: object) -> dict:
    """SD3 and SD3.5: the text encoders (T5 only with ``use_t5``), the
    transformer with LoRA and the step's loss as diffusers'
    ``train_dreambooth_lora_sd3.py`` computes it."""
    tokenizers = [CLIPTokenizer.from_pretrained(model, subfolder=name)
                  for name in ("tokenizer", "tokenizer_2")]
    text_encoders = [CLIPTextModelWithProjection.from_pretrained(
        model, subfolder=name) for name in ("text_encoder", "text_encoder_2")]
    max_lengths = [tokenizer.model_max_length for tokenizer in tokenizers]
    if use_t5:
        tokenizers.append(T5TokenizerFast.from_pretrained(
            model, subfolder="tokenizer_3"))
        text_encoders.append(T5EncoderModel.from_pretrained(
            model, subfolder="text_encoder_3"))
        max_lengths.append(max_sequence_length)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
        model, subfolder="scheduler")
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    transformer = SD3Transformer2DModel.from_pretrained(
        model, subfolder="transformer")
    for module in (transformer, vae, *text_encoders):
        module.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank,
                                       init_lora_weights="gaussian",
                                       target_modules=SD3_TARGETS))
    for module in (transformer, *text_encoders):
        module.to(device, dtype=weight_dtype)
    vae.to(device, dtype=torch.float32)  # as the script keeps it
    num_train_timesteps = scheduler.config.num_train_timesteps
    shift_factor = vae.config.shift_factor
    scaling_factor = vae.config.scaling_factor
    joint_attention_dim = transformer.config.joint_attention_dim

    def loss(batch: dict) -> torch.Tensor:
        pixels = batch["pixel_values"].to(device, dtype=vae.dtype)
        latents = vae.encode(pixels).latent_dist.sample()
        latents = (latents - shift_factor) * scaling_factor
        latents = latents.to(weight_dtype)
        noise = torch.randn_like(latents)
        batch_size = latents.shape[0]
        u = compute_density_for_timestep_sampling(
            weighting_scheme=WEIGHTING_SCHEME, batch_size=batch_size,
            logit_mean=0.0, logit_std=1.0)
        # the scheduler's table holds the shifted sigmas and σ·1000
        indices = (u * num_train_timesteps).long()
        timesteps = scheduler.timesteps[indices].to(device)
        sigmas = scheduler.sigmas[indices].to(device, latents.dtype)
        sigmas = sigmas.view(-1, 1, 1, 1)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        with torch.no_grad():
            prompt_embeds, pooled = encode_sd3_prompt(
                text_encoders, batch["input_ids"], max_sequence_length,
                joint_attention_dim, device)
        model_pred = transformer(
            hidden_states=noisy, timestep=timesteps,
            encoder_hidden_states=prompt_embeds,
            pooled_projections=pooled, return_dict=False)[0]
        weighting = compute_loss_weighting_for_sd3(
            weighting_scheme=WEIGHTING_SCHEME, sigmas=sigmas)
        target = noise - latents
        error = weighting.float() * (model_pred.float() - target.float())**2
        return error.reshape(batch_size, -1).mean(1).mean()

    return dict(denoiser=transformer, tokenizers=tokenizers,
                max_lengths=max_lengths, loss=loss)


def is_flux_folder(model: str) -> bool:
    """Whether ``model`` is a FLUX.1 pipeline folder."""
    index = os.path.join(model, "model_index.json")
    if not os.path.isfile(index):
        return False
    with open(index) as f:
        return json.load(f).get("_class_name") == "FluxPipeline"


def encode_flux_prompt(text_encoders: list, input_ids: list[torch.Tensor],
                       device: torch.device
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """``FluxPipeline.encode_prompt``: T5's last hidden states (the text
    tokens) and CLIP-L's pooled output."""
    pooled = text_encoders[0](input_ids[0].to(device)).pooler_output
    embeds = text_encoders[1](input_ids[1].to(device))[0]
    return embeds, pooled


def shift_flux_sigmas(sigmas: torch.Tensor, config: dict,
                      image_seq_len: int) -> torch.Tensor:
    """The scheduler config's shift of ``sigmas``: by resolution
    (``calculate_shift``'s ``mu``, exponential time shift) with
    ``use_dynamic_shifting``, else the static ``shift``."""
    if not config.get("use_dynamic_shifting", False):
        shift = config.get("shift", 1.0)
        return shift * sigmas / (1 + (shift - 1) * sigmas)
    mu = calculate_shift(
        image_seq_len, config.get("base_image_seq_len", 256),
        config.get("max_image_seq_len", 4096),
        config.get("base_shift", 0.5), config.get("max_shift", 1.15))
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def flux_parts(model: str, rank: int, device: torch.device,
               weight_dtype: torch.dtype, use_t5: bool = True,
               max_sequence_length: int = 512, guidance_scale: float = 1.0,
               **_: object) -> dict:
    """FLUX.1 [dev] and [schnell]: CLIP-L and T5, the transformer with LoRA
    on its attention and the step's loss as diffusers'
    ``train_dreambooth_lora_flux.py`` computes it (see the module's
    docstring for where it follows the framework instead)."""
    if not use_t5:
        raise ValueError("FLUX.1 always encodes prompts with T5; drop "
                         "--no-t5.")
    tokenizers = [CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"),
                  T5TokenizerFast.from_pretrained(model,
                                                  subfolder="tokenizer_2")]
    text_encoders = [
        CLIPTextModel.from_pretrained(model, subfolder="text_encoder"),
        T5EncoderModel.from_pretrained(model, subfolder="text_encoder_2")]
    max_lengths = [tokenizers[0].model_max_length, max_sequence_length]
    scheduler_config = dict(FlowMatchEulerDiscreteScheduler.load_config(
        model, subfolder="scheduler"))
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    transformer = FluxTransformer2DModel.from_pretrained(
        model, subfolder="transformer")
    for module in (transformer, vae, *text_encoders):
        module.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank,
                                       init_lora_weights="gaussian",
                                       target_modules=SD3_TARGETS))
    for module in (transformer, *text_encoders):
        module.to(device, dtype=weight_dtype)
    vae.to(device, dtype=torch.float32)  # as the script keeps it
    shift_factor = vae.config.shift_factor
    scaling_factor = vae.config.scaling_factor
    guided = transformer.config.guidance_embeds

    def loss(batch: dict) -> torch.Tensor:
        pixels = batch["pixel_values"].to(device, dtype=vae.dtype)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample()
        latents = (latents - shift_factor) * scaling_factor
        latents = latents.to(weight_dtype)
        batch_size, channels, height, width = latents.shape
        image_ids = FluxPipeline._prepare_latent_image_ids(
            batch_size, height // 2, width // 2, device, weight_dtype)
        noise = torch.randn_like(latents)
        u = compute_density_for_timestep_sampling(
            weighting_scheme=WEIGHTING_SCHEME, batch_size=batch_size,
            logit_mean=0.0, logit_std=1.0)
        sigmas = shift_flux_sigmas(u, scheduler_config,
                                   (height // 2) * (width // 2))
        sigmas = sigmas.to(device, latents.dtype).view(-1, 1, 1, 1)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        packed = FluxPipeline._pack_latents(noisy, batch_size, channels,
                                            height, width)
        with torch.no_grad():
            prompt_embeds, pooled = encode_flux_prompt(
                text_encoders, batch["input_ids"], device)
        text_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device,
                               dtype=weight_dtype)
        guidance = torch.full((batch_size, ), guidance_scale, device=device,
                              dtype=weight_dtype) if guided else None
        model_pred = transformer(
            hidden_states=packed, timestep=sigmas.flatten(),
            guidance=guidance, pooled_projections=pooled,
            encoder_hidden_states=prompt_embeds, txt_ids=text_ids,
            img_ids=image_ids, return_dict=False)[0]
        model_pred = FluxPipeline._unpack_latents(model_pred, height, width, 1)
        weighting = compute_loss_weighting_for_sd3(
            weighting_scheme=WEIGHTING_SCHEME, sigmas=sigmas)
        target = noise - latents
        error = weighting.float() * (model_pred.float() - target.float())**2
        return error.reshape(batch_size, -1).mean(1).mean()

    return dict(denoiser=transformer, tokenizers=tokenizers,
                max_lengths=max_lengths, loss=loss)


def run_plain(model: str, data: str, resolution: int, batch_size: int,
              rank: int, steps: int, warmup: int, num_workers: int = 0,
              device: str = "cpu", mixed_precision: str | None = None,
              use_t5: bool = True, max_sequence_length: int = 77,
              **_: object) -> dict:
    """Train ``warmup + steps`` steps; return :func:`summary`'s dict.

    ``use_t5`` and ``max_sequence_length`` apply to SD3 models: T5 or its
    zeros, and its tokens per prompt (77, the default of diffusers' SD3
    script); FLUX.1 reads ``max_sequence_length`` and always uses T5."""
    device = torch.device(device)
    torch.manual_seed(0)
    random.seed(0)
    weight_dtype = {None: torch.float32, "bf16": torch.bfloat16,
                    "fp16": torch.float16}[mixed_precision]
    sd3 = os.path.isdir(os.path.join(model, "transformer"))
    family = (flux_parts if is_flux_folder(model) else
              sd3_parts if sd3 else unet_parts)
    parts = family(
        model, rank, device, weight_dtype, use_t5=use_t5,
        max_sequence_length=max_sequence_length)
    denoiser = parts["denoiser"]
    lora_layers = [p for p in denoiser.parameters() if p.requires_grad]
    for param in lora_layers:
        param.data = param.data.float()
    optimizer = torch.optim.AdamW(lora_layers, lr=1e-4, betas=(0.9, 0.999),
                                  weight_decay=1e-2, eps=1e-8)
    loader = DataLoader(ImageFolder(data, resolution, parts["tokenizers"],
                                    parts["max_lengths"]),
                        batch_size=batch_size, shuffle=True,
                        collate_fn=collate, num_workers=num_workers,
                        drop_last=True)
    autocast = torch.autocast(device.type, dtype=weight_dtype,
                              enabled=mixed_precision is not None)
    denoiser.train()
    clock = StepClock(device)
    step = 0
    while step < warmup + steps:
        for batch in loader:
            with autocast:
                loss = parts["loss"](batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora_layers, 1.0)
            optimizer.step()
            optimizer.zero_grad()
            loss.item()  # the script logs the step loss
            clock.mark()
            step += 1
            if step == warmup + steps:
                break
    return summary(clock, warmup, batch_size, device)
