"""``DiffusionPipeline``: what every jaxgen pipeline shares, written once.

A pipeline holds its components as attributes named as in diffusers (``pipe.transformer``,
``pipe.vae``, ``pipe.text_encoder``, ``pipe.tokenizer``, ``pipe.scheduler``). Model components are
flax modules bound to their params (``module.bind({"params": params})``): ``pipe.vae.config`` reads
like diffusers, and ``unbind(pipe.vae)`` gives back ``(module, params)``, which is what the compiled
functions take, so params are arguments and never baked into a program as constants.

The base class owns: loading (``from_pretrained``, ``Name(**other.components)``), the mesh, the
checks of the run options with one set of messages (``check_call``), rng handling, the rows of a
batch on the mesh, text encoding (``encode_texts``), the sampling run (``denoise``: the shared
compiled loop of ``sampling.py``, with the progress bar and the callback), the decode ->
postprocess -> safety checker -> watermark -> output path (``output``), and ``warmup``. A family's
pipeline adds what is its own: its components, ``check_inputs`` and ``encode_prompt`` as diffusers
has them, its model adapter (a ``sampling.Denoiser``), and a ``__call__`` that reads as the data
path: check -> encode -> prepare latents -> denoise -> decode -> output.

Every pipeline runs on a device mesh, ``pipe.mesh`` (``jaxgen.sharding``): ``from_pretrained``
defaults to all local devices on the ``data`` axis (the batch is split, the weights replicated),
with a ``model`` axis as well when the params would not fit one device (``sharding.auto_mesh``).
Compiled programs are kept across processes by jax's persistent compilation cache, which the first
pipeline turns on (``set_compilation_cache``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import time
from typing import Any, ClassVar, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxgen import sharding
from jaxgen.image_processing import numpy_to_pil, postprocess
from jaxgen.pipelines import checks, compilation_cache, offload, progress, sampling
from jaxgen.pipelines.compilation_cache import DEFAULT_COMPILATION_CACHE, set_compilation_cache
from jaxgen.pipelines.loading import (
    ComponentSpec, DeferredModel, HostModel, bind_model, load_components, place_on_mesh, unbind,
)
from jaxgen.pipelines.outputs import BaseOutput, ImagePipelineOutput

logger = logging.getLogger(__name__)

__all__ = [
    "DiffusionPipeline", "Batch", "ComponentSpec", "as_key", "bind_model", "unbind", "set_compilation_cache",
    "DEFAULT_COMPILATION_CACHE", "decode_latents", "decode_latents_tiled",
]

def as_key(rng: Any) -> jax.Array:
    """``rng`` argument -> a ``jax.random`` key: an int seed, a key (new or raw uint32 style), or None (seed 0)."""
    if rng is None:
        return jax.random.key(0)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return jax.random.key(int(rng))
    if isinstance(rng, jax.Array) and rng.ndim == 0 and jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return rng
    if isinstance(rng, jax.Array) and rng.shape == (2,) and rng.dtype == jnp.uint32:
        return jax.random.wrap_key_data(rng)
    raise TypeError(f"`rng` must be an int seed or one jax.random key, got {type(rng).__name__} {np.shape(rng)}")


@functools.partial(jax.jit, static_argnames=("module",))
def decode_latents(module: Any, params: Any, latents: jax.Array) -> jax.Array:
    """AutoencoderKL: scaled latents (B, h, w, C) -> images (B, f*h, f*w, 3) in about [-1, 1], float32."""
    z = latents / module.config.scaling_factor
    return module.apply({"params": params}, z.astype(module.dtype), method="decode").sample.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("module", "tile_sample_min_size", "tile_latent_min_size"))
def decode_latents_tiled(module: Any, params: Any, latents: jax.Array, tile_sample_min_size: int,
                         tile_latent_min_size: int) -> jax.Array:
    """``decode_latents`` in overlapping tiles (``autoencoder_kl.tiled_decode``): memory of one tile."""
    from jaxgen.models.autoencoder_kl import tiled_decode

    z = (latents / module.config.scaling_factor).astype(module.dtype)
    out = tiled_decode(module, params, z, tile_sample_min_size=tile_sample_min_size,
                       tile_latent_min_size=tile_latent_min_size)
    return out.sample.astype(jnp.float32)


def _per_image(x: Any, name: str, num_images_per_prompt: int, dtype: Any = None) -> jax.Array | None:
    """Prompt embeddings (B, L, D) or an attention mask (B, L) -> each row repeated per image, in ``dtype``."""
    if x is None:
        return None
    x = jnp.asarray(x)
    rank, layout = (3, "(batch, tokens, width)") if name.endswith("embeds") else (2, "(batch, tokens)")
    if x.ndim != rank:
        raise ValueError(f"`{name}` must be {layout}, got shape {tuple(x.shape)}")
    return jnp.repeat(x.astype(dtype or x.dtype), num_images_per_prompt, axis=0)


@dataclasses.dataclass(frozen=True)
class Batch:
    """The rows of one call: ``prompts`` (B), ``per_prompt`` (images per prompt), ``total`` = B * per_prompt
    images, and ``rows``: ``total`` padded to a multiple of the mesh's data axis (the padding rows are
    sampled and dropped, so every device gets the same share)."""

    prompts: int
    per_prompt: int
    rows: int

    @property
    def total(self) -> int:
        return self.prompts * self.per_prompt


class DiffusionPipeline:
    """Base of jaxgen pipelines: construction from components, ``from_pretrained``, and the shared run.

    Subclasses declare ``_components`` (name -> ``ComponentSpec``) in diffusers' order, and
    ``_config`` (name -> default): the pipeline's own settings that diffusers keeps in
    model_index.json (``max_noise_level``); ``from_pretrained`` reads them from there, the
    constructor takes them as keywords, and ``pipe.config`` reads them back. ``_denoiser`` names the
    component that denoises (its dtype is the embeddings' dtype without a text encoder);
    ``_output_class`` is what ``__call__`` returns.
    ``Pipeline(mesh=None, **components)``: with a ``mesh``, every model component's params are
    placed on it by the partition rules; without one, the mesh is the one the params are already
    on (``Other(**pipe.components)`` shares ``pipe``'s mesh and params), or, for params on one
    device, a 1-device mesh there.
    """

    _components: ClassVar[dict[str, ComponentSpec]] = {}
    _config: ClassVar[dict[str, Any]] = {}
    _denoiser: ClassVar[str] = "unet"
    _output_class: ClassVar[type[BaseOutput]] = ImagePipelineOutput

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:  # every pipeline's call checks its shared arguments by name first
            cls.__call__ = checks.checking_named_arguments(cls.__dict__["__call__"])

    def __init__(self, *, mesh: Mesh | None = None, **components: Any) -> None:
        from jaxgen.schedulers.base import FrozenConfig

        self.config = FrozenConfig({k: components.pop(k, default) for k, default in self._config.items()})
        unknown = set(components) - set(self._components)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown components {sorted(unknown)}; expected {list(self._components)}")
        compilation_cache.apply_default()
        bound = {
            name: bind_model(components.get(name)) if spec.kind == "model" else components.get(name)
            for name, spec in self._components.items()
        }
        models = {n: bound[n] for n, spec in self._components.items()
                  if spec.kind == "model" and bound[n] is not None and not isinstance(bound[n], DeferredModel)}
        offloaded = {n: v for n, v in bound.items() if isinstance(v, offload.OffloadedModel)}
        if mesh is None:
            meshes = [sharding.mesh_of(v.variables) for v in models.values()] + [v.mesh for v in offloaded.values()]
            mesh = next((m for m in meshes if m is not None), None)
            if mesh is None:  # params on one device (or none at all): a 1-device mesh there
                leaves = [x for v in models.values() for x in jax.tree_util.tree_leaves(v.variables)]
                device = next(iter(leaves[0].devices())) if leaves and isinstance(leaves[0], jax.Array) else None
                mesh = sharding.make_mesh(1, 1, devices=[device or jax.devices()[0]])
                models = {}  # leave them where they are
        for name, value in models.items():
            bound[name] = place_on_mesh(value, mesh)
        for name, value in offloaded.items():  # built from an offloaded pipeline's components: offloaded too
            bound[name] = value.on(mesh)
        for name, value in bound.items():
            setattr(self, name, value)
        self.mesh: Mesh = mesh
        self._progress_bar_config: dict[str, Any] = {}
        self._vae_tiling = False  # enable_vae_tiling()
        self._model_cpu_offload = bool(offloaded)  # enable_model_cpu_offload()

    @property
    def components(self) -> dict[str, Any]:
        """The components by name, to build another pipeline without reloading: ``Other(**pipe.components)``."""
        return {name: getattr(self, name) for name in self._components}

    def resident(self, name: str) -> Any:
        """The model component ``name`` as a bound module on ``pipe.mesh``. Deferred (``DeferredModel``): loaded
        now, and kept from then on (on the devices, or in host memory with ``enable_model_cpu_offload()``). In
        host memory (``HostModel``): a device copy for this use only, not kept. None when the pipeline has none."""
        value = getattr(self, name)
        if isinstance(value, HostModel):
            return value.load(self.mesh)
        if isinstance(value, DeferredModel):
            logger.info("jaxgen: loading %s (%s) now: the call needs it", name, value.model_class.__name__)
            loaded = value.load(self.mesh)
            setattr(self, name, offload.offload(loaded, self.mesh, value.outputs) if self._model_cpu_offload else loaded)
            return loaded
        return value

    def enable_model_cpu_offload(self, device: None = None) -> None:
        """Keep every model component in host memory and put it on the devices only while it runs (diffusers'
        ``enable_model_cpu_offload``; ``device`` is taken for its signature and must be None: jaxgen runs on
        ``pipe.mesh``, a ValueError otherwise).

        What moves when: now, each model component on the devices is copied to host memory (``pinned_host``
        jax arrays with its sharding on the mesh where the backend has that memory, else numpy) and the device
        copy is let go (freed once nothing else holds it: a pipeline built from these components before this
        call keeps its own). Then every use of a model (encoding the prompt, each sampling run, decoding, the
        safety checker) puts its params on the mesh and drops them when that stage returns; a deferred component
        (Kandinsky 2.2's image encoder) goes to host memory when first loaded. The cost: one host-to-device copy
        of each model's params per use, every call. The gain: the peak device memory is the largest single
        model's params plus its activations, instead of all the models together. Images are unchanged (the same
        params, the same compiled programs). ``disable_model_cpu_offload()`` puts them back on the devices.
        ``from_pretrained(..., model_cpu_offload=True)`` loads a pipeline in this state, the models read into host
        memory, so that loading too never needs room for them all on the devices.
        """
        offload.check_device(device)
        offload.enable(self)

    def disable_model_cpu_offload(self) -> None:
        """Undo ``enable_model_cpu_offload()``: the offloaded components go back to the devices and stay there."""
        offload.disable(self)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        dtype: Any = jnp.float32,
        variant: str | None = None,
        mesh: Mesh | None = None,
        text_encoder_quantization: str | None = None,
        model_cpu_offload: bool = False,
        **components: Any,
    ) -> "DiffusionPipeline":
        """Load every component from a diffusers folder, a Hub repo id, or a ``python -m convert`` folder.

        A component passed by keyword is used as given (``None``: not loaded); from the Hub only the
        components loaded are downloaded, only the ``variant`` asked for, only safetensors and
        configs. ``dtype`` is the models' params and computation dtype; ``variant="fp16"`` reads
        ``*.fp16.safetensors``. ``mesh``: the ``jax.sharding.Mesh`` to run on. Default: all local
        devices on the ``data`` axis (batches split, weights replicated), unless the components'
        params (sizes from their configs, in ``dtype``, before anything is loaded) take more than
        60% of one device's memory: then the weights are split over a ``model`` axis as well, the
        smallest that fits (``jaxgen.sharding.auto_mesh``; the choice is logged). Each param is
        placed straight into its shards. ``text_encoder_quantization="int8"``: the text encoders (T5, CLIP) are read
        into host memory, their Dense weights quantized to int8 there (``jaxgen.quantize``), and only then placed:
        a quarter of their float32 bytes on the chips, the full-precision copy never. ``model_cpu_offload=True``: the
        pipeline as after ``enable_model_cpu_offload()``, each model read into host memory and kept there (int8
        encoders quantized there first), none placed on the devices while loading; the default mesh is then sized
        by the largest single model, not the sum.
        """
        loaded, mesh = load_components(
            cls, pretrained_model_name_or_path, dtype=dtype, variant=variant, mesh=mesh, components=components,
            text_encoder_quantization=text_encoder_quantization, model_cpu_offload=model_cpu_offload,
        )
        pipe = cls(mesh=mesh, **loaded)
        if model_cpu_offload:  # components passed in resident are offloaded too; deferred ones when first loaded
            offload.enable(pipe)
        return pipe

    # -- progress ------------------------------------------------------------------------------

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options of the progress bar (tqdm's), e.g. ``disable=True``; as diffusers."""
        self._progress_bar_config = dict(kwargs)

    @property
    def progress_bar_config(self) -> dict[str, Any]:
        """The options ``set_progress_bar_config`` set (a copy)."""
        return dict(self._progress_bar_config)

    def _show_progress(self) -> bool:
        return not self._progress_bar_config.get("disable", False) and not sampling.is_compile_only()

    # -- checks --------------------------------------------------------------------------------

    def check_call(self, kwargs: Mapping[str, Any], **options: Any) -> None:
        """The checks every ``__call__`` shares, before anything is encoded or compiled: ``kwargs`` left
        over (``generator`` points to ``rng``; others are unexpected) and the run options
        (``num_images_per_prompt``, ``guidance_scale``, ``output_type``, ``num_inference_steps`` (also against
        the scheduler's training timesteps), ``timesteps``, ``sigmas``, ``cross_attention_kwargs``: see
        ``checks.check_run_options``). ``rng``, ``eta``, ``callback`` and the prompts' types were checked by name
        when the call began (``checks.check_named_arguments``)."""
        checks.check_call_kwargs(type(self).__name__, kwargs)
        checks.check_run_options(**options)
        checks.check_schedule_options(getattr(self, "scheduler", None), **options)
        if options.get("output_type") not in (None, "latent") and self._decoder_missing():
            raise ValueError(f"this pipeline was loaded without its decoder (`{self._decoder_name()}=None`): use output_type='latent'")

    def _decoder_name(self) -> str:
        return "vae"

    def _decoder_missing(self) -> bool:
        name = self._decoder_name()
        return name in self._components and getattr(self, name) is None

    # -- rows on the mesh ------------------------------------------------------------------------

    def batch(self, prompt: Any, prompt_embeds: Any, num_images_per_prompt: int,
              image_size: tuple[int, int] | None = None) -> Batch:
        """The rows of a call with this prompt (or these embeddings) and images per prompt. With the output
        ``image_size`` (height, width), a call whose float32 images alone exceed this machine's memory is
        refused here, before anything is encoded."""
        prompts = checks.prompt_batch_size(prompt, prompt_embeds)
        total = prompts * num_images_per_prompt
        if image_size is not None:
            checks.check_images_fit(total, *image_size,
                                    f"{prompts} prompts x `num_images_per_prompt` = {num_images_per_prompt} at {image_size}")
        return Batch(prompts, num_images_per_prompt, sharding.padded_size(total, self.mesh))

    def _mesh_context(self):
        """Context for the compiled calls: ``pipe.mesh`` as jax's mesh, so that kernels XLA cannot
        partition (Pallas splash attention) run per shard (see ``jaxgen.nn.attention``)."""
        return jax.set_mesh(self.mesh)

    def shard_rows(self, x: Any, rows: int) -> jax.Array:
        """Host or device batch (N, ...) -> padded to ``rows`` and split over the mesh's data axis."""
        return sharding.shard_batch(sharding.gather_rows(x) if isinstance(x, jax.Array) else x, self.mesh, rows)

    def guidance_rows(self, positive: Any, negative: Any, rows: int, dtype: Any = None) -> jax.Array:
        """Conditioning rows for ``denoise``: each half padded to ``rows``, [negative; positive] when
        ``negative`` is given (guidance on), split over the mesh's data axis."""
        host = lambda x: sharding.pad_rows(sharding.gather_rows(x) if isinstance(x, jax.Array) else np.asarray(x), rows)
        out = host(positive) if negative is None else np.concatenate([host(negative), host(positive)])
        if dtype is not None:
            out = out.astype(np.dtype(dtype))
        return self.shard_rows(out, out.shape[0])

    # -- text ----------------------------------------------------------------------------------

    @property
    def prompt_embeds_width(self) -> int | None:
        """The width given ``prompt_embeds`` must have (the denoiser's text conditioning), or None: not checked."""
        return None

    def embeds_dtype(self) -> Any:
        """The dtype prompt embeddings are given to the denoiser in: the text encoder's, else the denoiser's."""
        for component in (getattr(self, "text_encoder", None), getattr(self, self._denoiser, None)):
            if component is not None:
                return component.dtype
        return jnp.float32

    def encode_texts(
        self, texts: list[str], max_length: int, *, outputs: tuple[str, ...] = ("last_hidden_state",),
        use_mask: bool = True, clip_skip: int | None = None, warn_truncation: bool = False, encoder_name: str = "T5",
    ) -> tuple[tuple[jax.Array, ...], jax.Array]:
        """``self.tokenizer`` + ``self.text_encoder`` on prepared texts, through ``jaxgen.text.encoding``.

        Pads and truncates to ``max_length`` (diffusers' truncation warning with ``warn_truncation``);
        the texts are split over the mesh's data axis, encoded, gathered. ``use_mask``: the encoder
        sees the padding mask (T5; CLIP without it, as diffusers). Returns ``(the ``outputs`` fields,
        each (N, ...), attention_mask (N, max_length) int32)``.
        """
        from jaxgen.text.encoding import encode, tokenize

        if self.tokenizer is None or self.text_encoder is None:
            raise ValueError(
                "this pipeline was loaded without `tokenizer`/`text_encoder`: pass `prompt_embeds` (and the"
                " negative ones when guidance_scale > 1, with their attention masks where the pipeline takes them)"
            )
        ids, mask = tokenize(self.tokenizer, texts, max_length, warn_truncation=warn_truncation,
                             encoder_name=encoder_name)
        encoder = self.text_encoder
        if isinstance(encoder, HostModel):  # on the devices for this call only
            encoder = encoder.load(self.mesh)
        module, params = unbind(encoder)
        rows = sharding.padded_size(len(texts), self.mesh)
        with self._mesh_context():
            fields = encode(module, params, self.shard_rows(ids, rows), self.shard_rows(mask, rows) if use_mask else None,
                            outputs=outputs, clip_skip=clip_skip)
        return tuple(jnp.asarray(sharding.gather_rows(f, len(texts))) for f in fields), jnp.asarray(mask)

    def encode_prompt_pair(
        self, prompt: Any, negative_prompt: Any, prompt_embeds: Any, negative_prompt_embeds: Any, *,
        do_classifier_free_guidance: bool, num_images_per_prompt: int, encode: Any,
        prompt_attention_mask: Any = None, negative_prompt_attention_mask: Any = None, check_negative_type: bool = True,
    ) -> tuple[jax.Array, Any, jax.Array | None, Any]:
        """The conditional and (with guidance) unconditional embeddings of a call, as diffusers' encode_prompt
        makes them: each prompt's rows repeated ``num_images_per_prompt`` times, in ``embeds_dtype()``.

        ``encode(texts, max_length)`` -> ``(embeds (N, L, D), attention_mask (N, L))`` encodes prompts
        (``max_length`` None: the family's own) and the negative ones ("" for None, padded to the
        prompts' length). Given embeddings are used as they are. Returns ``(prompt_embeds,
        prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask)``, the
        negatives None without guidance (masks as ``encode`` or the caller gave them).
        """
        if check_negative_type and prompt is not None and negative_prompt is not None \
                and type(prompt) is not type(negative_prompt):
            raise TypeError(
                f"`negative_prompt` should be the same type to `prompt`, but got {type(negative_prompt)} !="
                f" {type(prompt)}."
            )
        batch = checks.prompt_batch_size(prompt, prompt_embeds)
        if prompt_embeds is None:
            prompt_embeds, prompt_attention_mask = encode(prompt, None)
        dtype, n = self.embeds_dtype(), num_images_per_prompt
        prompt_embeds = _per_image(prompt_embeds, "prompt_embeds", n, dtype)
        prompt_attention_mask = _per_image(prompt_attention_mask, "prompt_attention_mask", n)
        if not do_classifier_free_guidance:
            return prompt_embeds, prompt_attention_mask, None, None
        if negative_prompt_embeds is None:
            texts = checks.negative_prompts(negative_prompt, prompt, batch)
            negative_prompt_embeds, negative_prompt_attention_mask = encode(texts, prompt_embeds.shape[1])
        return (prompt_embeds, prompt_attention_mask, _per_image(negative_prompt_embeds, "negative_prompt_embeds", n, dtype),
                _per_image(negative_prompt_attention_mask, "negative_prompt_attention_mask", n))

    # -- sampling ------------------------------------------------------------------------------

    def prepare_timesteps(self, num_inference_steps: int | None, timesteps: Any, sigmas: Any, rows_shape: tuple,
                          scheduler: Any = None) -> Any:
        """``scheduler.set_timesteps`` (default ``self.scheduler``), with custom ``timesteps`` or ``sigmas``
        where it takes them (diffusers' ``retrieve_timesteps`` checks and messages), its state placed
        on the mesh for latents of ``rows_shape`` (the padded rows)."""
        scheduler = self.scheduler if scheduler is None else scheduler
        for name, values in (("sigmas", sigmas), ("timesteps", timesteps)):
            if values is None:
                continue
            if not sampling.accepts(scheduler.set_timesteps, name):
                kind = "sigmas" if name == "sigmas" else "timestep"
                raise ValueError(
                    f"The current scheduler class {type(scheduler)}'s `set_timesteps` does not support custom"
                    f" {kind} schedules. Please check whether you are using the correct scheduler."
                )
            state = scheduler.set_timesteps(**{name: list(values)}, shape=rows_shape)
            break
        else:
            state = scheduler.set_timesteps(num_inference_steps, shape=rows_shape)
        return sharding.place_matching(state, self.mesh, rows_shape)

    def initial_noise(self, latents: Any, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """The initial noise: ``latents`` as given (checked against ``shape``, channels last), else
        standard normal from ``key``, float32. Drawn for the unpadded rows: a seed gives the same images
        on any number of devices."""
        checks.check_latents(latents, shape)
        if latents is None:
            return jax.random.normal(key, shape, jnp.float32)
        return jnp.asarray(latents, jnp.float32)

    def denoise(
        self, denoiser: sampling.Denoiser, params: Any, latents: Any, state: Any, cond: Any, guidance_scale: float,
        key: jax.Array, batch: Batch, *, guidance: Any = None, post_step: sampling.PostStep | None = None,
        eta: float = 0.0, callback: Any = None, callback_steps: int = 1, scheduler: Any = None,
    ) -> Any:
        """Run the shared compiled loop (``sampling.denoise``) on this pipeline's mesh, from the state's
        ``step_index`` to the end of its timesteps, with the progress bar and ``callback`` (which sees
        the ``batch.total`` real rows). ``latents``: host or device rows, padded to ``batch.rows`` here.
        ``guidance`` defaults to classifier-free guidance when ``guidance_scale > 1``. Inside
        ``sampling.compile_only()`` (``warmup``) the loop runs zero steps. Returns the latents, on the mesh.
        """
        scheduler = self.scheduler if scheduler is None else scheduler
        if guidance is None:
            guidance = sampling.ClassifierFreeGuidance() if guidance_scale > 1.0 else sampling.NoGuidance()
        num_steps = int(state.timesteps.shape[0]) - int(state.step_index)
        show_progress = self._show_progress()
        latents = jax.tree_util.tree_map(lambda x: self.shard_rows(x, batch.rows), latents)
        run = functools.partial(
            sampling.denoise, denoiser, scheduler, params, latents, state, cond, jnp.float32(guidance_scale), key,
            jnp.int32(0 if sampling.is_compile_only() else num_steps), guidance=guidance, post_step=post_step,
            eta=float(eta) if sampling.accepts(scheduler.step, "eta") else None, show_progress=show_progress,
            callback=None if callback is None else sampling.FirstRows(callback, batch.total),
            callback_steps=callback_steps, batch_sharding=sharding.batch_sharding(self.mesh),
        )
        with self._mesh_context():
            if not show_progress:
                return run()
            from tqdm.auto import tqdm

            with progress.active(tqdm(total=num_steps, **{"leave": True, **self._progress_bar_config})):
                return jax.block_until_ready(run())

    # -- decode and output ---------------------------------------------------------------------

    def decode_latents(self, latents: jax.Array) -> jax.Array:
        """Latents on the mesh -> images in about [-1, 1], float32 NHWC: the VAE's decode of the latents
        divided by its ``scaling_factor`` (tiled with ``enable_vae_tiling()`` once they exceed a tile).
        Families whose decoder is another model (or none: pixel-space IF) override this."""
        from jaxgen.models.autoencoder_kl import tile_sizes

        module, params = unbind(self.vae)
        sample_tile, latent_tile = tile_sizes(module.config)
        with self._mesh_context():
            if self._vae_tiling and max(latents.shape[1], latents.shape[2]) > latent_tile:
                return decode_latents_tiled(module, params, latents, sample_tile, latent_tile)
            return decode_latents(module, params, latents)

    def enable_vae_tiling(self) -> None:
        """Decode in overlapping tiles (diffusers' ``enable_vae_tiling``): latents wider or taller than
        the VAE's ``sample_size / vae_scale_factor`` are decoded tile by tile and blended, so memory
        stays that of one tile (``jaxgen.models.autoencoder_kl.tiled_decode``)."""
        self._vae_tiling = True

    def disable_vae_tiling(self) -> None:
        """Decode in one piece again (the default)."""
        self._vae_tiling = False

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel: 2 ** (number of VAE levels - 1), 8 without a VAE (as diffusers)."""
        vae = getattr(self, "vae", None)
        return 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8

    def output(self, latents: jax.Array, batch: Batch, output_type: str, return_dict: bool, *,
               size: tuple[int, int] | None = None) -> BaseOutput | tuple:
        """The end of every call: "latent" returns the latents (NHWC, the real rows); otherwise
        ``decode_latents``, resized to ``size`` (height, width) when given and different (PixArt's
        resolution binning), postprocessed, checked by the safety checker when the pipeline has one,
        watermarked when it has a watermarker ("pil"), as ``self._output_class``."""
        if output_type == "latent":
            out = self._output_class.from_checked(jnp.asarray(sharding.gather_rows(latents, batch.total)), None, None)
        else:
            images = sharding.gather_rows(self.decode_latents(latents), batch.total)
            if size is not None and tuple(images.shape[1:3]) != tuple(size):
                from jaxgen.image_processing import resize_and_crop

                images = resize_and_crop(images, size[1], size[0])
            images = postprocess(images, "np")
            images, nsfw, watermark = self.run_safety_checker(images)
            if output_type == "pil":
                images = numpy_to_pil(images)
                if getattr(self, "watermarker", None) is not None:
                    self.watermarker.apply_watermark(images, self._watermark_sample_size())
            out = self._output_class.from_checked(images, nsfw, watermark)
        return out if return_dict else out.to_tuple()

    def _watermark_sample_size(self) -> int | None:
        return None

    def run_safety_checker(self, images: np.ndarray) -> tuple[np.ndarray, list[bool] | None, list[bool] | None]:
        """float32 NHWC images in [0, 1] -> (images with flagged ones black, nsfw_detected, watermark_detected).

        The checker is DeepFloyd IF's (also IF's stage III); its CLIP input is the
        ``feature_extractor``'s (transformers' ``CLIPImageProcessor``) on the PIL images, as diffusers.
        Without a safety checker the images pass unchanged with None flags.
        """
        if getattr(self, "safety_checker", None) is None:
            return images, None, None
        from jaxgen.models.safety_checker import check_safety

        pixel_values = np.asarray(self.feature_extractor(numpy_to_pil(images), return_tensors="np").pixel_values)
        module, params = unbind(self.safety_checker)
        clip_input = np.transpose(pixel_values, (0, 2, 3, 1)).astype(np.dtype(module.dtype))  # NCHW -> NHWC
        n = len(images)
        rows = sharding.padded_size(n, self.mesh)  # one compiled checker for every batch up to a multiple of the data axis
        with self._mesh_context():
            checked, nsfw, watermark = check_safety(
                module, params, self.shard_rows(clip_input, rows), self.shard_rows(np.asarray(images), rows)
            )
        jax.effects_barrier()  # the checker's warnings are logged before we return
        flags = lambda x: np.asarray(sharding.gather_rows(x, n)).tolist()
        return np.asarray(sharding.gather_rows(checked, n), np.float32), flags(nsfw), flags(watermark)

    # -- warmup --------------------------------------------------------------------------------

    def warmup(self, height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
               batch_size: int = 1, **kwargs: Any) -> float:
        """Compile ahead what a call with these settings runs, so that the call itself compiles nothing.

        ``batch_size``: the number of prompts; ``height`` / ``width``: the size ``__call__`` takes as
        ``height``/``width`` where it has them, else the size of the input images it is given;
        ``num_inference_steps`` and every other keyword go to ``__call__`` (its defaults otherwise).
        Runs the call on placeholder prompts (zero ``prompt_embeds`` without a text encoder) and
        placeholder images of that size (pass ``image=...`` etc. to use others) inside
        ``sampling.compile_only()``: the sampling loop is compiled with its step count set to 0, not
        run; text encoding, decoding and the safety checker run once. Calls with other shapes, step
        counts, guidance on/off or a ``callback`` compile their own programs. Returns the seconds it took.
        """
        start = time.perf_counter()
        call = dict(kwargs)
        takes = inspect.signature(self.__call__).parameters
        size = {"height": height, "width": width}
        if num_inference_steps is not None:
            call["num_inference_steps"] = num_inference_steps
        call.update({k: v for k, v in size.items() if k in takes and v is not None})
        default = lambda name: call.get(name, takes[name].default if name in takes else None)
        if "prompt" not in call and "prompt_embeds" not in call:
            guided = default("guidance_scale") is None or default("guidance_scale") > 1.0
            call.update({"prompt": [""] * batch_size} if self._can_encode_text()
                        else self._placeholder_embeds(batch_size, guided, call))
        for name, value in self._placeholder_images(batch_size, height, width, call).items():
            call.setdefault(name, value)
        with sampling.compile_only():
            self(**call)
        return time.perf_counter() - start

    def call_parameters(self) -> set[str]:
        """The argument names ``__call__`` takes (what ``warmup`` and the image placeholders ask of a pipeline)."""
        return set(inspect.signature(self.__call__).parameters)

    def _can_encode_text(self) -> bool:
        return getattr(self, "tokenizer", None) is not None and getattr(self, "text_encoder", None) is not None

    def _placeholder_embeds(self, batch_size: int, guided: bool, call: Mapping[str, Any]) -> dict[str, Any]:
        """``prompt_embeds`` (and the negative ones when ``guided``) of zeros for ``warmup`` without a text encoder."""
        raise ValueError(f"{type(self).__name__}.warmup without a text encoder needs `prompt_embeds=`")

    def _placeholder_images(self, batch_size: int, height: int | None, width: int | None,
                            call: Mapping[str, Any]) -> dict[str, Any]:
        """The image arguments ``warmup`` gives ``__call__`` (none for text-to-image)."""
        return {}
