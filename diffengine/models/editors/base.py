"""The training skeleton every latent-diffusion model family shares.

A family (``StableDiffusion``, ``StableDiffusionXL``, ...) subclasses
:class:`LatentDiffusionModel`, declares its parts as data (denoiser, training
scheduler, text encoders with their tokenizers, pipeline, architecture) and
writes two methods: its prompt encoding and the call of its denoiser;
everything else lives here once: loading the parts, adapter injection, the
objective (latents → noise → timesteps → noisy input → prediction → loss)
built from registered components and the non-finite loss guard. The
trainable weights and step files are :class:`~diffengine.models.
adapter_io.AdapterIO`'s, ``infer()`` and the pipeline
:class:`~diffengine.models.sampling.Sampling`'s.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from diffusers import AutoencoderKL, DiffusionPipeline, ModelMixin, SchedulerMixin
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from mmengine.logging import print_log
from mmengine.model import BaseModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from diffengine.errors import ConfigError, NonFiniteLossError
from diffengine.hub import hub_download
from diffengine.models.adapter_io import AdapterIO
from diffengine.models.losses import DiffusionLoss, LossContext
from diffengine.models.sampling import Sampling
from diffengine.models.schedules import build_schedule
from diffengine.models.utils.components import build_component
from diffengine.models.utils.dtypes import resolve_dtype
from diffengine.models.utils.fingerprint import weights_fingerprint
from diffengine.models.utils.model_folder import check_model_path, resolve_model
from diffengine.models.utils.noise import WhiteNoise
from diffengine.models.utils.offloading import (
    BlockOffloader,
    build_group_offloading,
)
from diffengine.models.utils.quantization import (
    build_quantization,
    keep_quantized_for_backward,
)
from diffengine.models.utils.text_embedding_cache import (
    DROP_OPTION,
    TextEmbeddingCache,
    dataset_captions,
)
from diffengine.models.utils.timesteps import TimeStepSampler
from diffengine.randomness import Randomness, stream_seed
from diffengine.registry import MODELS

Conditioning = Any  # what a family's prompt encoding returns


@dataclass(frozen=True)
class TextEncoder:
    """One text encoder of a family, as its diffusers folder holds it.

    Attributes:
        name (str): Its attribute and subfolder (``text_encoder``,
            ``text_encoder_2``, ...); the tokenizer is in the matching
            ``tokenizer*`` attribute and subfolder.
        model_class (type[PreTrainedModel]): Its transformers class.
        tokenizer_class (type[PreTrainedTokenizerBase]): Its tokenizer's.
        lora (bool): Whether ``text_encoder_lora_config`` adapts it.
            Defaults to True.
    """

    name: str
    model_class: type[PreTrainedModel]
    tokenizer_class: type[PreTrainedTokenizerBase]
    lora: bool = True

    @property
    def tokenizer(self) -> str:
        """The attribute and subfolder of its tokenizer."""
        return self.name.replace("text_encoder", "tokenizer")


def first_parameter(module: torch.nn.Module) -> torch.Tensor:
    """The first parameter of ``module``: its device and (for the frozen
    base) its dtype.

    diffusers' ``ModelMixin.dtype`` and ``.device`` walk every submodule
    (about 2 ms for SD 1.5's denoiser), too slow to ask at every step.
    """
    return next(module.parameters())


def token_ids(tokenizer: Any, text: list[str], encoder: torch.nn.Module,
              max_length: int | None = None) -> torch.Tensor:
    """``text`` tokenized as the pipelines tokenize a prompt (padded and
    truncated to ``max_length``, the tokenizer's own by default), on
    ``encoder``'s device."""
    return tokenizer(
        text, max_length=max_length or tokenizer.model_max_length,
        padding="max_length", truncation=True,
        return_tensors="pt").input_ids.to(first_parameter(encoder).device)


class LatentDiffusionModel(AdapterIO, Sampling, BaseModel):
    """A latent diffusion model trained through adapters (LoRA, DoRA, LoHa,
    LoKr: :mod:`diffengine.adapters`).

    The base (VAE, text encoders, denoiser) is frozen; only the adapters
    train, in fp32 whatever the dtype of the base or of autocast, so that
    small updates are not lost to rounding.

    A family declares its parts in class attributes (:attr:`denoiser_name`,
    :attr:`denoiser_class`, :attr:`scheduler_class`, :attr:`text_encoders`,
    :attr:`pipeline_class`, :attr:`pipeline_options`, :attr:`architecture`),
    from which :meth:`load_parts` loads a diffusers folder and
    :meth:`pipeline_parts` builds the pipeline, and implements
    :meth:`encode_text` and :meth:`denoise`; :meth:`load_vae` can be
    overridden.

    Args:
        model (str): Hub id or local diffusers folder of the base model.
        unet_lora_config (dict, optional): The denoiser's adapter, for a
            family whose denoiser is named ``unet``: ``type`` (``"LoRA"``,
            with ``use_dora=True`` for DoRA; ``"LoHa"``; ``"LoKr"``) and
            keyword arguments of peft's ``LoraConfig`` / ``LoHaConfig`` /
            ``LoKrConfig``; ``target_modules`` may name convolutions
            (``conv1``, ``conv2``, ``conv_shortcut``, ``proj_in``,
            ``proj_out``, ``conv``). Defaults to None (the denoiser stays
            frozen).
        text_encoder_lora_config (dict, optional): The same for the text
            encoders whose :class:`TextEncoder` sets ``lora``. Defaults to
            None.
        transformer_lora_config (dict, optional): The denoiser's adapter,
            as ``unet_lora_config``, for a family whose denoiser is named
            ``transformer``. Defaults to None.
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
        quantization (dict, optional): Store the frozen denoiser (and with
            ``text_encoders=True`` the text encoders) quantized, through
            diffusers' and transformers' ``quantization_config``:
            ``dict(backend="torchao" | "quanto" | "bitsandbytes", weights=
            "int8" | "float8" | "int4" | "nf4" | "fp4", text_encoders=
            False)`` (:mod:`diffengine.models.utils.quantization`; on a CPU
            torchao or quanto with int8 or float8). The adapters train on
            top in fp32 and load into the unquantized base. None keeps the
            base unquantized. Defaults to None.
        group_offloading (dict, optional): Keep the frozen denoiser's blocks
            in CPU memory; each comes onto the training device just before
            it runs, in the forward and in the backward pass
            (:mod:`diffengine.models.utils.offloading`): ``dict(
            offload_type="block_level" | "leaf_level",
            num_blocks_per_group=1, use_stream=None)`` (None: streams where
            CUDA is available), the names of diffusers'
            ``apply_group_offloading``. The adapters stay on the device.
            None keeps the whole denoiser on the device. Defaults to None.
        channels_last (bool): Store the denoiser's and VAE's convolution
            weights channels-last (NHWC), which tensor cores and oneDNN
            prefer. Defaults to False.
        compile_denoiser (bool | dict): ``torch.compile`` the denoiser in
            place (``nn.Module.compile``, so parameter names stay the same);
            a dict is passed to it as keyword arguments, e.g. ``dict(mode=
            "max-autotune")``. Defaults to False.
        compile_unet (bool | dict): The name ``compile_denoiser`` had when
            every denoiser was a UNet; either may be set, not both.
            Defaults to False.
        cache_text_embeddings (bool): Encode each distinct caption once and
            reuse its embedding; only with frozen text encoders. Defaults to
            False.
        data_preprocessor (dict, optional): Defaults to
            ``dict(type="DiffusionDataPreprocessor")``.
        noise_offset (float, optional): Replaced by ``noise_generator=dict(
            type="OffsetNoise", offset_weight=...)``; setting it is an error
            that says so.
    """

    #: The denoiser's attribute, subfolder and adapter part name
    #: (``"unet"``, ``"transformer"``); its adapter option is
    #: ``<denoiser_name>_lora_config``.
    denoiser_name: ClassVar[str]
    #: The denoiser's diffusers class.
    denoiser_class: ClassVar[type[ModelMixin]]
    #: The training scheduler, loaded from the ``scheduler`` subfolder.
    scheduler_class: ClassVar[type[SchedulerMixin]]
    #: The text encoders, in the order the pipeline numbers them.
    text_encoders: ClassVar[tuple[TextEncoder, ...]] = ()
    #: The diffusers pipeline class of the family.
    pipeline_class: ClassVar[type[DiffusionPipeline]] = DiffusionPipeline
    #: More keyword arguments of ``pipeline_class.from_pretrained``: the
    #: parts training does without, switched off.
    pipeline_options: ClassVar[dict[str, Any]] = {}
    #: Stability AI's model-spec name of the family (``modelspec.
    #: architecture`` of exported files is ``<architecture>/lora``).
    architecture: ClassVar[str] = ""
    #: The family's objective (:mod:`diffengine.models.schedules`), which
    #: ``schedule`` overrides.
    default_schedule: ClassVar[dict]
    #: ``num_inference_steps`` and ``guidance_scale`` of :meth:`infer`, the
    #: sample hook and ``demo`` when neither the call nor the config gives
    #: them: those of the family's pipeline or model card.
    sampling_defaults: ClassVar[dict[str, Any]] = dict(
        num_inference_steps=50, guidance_scale=7.5)

    @property
    def denoiser(self) -> ModelMixin:
        """The denoiser (the attribute :attr:`denoiser_name` names)."""
        return getattr(self, self.denoiser_name)

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        """The attributes of the text encoders that
        ``text_encoder_lora_config`` adapts (each :class:`TextEncoder` with
        ``lora``); :attr:`text_encoders` lists them all."""
        return tuple(e.name for e in self.text_encoders if e.lora)

    def __init__(self,
                 model: str,
                 unet_lora_config: dict | None = None,
                 text_encoder_lora_config: dict | None = None,
                 transformer_lora_config: dict | None = None,
                 prediction_type: str | None = None,
                 schedule: dict | None = None,
                 loss: dict | None = None,
                 noise_generator: dict | None = None,
                 timesteps_generator: dict | None = None,
                 input_perturbation_gamma: float = 0.0,
                 gradient_checkpointing: bool = False,
                 weight_dtype: str | None = None,
                 quantization: dict | None = None,
                 group_offloading: dict | None = None,
                 channels_last: bool = False,
                 compile_denoiser: bool | dict = False,
                 compile_unet: bool | dict = False,
                 cache_text_embeddings: bool = False,
                 drop_text_encoders_after_caching: bool = False,
                 data_preprocessor: dict | None = None,
                 noise_offset: float | None = None) -> None:
        # Built here from diffengine's registry: BaseModel would look it up
        # in mmengine's root registry, which knows no diffengine module.
        super().__init__(data_preprocessor=MODELS.build(
            data_preprocessor or dict(type="DiffusionDataPreprocessor")))
        if noise_offset is not None:
            raise ConfigError(
                f"noise_offset={noise_offset} was replaced by "
                f"noise_generator=dict(type='OffsetNoise', offset_weight="
                f"{noise_offset}).")
        denoiser_option = f"{self.denoiser_name}_lora_config"
        denoiser_lora_config = self._denoiser_lora_config(
            {"unet_lora_config": unet_lora_config,
             "transformer_lora_config": transformer_lora_config})
        if denoiser_lora_config is None and text_encoder_lora_config is None:
            raise ConfigError(
                f"Neither {denoiser_option} nor text_encoder_lora_config is "
                "set: nothing would train.")
        if text_encoder_lora_config is not None and not (
                self.text_encoder_names):
            raise ConfigError(
                f"text_encoder_lora_config is set, but none of "
                f"{type(self).__name__}'s text encoders takes an adapter; "
                "drop it.")
        if compile_denoiser and compile_unet:
            raise ConfigError(
                "compile_denoiser and compile_unet are both set; compile_unet "
                "is compile_denoiser's earlier name: keep compile_denoiser.")
        compile_denoiser = compile_denoiser or compile_unet
        if cache_text_embeddings and text_encoder_lora_config is not None:
            raise ConfigError(
                "cache_text_embeddings=True with text_encoder_lora_config: "
                "the text encoder trains, so its embeddings change every "
                "step; drop one of the two.")
        if drop_text_encoders_after_caching and not cache_text_embeddings:
            raise ConfigError(
                f"{DROP_OPTION}=True needs the text-embedding cache: set "
                "cache_text_embeddings=True too.")
        if input_perturbation_gamma < 0:
            raise ConfigError(
                f"input_perturbation_gamma={input_perturbation_gamma} must be "
                ">= 0.")
        dtype = resolve_dtype(weight_dtype, "weight_dtype")
        self.quantization = build_quantization(quantization)
        offloading = build_group_offloading(group_offloading)
        if offloading is not None and (quantization or compile_denoiser):
            raise ConfigError(
                "group_offloading works on an unquantized, uncompiled "
                "denoiser; drop quantization and compile_denoiser, or "
                "group_offloading.")
        self.check_adapters({
            self.denoiser_name: (denoiser_lora_config, denoiser_option),
            **{name: (text_encoder_lora_config, "text_encoder_lora_config")
               for name in self.text_encoder_names}})
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

        self.add_adapters()
        if gradient_checkpointing:
            self.denoiser.enable_gradient_checkpointing()
            for name in self.text_encoder_names:
                if name in self.adapter_configs:
                    getattr(self, name).gradient_checkpointing_enable()
        if channels_last:
            self.denoiser.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        # After the adapters, whose trainable weights stay on the device
        self.offloader = None if offloading is None else BlockOffloader(
            self.denoiser, offloading)
        if self.offloader is not None:
            print_log(f"group_offloading: {self.offloader.describe()} of the "
                      f"{self.denoiser_name} in CPU memory", logger="current")
        if compile_denoiser:
            self.denoiser.compile(**(compile_denoiser if isinstance(
                compile_denoiser, dict) else {}))
        self.text_embeddings = TextEmbeddingCache(
            self.encode_text) if cache_text_embeddings else None
        self.drop_text_encoders_after_caching = (
            drop_text_encoders_after_caching)
        counts = self.trainable_parameter_counts()
        kinds = "/".join(dict.fromkeys(
            kind.name for kind in self.adapter_kinds.values()))
        print_log(
            f"{kinds}: {sum(counts.values()):,} trainable parameters ("
            + ", ".join(f"{part} {n:,}" for part, n in counts.items())
            + f"); frozen base in {str(dtype).removeprefix('torch.')}",
            logger="current")

    def _denoiser_lora_config(self, given: dict[str, dict | None]
                              ) -> dict | None:
        """The denoiser's adapter config among the denoiser options
        ``given``, refusing one that names another family's denoiser."""
        own = f"{self.denoiser_name}_lora_config"
        for option, cfg in given.items():
            if cfg is not None and option != own:
                raise ConfigError(
                    f"{option} is set, but {type(self).__name__}'s denoiser "
                    f"is its {self.denoiser_name}: rename it to {own}.")
        return given.get(own)

    # ---- what a family gives ------------------------------------------
    def load_parts(self, model: str, dtype: torch.dtype) -> None:
        """Load the frozen parts that the family declares from ``model``,
        in ``dtype``: the training scheduler, the tokenizers and text
        encoders, the VAE (:meth:`load_vae`) and the denoiser."""
        encoders = self.text_encoders
        check_model_path(model, (*(e.tokenizer for e in encoders),
                                 *(e.name for e in encoders), "vae",
                                 self.denoiser_name, "scheduler"))
        self.scheduler = self.scheduler_class.from_pretrained(
            model, subfolder="scheduler")
        for encoder in encoders:
            setattr(self, encoder.tokenizer,
                    encoder.tokenizer_class.from_pretrained(
                        model, subfolder=encoder.tokenizer))
            setattr(self, encoder.name, self.load_text_encoder(
                encoder, model, dtype))
        self.vae = self.load_vae(model, dtype)
        # Loaded in the weight dtype: no float32 copy of the denoiser in
        # memory.
        quantized = {} if self.quantization is None else {
            "quantization_config": self.quantization.diffusers_config()}
        denoiser = self.denoiser_class.from_pretrained(
            model, subfolder=self.denoiser_name, torch_dtype=dtype,
            **quantized)
        if quantized:
            keep_quantized_for_backward(denoiser)
        setattr(self, self.denoiser_name, denoiser)

    def load_text_encoder(self, encoder: TextEncoder, model: str,
                          dtype: torch.dtype) -> PreTrainedModel:
        """The text encoder ``encoder`` of ``model`` in ``dtype``,
        quantized when ``quantization`` asks for it."""
        if self.quantization is None or not self.quantization.text_encoders:
            return encoder.model_class.from_pretrained(
                model, subfolder=encoder.name).to(dtype)
        text_encoder = encoder.model_class.from_pretrained(
            model, subfolder=encoder.name, dtype=dtype,
            quantization_config=self.quantization.transformers_config())
        keep_quantized_for_backward(text_encoder)
        return text_encoder

    def load_vae(self, model: str, dtype: torch.dtype) -> AutoencoderKL:
        """The VAE of ``model``, in ``dtype``."""
        return AutoencoderKL.from_pretrained(model, subfolder="vae",
                                             torch_dtype=dtype)

    def encode_text(self, text: list[str]) -> Conditioning:
        """Prompt conditioning of a list of captions (tensors with a first
        dimension of ``len(text)``, or a tuple of them)."""
        raise NotImplementedError

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                inputs: dict, prompt: Conditioning) -> torch.Tensor:
        """The denoiser's prediction for noisy latents (fp32, cast here to
        the denoiser's dtype), their timesteps, the batch (for conditioning
        such as SDXL's ``time_ids``) and its prompt conditioning."""
        raise NotImplementedError

    def pipeline_parts(self) -> dict[str, Any]:
        """Keyword arguments of ``pipeline_class.from_pretrained``: the
        in-memory modules (VAE, denoiser, text encoders and tokenizers) and
        :attr:`pipeline_options`."""
        parts: dict[str, Any] = {"vae": self.vae,
                                 self.denoiser_name: self.denoiser}
        for encoder in self.text_encoders:
            parts[encoder.name] = getattr(self, encoder.name)
            parts[encoder.tokenizer] = getattr(self, encoder.tokenizer)
        return {**parts, **self.pipeline_options}

    def scale_latents(self, sample: torch.Tensor) -> torch.Tensor:
        """The denoiser's latents of a VAE sample: ``(sample − shift_factor)
        · scaling_factor`` when the VAE's config has a shift (SD3, Flux),
        else ``sample · scaling_factor``."""
        config = self.vae.config
        shift = config.get("shift_factor")
        if shift is not None:
            sample = sample - shift
        return sample * config.scaling_factor

    def pipeline_call_options(self) -> dict[str, Any]:
        """More arguments of the pipeline's call in :meth:`infer`, so that
        samples are conditioned as training is (SD3: its T5 length)."""
        return {}

    # ---- trainable weights -------------------------------------------
    def init_weights(self) -> None:
        """Nothing to initialise: the base is pretrained and the adapters
        were initialised when injected.

        mmengine's default would read every parameter of the base to log
        its mean.
        """

    def train(self, mode: bool = True) -> LatentDiffusionModel:
        """Set ``mode`` on the model and its adapted parts; the frozen text
        encoders and the VAE stay in eval mode, as diffusers' training
        scripts run them: T5's config keeps a dropout of 0.1, which would
        draw from the global generator at every step."""
        super().train(mode)
        adapted = getattr(self, "adapter_configs", {})
        for name in (*(e.name for e in self.text_encoders), "vae"):
            module = getattr(self, name, None)  # None once dropped
            if module is not None and name not in adapted:
                module.eval()
        return self

    # ---- encoding ------------------------------------------------------
    def encode_prompt(self, text: list[str]) -> Conditioning:
        """:meth:`encode_text`, from the cache when
        ``cache_text_embeddings``."""
        if self.text_embeddings is not None:
            return self.text_embeddings(text)
        return self.encode_text(text)

    def prepare_text_embeddings(self, dataset) -> None:
        """With ``drop_text_encoders_after_caching``, cache every caption
        of ``dataset`` (a ``CaptionedImageDataset``, after its pre-flight
        scan) and free the text encoders; else nothing (the cache, if any,
        fills as captions come).

        Each process encodes every caption: with shuffling, any of them may
        reach any process.

        Raises:
            ConfigError: If the dataset's pipeline makes captions while
                training (``RandomTextDrop``, ``ShuffleCaptionTags``).
        """
        if not self.drop_text_encoders_after_caching or (
                self.text_embeddings is None or self.text_embeddings.frozen):
            return
        captions = dataset_captions(dataset)
        encoded = self.text_embeddings.fill(captions)
        self.text_embeddings.freeze()
        for encoder in self.text_encoders:
            setattr(self, encoder.name, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print_log(
            f"text embeddings: {encoded} captions encoded and cached; "
            f"{', '.join(e.name for e in self.text_encoders)} freed "
            f"({DROP_OPTION})", logger="current")

    @property
    def text_encoders_dropped(self) -> bool:
        """Whether :meth:`prepare_text_embeddings` freed the text
        encoders."""
        return self.text_embeddings is not None and self.text_embeddings.frozen

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
        # SD3's and Flux's VAEs have no quant_conv
        return weights_fingerprint(*(m for m in (
            self.vae.encoder, self.vae.quant_conv) if m is not None))

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
        device = first_parameter(self.denoiser).device
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
        """One denoising step: the denoiser's prediction, its target and what
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
        # whatever the weight dtype; only the denoiser's input is cast.
        latent_dist = DiagonalGaussianDistribution(moments.float())
        mean = latent_dist.mean
        latents = mean + latent_dist.std * randomness.randn(*mean.shape[1:])
        latents = self.scale_latents(latents)
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
        prediction = self.denoise(noisy_latents, timesteps, inputs, prompt)
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
                                    first_parameter(self.denoiser).device)
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
