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
from transformers import CLIPTextModel, CLIPTokenizer

from benchmarks.measure import StepClock, summary

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class ImageFolder(Dataset):
    """Images and captions of ``metadata.jsonl``, transformed as diffusers'
    script does (``Resize``, ``RandomCrop``, ``RandomHorizontalFlip``,
    ``ToTensor``, ``Normalize([0.5], [0.5])``), captions tokenized."""

    def __init__(self, folder: str, resolution: int,
                 tokenizer: CLIPTokenizer) -> None:
        with open(os.path.join(folder, "metadata.jsonl")) as f:
            self.rows = [json.loads(line) for line in f if line.strip()]
        self.folder = folder
        self.resolution = resolution
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        image = Image.open(os.path.join(self.folder, row["file_name"]))
        image = image.convert("RGB")
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
        input_ids = self.tokenizer(
            row["text"], max_length=self.tokenizer.model_max_length,
            padding="max_length", truncation=True,
            return_tensors="pt").input_ids[0]
        return {"pixel_values": pixels, "input_ids": input_ids}


def collate(examples: list[dict]) -> dict:
    return {
        "pixel_values": torch.stack(
            [e["pixel_values"] for e in examples]).contiguous().float(),
        "input_ids": torch.stack([e["input_ids"] for e in examples]),
    }


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
    tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
    noise_scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")
    text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank,
                                init_lora_weights="gaussian",
                                target_modules=UNET_TARGETS))
    unet.to(device, dtype=weight_dtype)
    vae.to(device, dtype=weight_dtype)
    text_encoder.to(device, dtype=weight_dtype)
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    for param in lora_layers:
        param.data = param.data.float()
    optimizer = torch.optim.AdamW(lora_layers, lr=1e-4, betas=(0.9, 0.999),
                                  weight_decay=1e-2, eps=1e-8)
    loader = DataLoader(ImageFolder(data, resolution, tokenizer),
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
                pixels = batch["pixel_values"].to(device, dtype=weight_dtype)
                latents = vae.encode(pixels).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                timesteps = torch.randint(
                    0, noise_scheduler.config.num_train_timesteps,
                    (latents.shape[0], ), device=device).long()
                noisy_latents = noise_scheduler.add_noise(latents, noise,
                                                          timesteps)
                encoder_hidden_states = text_encoder(
                    batch["input_ids"].to(device), return_dict=False)[0]
                model_pred = unet(noisy_latents, timesteps,
                                  encoder_hidden_states, return_dict=False)[0]
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
