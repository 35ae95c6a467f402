"""The training skeleton every latent-diffusion model family shares.

A family (``StableDiffusion``, and siblings with other text encoders or
UNet conditioning) subclasses :class:`LatentDiffusionModel` and gives its
parts, its prompt encoding, the UNet's conditioning and its diffusers
pipeline; everything else lives here once: adapter injection, the objective
(latents → noise → timesteps → noisy input → prediction → loss) built from
registered components, the trainable-only ``state_dict``, step files, the
non-finite loss guard and ``infer()``.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from mmengine.logging import print_log
from mmengine.model import BaseModel
from peft import PeftConfig, get_peft_model_state_dict
from transformers import CLIPTokenizer, PreTrainedModel

from diffengine.adapters import (
    AdapterKind,
    AdapterPart,
    adapted_convolutions,
    adapter_kind,
    count_trainable_parameters,
    step_format_of,
)
from diffengine.adapters.kohya import canonical_text_encoder_keys, is_text_encoder
from diffengine.architectures import ARCHITECTURES
from diffengine.errors import ConfigError, NonFiniteLossError
from diffengine.hub import hub_download
from diffengine.inference import generate, quiet_loading
from diffengine.models.losses import DiffusionLoss, LossContext
from diffengine.models.schedules import build_schedule
from diffengine.models.utils.components import build_component
from diffengine.models.utils.dtypes import resolve_dtype
from diffengine.models.utils.fingerprint import weights_fingerprint
from diffengine.models.utils.model_folder import check_model_path, resolve_model
from diffengine.models.utils.noise import WhiteNoise
from diffengine.models.utils.text_embedding_cache import TextEmbeddingCache
from diffengine.models.utils.timesteps import TimeStepSampler
from diffengine.randomness import Randomness, stream_seed
from diffengine.registry import MODELS

Conditioning = Any  # what a family's prompt encoding returns


def first_parameter(module: torch.nn.Module) -> torch.Tensor:
    """The first parameter of ``module``: its device and (for the frozen
    base) its dtype.

    diffusers' ``ModelMixin.dtype`` and ``.device`` walk every submodule
    (about 2 ms for SD 1.5's UNet), too slow to ask at every step.
    """
    return next(module.parameters())


class LatentDiffusionModel(BaseModel):
    """A latent diffusion model trained through adapters (LoRA, DoRA, LoHa,
    LoKr: :mod:`diffengine.adapters`).

    The base (VAE, text encoders, UNet) is frozen; only the adapters train,
    in fp32 whatever the dtype of the base or of autocast, so that small
    updates are not lost to rounding.

    Subclasses set :attr:`pipeline_class`, :attr:`architecture` and
    :attr:`text_encoder_classes` and implement :meth:`encode_text`,
    :meth:`unet_conditioning` and :meth:`pipeline_parts` (what their
    pipeline is built from); :meth:`load_parts` loads a diffusers folder of
    a DDPM-trained latent UNet, a KL VAE and CLIP text encoders, and
    :meth:`load_vae` can be overridden.

    Args:
        model (str): Hub id or local diffusers folder of the base model.
        unet_lora_config (dict, optional): ``type`` (``"LoRA"``, with
            ``use_dora=True`` for DoRA; ``"LoHa"``; ``"LoKr"``) and keyword
            arguments of peft's ``LoraConfig`` / ``LoHaConfig`` /
            ``LoKrConfig`` for the UNet; ``target_modules`` may name its
            convolutions (``conv1``, ``conv2``, ``conv_shortcut``,
            ``proj_in``, ``proj_out``, ``conv``). Defaults to None (the UNet
            stays frozen).
        text_encoder_lora_config (dict, optional): The same for the text
            encoder(s). Defaults to None.
        prediction_type (str, optional): ``"epsilon"`` or ``"v_prediction"``
            under ``DDPMSchedule``; None takes the scheduler's. Defaults to
            None.
        schedule (dict, optional): The objective, e.g. ``dict(type=
            "FlowMatchSchedule", shift=3.0)``. Defaults to the family's
            :attr:`default_schedule`.
        loss (dict, optional): The loss, e.g. ``dict(type="SNRL2Loss",
            snr_gamma=5.0)``. Defaults to ``dict(type="L2Loss")``.
        noise_generator (dict, optional): The noise, e.g.
            ``dict(type="OffsetNoise", offset_weight=0.05)``. Defaults to
            ``dict(type="WhiteNoise")``.
        timesteps_generator (dict, optional): How timesteps are drawn, e.g.
            ``dict(type="LogitNormalTimeSteps")``. Defaults to
            ``dict(type="UniformTimeSteps")``.
        input_perturbation_gamma (float): Input perturbation (Ning et al.,
            2023, "Input Perturbation Reduces Exposure Bias in Diffusion
            Models"): the noisy input is made with ``noise + γ · n`` for
            fresh normal n while the target stays ``noise``; 0.1 is the
            paper's. 0 disables it. Defaults to 0.
        gradient_checkpointing (bool): Recompute activations in the backward
            pass to save memory. Defaults to False.
        weight_dtype (str, optional): Keep the frozen base in ``"float16"`` or
            ``"bfloat16"`` (half its memory, and its matmuls run in that
            dtype); the adapters stay fp32. None keeps float32. Defaults to
            None.
        channels_last (bool): Store the UNet's and VAE's convolution weights
            channels-last (NHWC), which tensor cores and oneDNN prefer.
            Defaults to False.
        compile_unet (bool | dict): ``torch.compile`` the UNet in place
            (``nn.Module.compile``, so parameter names stay the same); a dict
            is passed to it as keyword arguments, e.g. ``dict(mode=
            "max-autotune")``. Defaults to False.
        cache_text_embeddings (bool): Encode each distinct caption once and
            reuse its embedding; only with frozen text encoders. Defaults to
            False.
        data_preprocessor (dict, optional): Defaults to
            ``dict(type="SDDataPreprocessor")``.
        noise_offset (float, optional): Replaced by ``noise_generator=dict(
            type="OffsetNoise", offset_weight=...)``; setting it is an error
            that says so.
    """

    #: The diffusers pipeline class of the family.
    pipeline_class: type[DiffusionPipeline] = DiffusionPipeline
    #: Stability AI's model-spec name of the family (``modelspec.
    #: architecture`` of exported files is ``<architecture>/lora``).
    architecture: str = ""
    #: The text encoders, by attribute and subfolder (``text_encoder``,
    #: ``text_encoder_2``, ...), each with the tokenizer of the matching
    #: ``tokenizer*`` subfolder; ``text_encoder_lora_config`` adapts them.
    text_encoder_classes: ClassVar[dict[str, type[PreTrainedModel]]] = {}
    #: The family's objective (:mod:`diffengine.models.schedules`), which
    #: ``schedule`` overrides.
    default_schedule: ClassVar[dict] = dict(type="DDPMSchedule")

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        """The attributes holding the text encoders."""
        return tuple(self.text_encoder_classes)

    def __init__(self,
                 model: str,
                 unet_lora_config: dict | None = None,
                 text_encoder_lora_config: dict | None = None,
                 prediction_type: str | None = None,
                 schedule: dict | None = None,
                 loss: dict | None = None,
                 noise_generator: dict | None = None,
                 timesteps_generator: dict | None = None,
                 input_perturbation_gamma: float = 0.0,
                 gradient_checkpointing: bool = False,
                 weight_dtype: str | None = None,
                 channels_last: bool = False,
                 compile_unet: bool | dict = False,
                 cache_text_embeddings: bool = False,
                 data_preprocessor: dict | None = None,
                 noise_offset: float | None = None) -> None:
        # Built here from diffengine's registry: BaseModel would look it up
        # in mmengine's root registry, which knows no diffengine module.
        super().__init__(data_preprocessor=MODELS.build(
            data_preprocessor or dict(type="SDDataPreprocessor")))
        if noise_offset is not None:
            raise ConfigError(
                f"noise_offset={noise_offset} was replaced by "
                f"noise_generator=dict(type='OffsetNoise', offset_weight="
                f"{noise_offset}).")
        if unet_lora_config is None and text_encoder_lora_config is None:
            raise ConfigError(
                "Neither unet_lora_config nor text_encoder_lora_config is "
                "set: nothing would train.")
        if cache_text_embeddings and text_encoder_lora_config is not None:
            raise ConfigError(
                "cache_text_embeddings=True with text_encoder_lora_config: "
                "the text encoder trains, so its embeddings change every "
                "step; drop one of the two.")
        if input_perturbation_gamma < 0:
            raise ConfigError(
                f"input_perturbation_gamma={input_perturbation_gamma} must be "
                ">= 0.")
        dtype = resolve_dtype(weight_dtype, "weight_dtype")
        self.lora_configs: dict[str, PeftConfig] = {}
        self.adapter_kinds: dict[str, AdapterKind] = {}
        parts = [("unet", unet_lora_config, "unet_lora_config")] + [
            (name, text_encoder_lora_config, "text_encoder_lora_config")
            for name in self.text_encoder_names
        ]
        for part, cfg, key in parts:
            if cfg is not None:
                self.adapter_kinds[part] = adapter_kind(cfg, key)
                # checked before the model loads, so a typo fails at once
                self.adapter_kinds[part].options(cfg, key)
        # one step file holds every part: refuse a mix before any injection
        self.step_format = step_format_of(self.adapter_kinds.values())
        # Recorded in step files: an absolute path or a hub id, which any
        # working directory finds.
        self.base_model = resolve_model(model)
        with hub_download(model, "--cfg-options model.model=/path/to/a/"
                          "diffusers/folder"):
            self.load_parts(model, dtype)
        self.schedule = build_schedule(schedule or self.default_schedule,
                                       self.scheduler, prediction_type)
        self.prediction_type = self.schedule.prediction_type
        self.loss_fn = build_component(loss or dict(type="L2Loss"), "loss",
                                       DiffusionLoss)
        self.schedule.check_loss(self.loss_fn)
        self.noise_generator = build_component(
            noise_generator or dict(type="WhiteNoise"), "noise_generator",
            WhiteNoise)
        self.timesteps_generator = build_component(
            timesteps_generator or dict(type="UniformTimeSteps"),
            "timesteps_generator", TimeStepSampler)
        self.input_perturbation_gamma = input_perturbation_gamma
        self.requires_grad_(False)

        for part, cfg, key in parts:
            if cfg is not None:
                self.lora_configs[part] = self.adapter_kinds[part].inject(
                    getattr(self, part), cfg, key)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            for name in self.text_encoder_names:
                if name in self.lora_configs:
                    getattr(self, name).gradient_checkpointing_enable()
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        if compile_unet:
            self.unet.compile(
                **(compile_unet if isinstance(compile_unet, dict) else {}))
        self.text_embeddings = TextEmbeddingCache(
            self.encode_text) if cache_text_embeddings else None
        counts = self.trainable_parameter_counts()
        kinds = "/".join(dict.fromkeys(
            kind.name for kind in self.adapter_kinds.values()))
        print_log(
            f"{kinds}: {sum(counts.values()):,} trainable parameters ("
            + ", ".join(f"{part} {n:,}" for part, n in counts.items())
            + f"); frozen base in {str(dtype).removeprefix('torch.')}",
            logger="current")

    # ---- what a family gives ------------------------------------------
    def load_parts(self, model: str, dtype: torch.dtype) -> None:
        """Load the frozen parts of ``model`` in ``dtype``: the DDPM
        training scheduler, the tokenizers and text encoders, the VAE
        (:meth:`load_vae`) and the UNet."""
        tokenizers = [name.replace("text_encoder", "tokenizer")
                      for name in self.text_encoder_classes]
        check_model_path(model, (*tokenizers, *self.text_encoder_classes,
                                 "vae", "unet", "scheduler"))
        self.scheduler = DDPMScheduler.from_pretrained(
            model, subfolder="scheduler")
        for (name, encoder_class), tokenizer in zip(
                self.text_encoder_classes.items(), tokenizers, strict=True):
            setattr(self, tokenizer, CLIPTokenizer.from_pretrained(
                model, subfolder=tokenizer))
            setattr(self, name, encoder_class.from_pretrained(
                model, subfolder=name).to(dtype))
        self.vae = self.load_vae(model, dtype)
        # Loaded in the weight dtype: no float32 copy of the UNet in memory.
        self.unet = UNet2DConditionModel.from_pretrained(
            model, subfolder="unet", torch_dtype=dtype)

    def load_vae(self, model: str, dtype: torch.dtype) -> AutoencoderKL:
        """The VAE of ``model``, in ``dtype``."""
        return AutoencoderKL.from_pretrained(model, subfolder="vae",
                                             torch_dtype=dtype)

    def encode_text(self, text: list[str]) -> Conditioning:
        """Prompt conditioning of a list of captions (tensors with a first
        dimension of ``len(text)``, or a tuple of them)."""
        raise NotImplementedError

    def unet_conditioning(self, inputs: dict,
                          prompt: Conditioning) -> dict[str, Any]:
        """Keyword arguments of the UNet besides the sample and timesteps,
        from the batch and its prompt conditioning."""
        raise NotImplementedError

    def pipeline_parts(self) -> dict[str, Any]:
        """Keyword arguments of ``pipeline_class.from_pretrained`` that hand
        it the in-memory modules (and switch off what training lacks)."""
        raise NotImplementedError

    # ---- trainable weights -------------------------------------------
    def init_weights(self) -> None:
        """Nothing to initialise: the base is pretrained and the adapters
        were initialised when injected.

        mmengine's default would read every parameter of the base to log
        its mean.
        """

    @property
    def trainable_parts(self) -> list[str]:
        """Names of the submodules that carry trained adapters."""
        return list(self.lora_configs)

    def trainable_parameter_counts(self) -> dict[str, int]:
        """Trainable parameters of each adapted part, e.g. ``{"unet": n}``."""
        return {part: count_trainable_parameters(getattr(self, part))
                for part in self.lora_configs}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        """Only the trainable adapter weights: the frozen base is not saved."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        trainable = {prefix + n for n, p in self.named_parameters()
                     if p.requires_grad}
        return type(state)((k, v) for k, v in state.items() if k in trainable)

    @contextlib.contextmanager
    def trainable_weights(self, state_dict: dict[str, torch.Tensor]
                          ) -> Iterator[None]:
        """Hold ``state_dict`` (as :meth:`state_dict` gives) in the adapters
        inside the block, and the current weights again after it."""
        current = {k: v.detach().clone() for k, v in self.state_dict().items()}
        self.load_state_dict(state_dict, strict=False)
        try:
            yield
        finally:
            self.load_state_dict(current, strict=False)

    def lora_state_dicts(self, state_dict: dict[str, torch.Tensor] | None = None
                         ) -> dict[str, dict[str, torch.Tensor]]:
        """The adapters of each trained part with peft's names
        (``<module>.lora_A.weight``, ``<module>.hada_w1_a``, ...), text-encoder
        modules named ``text_model.encoder.layers.N...``.

        Args:
            state_dict (dict, optional): Trainable weights as
                :meth:`state_dict` gives them (e.g. a checkpoint's, which a
                hook such as EMA may have changed). Defaults to the model's
                own.
        """
        state_dict = self.state_dict() if state_dict is None else state_dict
        state_dicts = {}
        for part in self.lora_configs:
            prefix = f"{part}."
            part_state = {k[len(prefix):]: v for k, v in state_dict.items()
                          if k.startswith(prefix)}
            state = get_peft_model_state_dict(getattr(self, part),
                                              state_dict=part_state)
            if is_text_encoder(part):
                state = canonical_text_encoder_keys(state)
            state_dicts[part] = {
                k: v.detach().float().cpu().contiguous()
                for k, v in state.items()
            }
        return state_dicts

    def adapter_metadata(self, part: str) -> dict:
        """The peft config of ``part`` as a dict, with sets sorted so that
        the same weights always give the same file."""
        return {
            k: sorted(v) if isinstance(v, (set, frozenset)) else v
            for k, v in self.lora_configs[part].to_dict().items()
        }

    def save_lora_weights(self, save_directory: str,
                          metadata: dict[str, str] | None = None,
                          state_dict: dict[str, torch.Tensor] | None = None
                          ) -> None:
        """Write the step file: ``pytorch_lora_weights.safetensors`` for
        ``load_lora_weights`` (LoRA, DoRA) or the LyCORIS file
        ``lycoris_weights.safetensors`` (LoHa, LoKr).

        The adapter configs go into the file's metadata, so that the alpha
        (and with it the strength) survives the round trip; so do the base
        model, the architecture, the prediction type and ``metadata``,
        under ``diffengine.*`` keys that the loaders ignore and
        ``export_lora`` reads.

        Args:
            save_directory (str): The step folder.
            metadata (dict[str, str], optional): More training facts (step,
                dataset, ...), keys without the ``diffengine.`` prefix.
            state_dict (dict, optional): The trainable weights to write, as
                :meth:`state_dict` gives them. Defaults to the model's own.
        """
        parts = {
            part: AdapterPart(self.adapter_kinds[part],
                              self.adapter_metadata(part), state)
            for part, state in self.lora_state_dicts(state_dict).items()
        }
        training = {"base_model": self.base_model,
                    "architecture": self.architecture,
                    "prediction_type": self.prediction_type,
                    "adapted_convolutions": sum(
                        adapted_convolutions(getattr(self, part))
                        for part in parts),
                    **(metadata or {})}
        self.step_format.write(
            save_directory, parts, self.pipeline_class,
            ARCHITECTURES[self.architecture].kohya_prefixes, training)

    # ---- encoding ------------------------------------------------------
    def encode_prompt(self, text: list[str]) -> Conditioning:
        """:meth:`encode_text`, from the cache when
        ``cache_text_embeddings``."""
        if self.text_embeddings is not None:
            return self.text_embeddings(text)
        return self.encode_text(text)

    @torch.no_grad()
    def encode_images(self, img: torch.Tensor) -> torch.Tensor:
        """The VAE's latent distributions of images in [-1, 1].

        Returns:
            Tensor: B × 2C × H/f × W/f in fp32 on the model's device (C
            latent channels, f the VAE's downsampling): the mean and
            log-variance (diffusers' ``DiagonalGaussianDistribution``
            parameters), from which each step draws its latents.
        """
        weight = first_parameter(self.vae)
        img = img.to(weight.device, weight.dtype)
        return self.vae.encode(img).latent_dist.parameters.float()

    def latent_encoder_id(self) -> str:
        """A string that changes whenever :meth:`encode_images` would give
        other values: a digest of the VAE encoder's weights and dtype."""
        return weights_fingerprint(self.vae.encoder, self.vae.quant_conv)

    # ---- training --------------------------------------------------------
    def forward(self,
                inputs: dict,
                data_samples: Any = None,
                mode: str = "loss") -> dict[str, torch.Tensor]:
        """Denoising loss on a batch; only ``mode="loss"`` is supported."""
        if mode != "loss":
            raise ValueError(
                f"mode={mode!r}: {type(self).__name__} trains with "
                "mode='loss' and generates with infer().")
        return {"loss": self.denoising_loss(inputs)}

    def randomness(self, inputs: dict,
                   generator: torch.Generator | None = None) -> Randomness:
        """The draws of a batch: from ``generator`` when given (all samples
        in turn), else one generator per sample from its ``seed``.

        A batch without seeds (a model used outside ``DeterministicSampler``)
        gets seeds from the global torch generator, once.
        """
        device = first_parameter(self.unet).device
        batch_size = len(inputs["text"])
        if generator is not None:
            return Randomness([generator] * batch_size, device)
        seeds = inputs.get("seed")
        if seeds is None:
            if self.training:
                warnings.warn(
                    "a training batch came without per-sample seeds: noise "
                    "and timesteps are drawn from the global RNG, so process "
                    "count, batch split and resume change the results; use "
                    "sampler=dict(type='DeterministicSampler') (the default).",
                    stacklevel=2)
            seeds = torch.randint(2**63 - 1, (batch_size, )).tolist()
        return Randomness.from_seeds([int(s) for s in seeds], "model", device)

    def denoising_loss(self,
                       inputs: dict,
                       noise: torch.Tensor | None = None,
                       timesteps: torch.Tensor | None = None,
                       generator: torch.Generator | None = None
                       ) -> torch.Tensor:
        """The loss component's value for a batch, in fp32.

        Args:
            inputs (dict): ``img`` (B×3×H×W in [-1, 1]) or ``latents`` (the
                cached output of :meth:`encode_images` for those images),
                ``text`` (B str); optionally ``seed`` (B ints) and
                ``loss_weight`` (B floats, each sample's weight).
            noise (Tensor, optional): Fixed noise, shaped like the latents.
            timesteps (Tensor, optional): Fixed timesteps, one per sample.
            generator (torch.Generator, optional): Draws every random number
                of the batch instead of the per-sample seeds.
        """
        prediction, target, context = self.predict(
            inputs, self.randomness(inputs, generator), noise, timesteps)
        return self.loss_fn(prediction, target, context)

    def predict(self,
                inputs: dict,
                randomness: Randomness,
                noise: torch.Tensor | None = None,
                timesteps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, LossContext]:
        """One denoising step: the UNet's prediction, its target and what
        the loss may weigh them by.

        Each sample draws, in this order: its latent from the VAE's
        distribution, its noise (:attr:`noise_generator`), its timestep
        (:attr:`timesteps_generator` through :attr:`schedule`) and, with
        input perturbation, the perturbation.
        """
        moments = inputs.get("latents")
        if moments is None:
            moments = self.encode_images(inputs["img"])
        # fp32 from here on: the target and the noisy input stay exact
        # whatever the weight dtype; only the UNet's input is cast.
        latent_dist = DiagonalGaussianDistribution(moments.float())
        mean = latent_dist.mean
        latents = mean + latent_dist.std * randomness.randn(*mean.shape[1:])
        latents = latents * self.vae.config.scaling_factor
        if noise is None:
            noise = self.noise_generator(latents, randomness)
        noise = noise.to(latents)
        if timesteps is None:
            timesteps = self.schedule.sample_timesteps(
                self.timesteps_generator, randomness, latents)
        timesteps = timesteps.to(latents.device)
        input_noise = noise
        if self.input_perturbation_gamma > 0:
            input_noise = noise + self.input_perturbation_gamma * (
                randomness.randn(*noise.shape[1:]))
        noisy_latents = self.schedule.noisy(latents, input_noise, timesteps)
        target = self.schedule.target(latents, noise, timesteps)
        prompt = self.encode_prompt(list(inputs["text"]))
        unet_dtype = first_parameter(self.unet).dtype
        prediction = self.unet(noisy_latents.to(unet_dtype), timesteps,
                               **self.unet_conditioning(inputs, prompt)).sample
        weight = inputs.get("loss_weight")
        context = self.schedule.loss_context(
            timesteps, None if weight is None else torch.as_tensor(weight))
        return prediction.float(), target.float(), context

    @torch.no_grad()
    def validation_loss(self, inputs: dict,
                        timesteps: Sequence[int]) -> torch.Tensor:
        """Each sample's loss at fixed noise and fixed timesteps, B, fp32.

        A sample is noised once at every timestep of ``timesteps``; its VAE
        sample and noises come from a generator seeded by its ``seed`` (the
        "validation" stream), so the value depends on the sample and the
        weights alone: not on the batch, the process count or the run. It
        is the mean over the timesteps of the loss component's value (the
        per-sample weights left out).

        Args:
            inputs (dict): A batch as :meth:`denoising_loss` takes it, with
                ``seed``.
            timesteps (Sequence[int]): The denoiser's timesteps of every
                sample (under flow matching, σ = t/T).
        """
        if inputs.get("seed") is None:
            raise ValueError(
                "validation_loss needs a seed per sample (inputs['seed']); "
                "read the validation set through DeterministicSampler.")
        fixed = torch.as_tensor(list(timesteps), dtype=torch.long)
        copies = len(fixed)
        losses = []
        for i, seed in enumerate(inputs["seed"]):
            # The sample alone, once per timestep: its numbers cannot depend
            # on the other samples of the batch.
            sample = {
                key: (value[i:i + 1].expand(copies, *value.shape[1:])
                      if isinstance(value, torch.Tensor) else
                      [value[i]] * copies)
                for key, value in inputs.items()
                # everything a sample carries (SDXL's time_ids too) but
                # what is fixed here
                if key not in ("seed", "loss_weight")}
            generator = torch.Generator().manual_seed(
                stream_seed(int(seed), "validation"))
            randomness = Randomness([generator] * copies,
                                    first_parameter(self.unet).device)
            prediction, target, context = self.predict(
                sample, randomness, timesteps=fixed)
            losses.append(self.loss_fn.per_sample(prediction, target,
                                                  context).mean())
        return torch.stack(losses)

    def parse_losses(self, losses: dict) -> tuple[torch.Tensor, dict]:
        """mmengine's loss sum, refused when it is NaN or infinite.

        The check runs before the optimizer step, so non-finite values never
        reach the LoRA weights. Across processes the verdict is shared, so
        that every rank stops at the same iteration instead of one waiting
        for the others' gradients.
        """
        loss, log_vars = super().parse_losses(losses)
        finite = torch.isfinite(loss.detach()).float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            raise NonFiniteLossError(
                f"the loss is {loss.item()} (on this or another process)")
        return loss, log_vars

    # ---- generation ------------------------------------------------------
    def pipeline(self) -> DiffusionPipeline:
        """A diffusers pipeline over the in-memory (adapted) modules.

        The scheduler is loaded from the base model exactly as
        ``DiffusionPipeline.from_pretrained(base)`` loads it, so images match
        what users get after ``load_lora_weights``.
        """
        with quiet_loading():
            pipe = self.pipeline_class.from_pretrained(
                self.base_model, **self.pipeline_parts())
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def infer(self,
              prompts: list[str],
              negative_prompt: str | None = None,
              height: int | None = None,
              width: int | None = None,
              num_inference_steps: int = 50,
              guidance_scale: float = 7.5,
              seed: int | Sequence[int] = 0,
              output_type: str = "pil",
              progress=None) -> list[np.ndarray]:
        """Generate images with the model as trained so far.

        Images come from :func:`diffengine.inference.generate`, as the
        ``demo`` tool's do, so a step folder loaded in ``demo`` reproduces
        them.

        Args:
            prompts (list[str]): The prompts.
            negative_prompt (str, optional): Defaults to None.
            height (int, optional): Defaults to the UNet's sample size × the
                VAE scale factor.
            width (int, optional): Defaults likewise.
            num_inference_steps (int): Defaults to 50.
            guidance_scale (float): Classifier-free guidance. Defaults to 7.5.
            seed (int | Sequence[int]): One image per prompt and seed; each
                seeds its own CPU generator, so that the same seed gives the
                same image on any device. Defaults to 0.
            output_type (str): ``"pil"`` returns H×W×3 uint8 arrays, ``"np"``
                float arrays in [0, 1]. Defaults to ``"pil"``.
            progress (tqdm, optional): A bar advanced at every denoising
                step (``inference.sampling_progress``). Defaults to None.

        Returns:
            list[np.ndarray]: The images of the first prompt (one per seed),
            then those of the second, and so on.
        """
        seeds = [seed] if isinstance(seed, int) else list(seed)
        was_training = self.training
        self.eval()
        try:
            pipe = self.pipeline()
            return [
                image for prompt in prompts
                for image in generate(
                    pipe, prompt, seeds,
                    negative_prompt=negative_prompt,
                    height=height,
                    width=width,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    output_type=output_type,
                    progress=progress)
            ]
        finally:
            self.train(was_training)
