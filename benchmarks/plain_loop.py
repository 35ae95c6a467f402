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
"""
from __future__ import annotations

import json
import os
import random

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from benchmarks.measure import StepClock, summary

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class ImageFolder(Dataset):
    """Images and captions of ``metadata.jsonl``, transformed as diffusers'
    script does (``Resize``, ``RandomCrop``, ``RandomHorizontalFlip``,
    ``ToTensor``, ``Normalize([0.5], [0.5])``), captions tokenized."""

    def __init__(self, folder: str, resolution: int,
                 tokenizers: list[CLIPTokenizer]) -> None:
        with open(os.path.join(folder, "metadata.jsonl")) as f:
            self.rows = [json.loads(line) for line in f if line.strip()]
        self.folder = folder
        self.resolution = resolution
        self.tokenizers = tokenizers

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
            row["text"], max_length=tokenizer.model_max_length,
            padding="max_length", truncation=True,
            return_tensors="pt").input_ids[0] for tokenizer in self.tokenizers]
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


def run_plain(model: str, data: str, resolution: int, batch_size: int,
              rank: int, steps: int, warmup: int, num_workers: int = 0,
              device: str = "cpu", mixed_precision: str | None = None,
              **_: object) -> dict:
    """Train ``warmup + steps`` steps; return :func:`summary`'s dict."""
    device = torch.device(device)
    torch.manual_seed(0)
    random.seed(0)
    weight_dtype = {None: torch.float32, "bf16": torch.bfloat16,
                    "fp16": torch.float16}[mixed_precision]
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
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    for param in lora_layers:
        param.data = param.data.float()
    optimizer = torch.optim.AdamW(lora_layers, lr=1e-4, betas=(0.9, 0.999),
                                  weight_decay=1e-2, eps=1e-8)
    loader = DataLoader(ImageFolder(data, resolution, tokenizers),
                        batch_size=batch_size, shuffle=True,
                        collate_fn=collate, num_workers=num_workers,
                        drop_last=True)
    autocast = torch.autocast(device.type, dtype=weight_dtype,
                              enabled=mixed_precision is not None)
    unet.train()
    clock = StepClock(device)
    step = 0
    while step < warmup + steps:
        for batch in loader:
            with autocast:
                pixels = batch["pixel_values"].to(device, dtype=vae.dtype)
                latents = vae.encode(pixels).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps,
                    (latents.shape[0], ), device=device).long()
                noisy_latents = noise_scheduler.add_noise(latents, noise,
                                                          timesteps)
                conditioning = encode_prompt(text_encoders,
                                             batch["input_ids"], device)
                if sdxl:
                    conditioning["added_cond_kwargs"]["time_ids"] = batch[
                        "time_ids"].to(device)
                model_pred = unet(noisy_latents, timesteps, **conditioning,
                                  return_dict=False)[0]
                loss = F.mse_loss(model_pred.float(), noise.float())
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
