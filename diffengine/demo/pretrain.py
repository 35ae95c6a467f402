"""Train the demo's tiny Stable-Diffusion-1.x-shaped base from scratch.

Two stages, as Stable Diffusion was built (Rombach et al., 2022, "High-
Resolution Image Synthesis with Latent Diffusion Models"):

1. the VAE, a KL-regularised autoencoder with SD's 8× downsampling (64 px
   images, 8×8×4 latents), on random scenes of flat shapes
   (:func:`~diffengine.demo.scenes.draw_scene`) and captioned shapes:
   L1 + L2 reconstruction (SD's: L1 + LPIPS + a discriminator) plus SD's KL
   weight of 1e-6 on per-image sums; its ``scaling_factor`` is then
   set, as SD's 0.18215 was, so that the latents have unit variance;
2. the UNet and the CLIP text encoder together, as a text-conditioned
   latent diffusion model on captioned shapes (epsilon prediction, SD's
   scaled-linear DDPM schedule, 10% empty captions for classifier-free
   guidance).

The text encoder trains with the UNet rather than staying frozen: SD
freezes CLIP because CLIP arrives pretrained, and a frozen random encoder
would only hand the UNet random features of characters. Trained jointly (as
the LDM paper's own text-to-image model trained its transformer), it learns
word features the UNet can use; characters no caption holds (the ``z`` of
the held-out word) keep their random embeddings.

Every random draw comes from generators seeded by ``settings.seed``, so the
same settings, torch version and thread count rebuild the same weights.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffengine.datasets.transforms.formatting import ImageToNormalizedTensor
from diffengine.demo.scenes import (
    Caption,
    concept_captions,
    draw_captioned,
    draw_scene,
    pretraining_captions,
)
from diffengine.demo.scoring import ShapeScorer
from diffengine.errors import ConfigError, MissingFileError
from diffengine.fileio import atomic_directory
from diffengine.inference import generate
from diffengine.testing import save_pipeline, write_char_tokenizer
from diffengine.version import __version__

SETTINGS_FILE = "pretraining.json"


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that decides the weights; recorded in ``pretraining.json``.

    The defaults build the shipped base.
    """

    seed: int = 0
    # One thread: results do not depend on how work is split across
    # threads, and a shared machine slows one thread far less than two.
    threads: int = 1
    size: int = 64
    vae_block_out_channels: tuple[int, ...] = (16, 32, 32, 32)
    vae_steps: int = 3500
    vae_batch_size: int = 8
    vae_lr: float = 2e-3
    # SD's KL weight, on sums over each image's pixels and latents.
    kl_weight: float = 1e-6
    # Share of each VAE batch drawn from the captioned shapes, so that the
    # VAE is exact on the colours the UNet will draw.
    vae_captioned_fraction: float = 0.5
    text_hidden_size: int = 64
    text_layers: int = 3
    text_intermediate_size: int = 128
    unet_block_out_channels: tuple[int, ...] = (32, 64, 64)
    images_per_caption: int = 256
    unet_steps: int = 3000
    unet_batch_size: int = 48
    unet_lr: float = 1e-3
    caption_dropout: float = 0.1
    warmup_steps: int = 100
    # Seeds of the images that score the finished base on its captions.
    eval_seeds: tuple[int, ...] = (0, 1, 2, 3)
    eval_steps: int = 50


def build_vae(settings: PretrainSettings) -> AutoencoderKL:
    levels = len(settings.vae_block_out_channels)
    return AutoencoderKL(
        block_out_channels=settings.vae_block_out_channels,
        down_block_types=("DownEncoderBlock2D", ) * levels,
        up_block_types=("UpDecoderBlock2D", ) * levels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(settings.vae_block_out_channels) // 2,
        sample_size=settings.size)


def build_text_encoder(settings: PretrainSettings,
                       tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.text_hidden_size,
        intermediate_size=settings.text_intermediate_size,
        num_hidden_layers=settings.text_layers,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=settings.text_hidden_size))


def build_unet(settings: PretrainSettings, latent_size: int
               ) -> UNet2DConditionModel:
    levels = len(settings.unet_block_out_channels)
    # Attention at every level but the coarsest, as in SD 1.x.
    return UNet2DConditionModel(
        block_out_channels=settings.unet_block_out_channels,
        layers_per_block=1,
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", ) * (levels - 1) +
        ("DownBlock2D", ),
        up_block_types=("UpBlock2D", ) + ("CrossAttnUpBlock2D", ) *
        (levels - 1),
        cross_attention_dim=settings.text_hidden_size,
        attention_head_dim=8,
        norm_num_groups=min(settings.unet_block_out_channels) // 2)


def to_tensor(images: list) -> torch.Tensor:
    """PIL images → B×3×H×W in [-1, 1], as the training pipeline makes them."""
    convert = ImageToNormalizedTensor()
    return torch.stack([convert.transform({"img": im})["img"] for im in images])


def cosine_schedule(optimizer: torch.optim.Optimizer, steps: int,
                    warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine decay to zero."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + np.cos(np.pi * (step - warmup) /
                                 max(1, steps - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_vae(vae: AutoencoderKL, settings: PretrainSettings,
              log: Callable[[str], None]) -> dict:
    """Train ``vae`` in place; returns the last losses."""
    rng = random.Random(f"vae-{settings.seed}")
    generator = torch.Generator().manual_seed(settings.seed)
    captions = pretraining_captions()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.vae_lr,
                                  weight_decay=0.0)
    schedule = cosine_schedule(optimizer, settings.vae_steps,
                               settings.warmup_steps)
    vae.train()
    recent: list[tuple[float, float]] = []
    for step in range(settings.vae_steps):
        images = [
            draw_captioned(rng.choice(captions), settings.size, rng)
            if rng.random() < settings.vae_captioned_fraction else
            draw_scene(settings.size, rng)
            for _ in range(settings.vae_batch_size)
        ]
        x = to_tensor(images)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(z).sample
        l1 = (reconstruction - x).abs().mean()
        # L2 beside L1 keeps flat colours exact.
        l2 = (reconstruction - x).pow(2).mean()
        # Per-image sums, as SD's loss weighs them.
        kl = posterior.kl().mean()
        loss = (l1 + l2) * x[0].numel() + settings.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        recent = [*recent, (l1.item(), kl.item())][-50:]
        if (step + 1) % 100 == 0 or step + 1 == settings.vae_steps:
            mean_l1, mean_kl = np.mean(recent, axis=0)
            log(f"vae step {step + 1}/{settings.vae_steps}: "
                f"l1 {mean_l1:.4f} (of [-1, 1]), kl {mean_kl:.1f}")
    vae.eval()
    mean_l1, mean_kl = np.mean(recent, axis=0)
    return {"l1": float(mean_l1), "kl": float(mean_kl)}


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, settings: PretrainSettings
                ) -> tuple[torch.Tensor, list[Caption]]:
    """The latent distributions of ``images_per_caption`` drawings of every
    caption, and their captions."""
    rng = random.Random(f"unet-data-{settings.seed}")
    captions = [c for c in pretraining_captions()
                for _ in range(settings.images_per_caption)]
    moments = []
    for start in range(0, len(captions), 256):
        images = [draw_captioned(c, settings.size, rng)
                  for c in captions[start:start + 256]]
        moments.append(vae.encode(to_tensor(images)).latent_dist.parameters)
    return torch.cat(moments), captions


def latent_scaling_factor(moments: torch.Tensor) -> float:
    """1 / std of the latent means: SD's 0.18215 was set the same way."""
    return float(1.0 / DiagonalGaussianDistribution(moments).mean.std())


def train_unet(unet: UNet2DConditionModel, text_encoder: CLIPTextModel,
               tokenizer: CLIPTokenizer, moments: torch.Tensor,
               captions: list[Caption], scaling_factor: float,
               scheduler: DDPMScheduler, settings: PretrainSettings,
               log: Callable[[str], None]) -> dict:
    """Train ``unet`` and ``text_encoder`` in place; returns the last loss."""
    generator = torch.Generator().manual_seed(settings.seed + 1)
    texts = [c.text() for c in captions]
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=settings.unet_lr,
                                  weight_decay=0.0)
    schedule = cosine_schedule(optimizer, settings.unet_steps,
                               settings.warmup_steps)
    unet.train()
    text_encoder.train()
    recent: list[float] = []
    for step in range(settings.unet_steps):
        index = torch.randint(0, len(texts), (settings.unet_batch_size, ),
                              generator=generator)
        drop = torch.rand(len(index), generator=generator)
        batch_texts = ["" if d < settings.caption_dropout else texts[i]
                       for i, d in zip(index.tolist(), drop.tolist(),
                                       strict=True)]
        posterior = DiagonalGaussianDistribution(moments[index])
        latents = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=generator)
        latents = latents * scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps,
                                  (len(index), ), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        input_ids = tokenizer(batch_texts, max_length=tokenizer.model_max_length,
                              padding="max_length", truncation=True,
                              return_tensors="pt").input_ids
        prediction = unet(noisy, timesteps, text_encoder(input_ids)[0]).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        recent = [*recent, loss.item()][-50:]
        if (step + 1) % 100 == 0 or step + 1 == settings.unet_steps:
            log(f"unet step {step + 1}/{settings.unet_steps}: "
                f"loss {np.mean(recent):.4f}")
    unet.eval()
    text_encoder.eval()
    return {"loss": float(np.mean(recent))}


def score_base(path: str, settings: PretrainSettings,
               captions: list[Caption] | None = None) -> dict:
    """Sample every pretraining caption with the default pipeline (PNDM,
    guidance 7.5) and score the images.

    Returns:
        dict: ``color``, ``shape`` and ``score`` (means of
        :class:`~diffengine.demo.scoring.ShapeScore`), and
        ``shape_accuracy``, the share of images whose object matches the
        caption's shape best.
    """
    pipe = StableDiffusionPipeline.from_pretrained(
        path, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    scorer = ShapeScorer()
    parts = []
    for caption in captions or pretraining_captions():
        for image in generate(pipe, caption.text(), list(settings.eval_seeds),
                              num_inference_steps=settings.eval_steps):
            parts.append(scorer.score(image, caption))
            parts[-1] = dataclasses.replace(
                parts[-1], drawn_shape=parts[-1].drawn_shape == caption.shape)
    return {
        "color": float(np.mean([p.color for p in parts])),
        "shape": float(np.mean([p.shape for p in parts])),
        "score": float(np.mean([p.score for p in parts])),
        "shape_accuracy": float(np.mean([p.drawn_shape for p in parts])),
        "images": len(parts),
    }


def pretrain_demo_base(out: str,
                       settings: PretrainSettings | None = None,
                       log: Callable[[str], None] = print) -> dict:
    """Train the base, write it to ``out`` (a diffusers folder) with
    ``pretraining.json``, and return what that file records.

    The UNet and the VAE are stored in float16 (diffusers loads them as
    float32), the text encoder in float32.
    """
    settings = settings or PretrainSettings()
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        return _pretrain(out, settings, log)
    finally:
        torch.set_num_threads(threads)


def _pretrain(out: str, settings: PretrainSettings,
              log: Callable[[str], None]) -> dict:
    torch.manual_seed(settings.seed)
    started = time.perf_counter()
    record: dict = {"settings": dataclasses.asdict(settings)}
    with atomic_directory(out) as tmp:
        tokenizer = write_char_tokenizer(os.path.join(tmp, "tokenizer"))
        vae = build_vae(settings)
        record["vae"] = train_vae(vae, settings, log)
        record["vae"]["seconds"] = round(time.perf_counter() - started, 1)
        moments, captions = encode_pool(vae, settings)
        scaling_factor = latent_scaling_factor(moments)
        vae.register_to_config(scaling_factor=scaling_factor)
        log(f"latent scaling factor {scaling_factor:.5f}")
        text_encoder = build_text_encoder(settings, tokenizer)
        latent_size = settings.size // 2 ** (
            len(settings.vae_block_out_channels) - 1)
        unet = build_unet(settings, latent_size)
        scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear",
                                  num_train_timesteps=1000)
        unet_started = time.perf_counter()
        record["unet"] = train_unet(unet, text_encoder, tokenizer, moments,
                                    captions, scaling_factor, scheduler,
                                    settings, log)
        record["unet"]["seconds"] = round(time.perf_counter() - unet_started, 1)
        save_pipeline(tmp, unet.half(), vae.half(), text_encoder, tokenizer)
        record["training_seconds"] = round(time.perf_counter() - started, 1)
        record["parameters"] = {
            name: sum(p.numel() for p in module.parameters())
            for name, module in (("unet", unet), ("vae", vae),
                                 ("text_encoder", text_encoder))}
        record["scores"] = score_base(tmp, settings)
        log(f"scores on the pretraining captions: {record['scores']}")
        # The held-out concept: what the base draws for a word it never read.
        record["concept_scores"] = score_base(tmp, settings,
                                              concept_captions())
        log(f"scores on the concept's captions: {record['concept_scores']}")
        record["environment"] = {
            "diffengine": __version__,
            "torch": torch.__version__,
            "machine": platform.machine(),
        }
        with open(os.path.join(tmp, SETTINGS_FILE), "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
    return record


def read_settings(path: str) -> PretrainSettings:
    """The settings recorded in ``path/pretraining.json``."""
    record = os.path.join(path, SETTINGS_FILE)
    if not os.path.isfile(record):
        raise MissingFileError(
            f"{record!r} does not exist; --like takes a base folder that "
            "tools/pretrain_demo_base.py wrote.")
    with open(record) as f:
        recorded = json.load(f)["settings"]
    names = {f.name: f for f in dataclasses.fields(PretrainSettings)}
    unknown = sorted(set(recorded) - set(names))
    if unknown:
        raise ConfigError(f"{path}/{SETTINGS_FILE}: unknown settings {unknown}.")
    return PretrainSettings(**{
        k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
