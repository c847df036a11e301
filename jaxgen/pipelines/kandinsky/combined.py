"""Kandinsky 2.1 prior + decoder in one call: text to image, image to image, inpainting.

A combined pipeline holds a ``KandinskyPriorPipeline`` (``pipe.prior_pipe``) and a decoder
(``pipe.decoder_pipe``); its components carry diffusers' names (the decoder's, and the prior's with
``prior_`` in front: ``pipe.prior_prior``, ``pipe.prior_text_encoder``, ...). Three ways to build one:

- ``Kandinsky...CombinedPipeline.from_pretrained(decoder_repo)``: the prior is the one the decoder
  repository's README.md names in its metadata (``prior: [kandinsky-community/kandinsky-2-1-prior]``,
  as diffusers' connected pipelines), or the one given as ``prior=`` (a repo id, a folder, or a
  loaded ``KandinskyPriorPipeline``); ``prior_<component>=`` keywords go to the prior;
- ``Kandinsky...CombinedPipeline.from_pipes(prior_pipe, decoder_pipe)``: two loaded pipelines, nothing reloaded;
- ``Kandinsky...CombinedPipeline(**components)`` with diffusers' component names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import hub
from jaxgen.pipelines.kandinsky.decoder import KandinskyImg2ImgPipeline, KandinskyInpaintPipeline, KandinskyPipeline
from jaxgen.pipelines.kandinsky.prior import KandinskyPriorPipeline
from jaxgen.pipelines.outputs import ImagePipelineOutput
from jaxgen.pipelines.pipeline_utils import as_key

__all__ = ["KandinskyCombinedPipeline", "KandinskyImg2ImgCombinedPipeline", "KandinskyInpaintCombinedPipeline",
           "connected_prior", "cli_generate", "run_combined", "prior_options"]

PRIOR = "prior_"


def connected_prior(pretrained_model_name_or_path: str | os.PathLike) -> str:
    """The prior a decoder checkpoint names: the first entry of ``prior`` in its README.md's metadata
    (diffusers' ``CONNECTED_PIPES_KEYS``). Only README.md is read (downloaded, from the Hub)."""
    from huggingface_hub.repocard import metadata_load

    root = hub.resolve_checkpoint(pretrained_model_name_or_path, allow_patterns=["README.md"])
    readme = Path(root) / "README.md"
    priors = (metadata_load(readme) or {}).get("prior") if readme.is_file() else None
    if not priors:
        raise ValueError(
            f"{pretrained_model_name_or_path} does not name its prior (no `prior:` in the metadata of its README.md):"
            " pass `prior=` (a repo id, a folder, or a loaded KandinskyPriorPipeline)"
        )
    return priors[0] if isinstance(priors, list) else priors


def _per_image(values: Any, count: int, name: str) -> Any:
    """A prompt or image argument for ``count`` images: each entry repeated ``count / len`` times, in order
    (the prior's rows are each prompt's images in a row)."""
    if values is None:
        return None
    if isinstance(values, (list, tuple)):
        items = list(values)
    elif np.ndim(values) == 4 and not isinstance(values, str):  # an NHWC batch: one entry per row
        items = list(np.asarray(values))
    else:
        items = [values]
    if count % len(items):
        raise ValueError(f"`{name}` has {len(items)} entries, which does not divide the {count} images")
    return [x for x in items for _ in range(count // len(items))]


class _KandinskyCombined:
    """Prior + decoder. Subclasses set ``_decoder_class`` and write ``__call__``."""

    _decoder_class: ClassVar[type]
    _prior_class: ClassVar[type] = KandinskyPriorPipeline
    _components: ClassVar[dict] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # diffusers' component names: the decoder's, then the prior's with the prefix
        cls._components = {**cls._decoder_class._components,
                           **{PRIOR + k: v for k, v in cls._prior_class._components.items()}}

    def __init__(self, *, mesh: Any = None, **components: Any) -> None:
        prior = {name[len(PRIOR):]: components.pop(name) for name in list(components) if name.startswith(PRIOR)}
        self.decoder_pipe = self._decoder_class(mesh=mesh, **components)
        self.prior_pipe = self._prior_class(mesh=self.decoder_pipe.mesh, **prior)
        self.mesh = self.decoder_pipe.mesh

    def __getattr__(self, name: str) -> Any:
        """The components by diffusers' names (``pipe.unet``, ``pipe.prior_prior``), read from the two pipelines
        (so a deferred component the prior has loaded since reads as loaded here too)."""
        if name.startswith("_") or name in ("decoder_pipe", "prior_pipe"):
            raise AttributeError(name)
        components = self.components
        if name not in components:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return components[name]

    @classmethod
    def from_pipes(cls, prior_pipe: Any, decoder_pipe: Any) -> "_KandinskyCombined":
        """Two loaded pipelines -> the combined pipeline, sharing their components (nothing reloaded)."""
        return cls(**decoder_pipe.components, **{PRIOR + k: v for k, v in prior_pipe.components.items()})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, prior: Any = None, *,
                        dtype: Any = jnp.float32, variant: str | None = None, mesh: Any = None,
                        **components: Any) -> "_KandinskyCombined":
        """The decoder from ``pretrained_model_name_or_path`` and the prior from ``prior`` (a repo id, a
        folder or a loaded prior pipeline; default: the one the decoder's README.md names), on one mesh.
        ``prior_<name>=`` keywords are the prior's components, others the decoder's."""
        prior_components = {k[len(PRIOR):]: components.pop(k) for k in list(components) if k.startswith(PRIOR)}
        # the prior first: 2.2's loads its image encoder alone before anything else (a lower peak)
        if not isinstance(prior, cls._prior_class):
            prior = cls._prior_class.from_pretrained(prior or connected_prior(pretrained_model_name_or_path),
                                                     dtype=dtype, variant=variant, mesh=mesh, **prior_components)
        decoder = cls._decoder_class.from_pretrained(pretrained_model_name_or_path, dtype=dtype, variant=variant,
                                                     mesh=prior.mesh, **components)
        return cls.from_pipes(prior, decoder)

    @property
    def components(self) -> dict[str, Any]:
        """The decoder's components and the prior's (``prior_`` + name), as diffusers names them."""
        return {**self.decoder_pipe.components, **{PRIOR + k: v for k, v in self.prior_pipe.components.items()}}

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """The progress bar options of both pipelines."""
        self.prior_pipe.set_progress_bar_config(**kwargs)
        self.decoder_pipe.set_progress_bar_config(**kwargs)

    def prior_embeds(self, prompt: Any, negative_prompt: Any, num_images_per_prompt: int, num_inference_steps: int,
                     guidance_scale: float, rng: Any, latents: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The prior's ``(image_embeds, negative_image_embeds)`` (B * n rows) and the decoder's key."""
        prior_key, decoder_key = jax.random.split(as_key(rng))
        out = self.prior_pipe(prompt=prompt, negative_prompt=negative_prompt, num_images_per_prompt=num_images_per_prompt,
                              num_inference_steps=num_inference_steps, rng=prior_key, latents=latents,
                              guidance_scale=guidance_scale, output_type="pt", return_dict=False)
        return out[0], out[1], decoder_key

    def decode(self, prompt: Any, image_embeds: jax.Array, negative_image_embeds: jax.Array, key: jax.Array,
               images: dict[str, Any], **options: Any) -> ImagePipelineOutput | tuple:
        """The decoder on the prior's rows (each prompt's images in a row): the prompt (2.1's decoders take
        it) and each image argument repeated per row (a single mask is shared), then ``options``."""
        n = image_embeds.shape[0]
        call = dict(options, image_embeds=image_embeds, negative_image_embeds=negative_image_embeds, rng=key)
        if "prompt" in self.decoder_pipe.call_parameters():
            call["prompt"] = _per_image(prompt, n, "prompt")
        for name, value in images.items():
            shared = name == "mask_image" and not (isinstance(value, (list, tuple)) and len(value) > 1)
            call[name] = value if shared else _per_image(value, n, name)
        return self.decoder_pipe(**call)

    def warmup(self, height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
               batch_size: int = 1, prior_num_inference_steps: int | None = None, **kwargs: Any) -> float:
        """Compile the prior's and the decoder's programs ahead (see ``DiffusionPipeline.warmup``);
        returns the seconds it took."""
        prior = {} if prior_num_inference_steps is None else {"num_inference_steps": prior_num_inference_steps}
        seconds = self.prior_pipe.warmup(batch_size=batch_size, **prior)
        return seconds + self.decoder_pipe.warmup(height, width, num_inference_steps, batch_size, **kwargs)


class KandinskyCombinedPipeline(_KandinskyCombined):
    """Kandinsky 2.1 text to image, prior and decoder: ``pipe(prompt) -> ImagePipelineOutput(images)``."""

    _decoder_class = KandinskyPipeline

    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """diffusers' arguments: the prior runs ``prior_num_inference_steps`` with ``prior_guidance_scale``
        (and ``negative_prompt``, and ``latents`` as its initial noise), the decoder the rest."""
        embeds, negative, key = self.prior_embeds(prompt, negative_prompt, num_images_per_prompt,
                                                  prior_num_inference_steps, prior_guidance_scale, rng, latents)
        return self.decode(prompt, embeds, negative, key, {}, width=width, height=height,
                           num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, output_type=output_type,
                           callback=callback, callback_steps=callback_steps, return_dict=return_dict)


class KandinskyImg2ImgCombinedPipeline(_KandinskyCombined):
    """Kandinsky 2.1 image to image, prior and decoder: ``pipe(prompt, image, strength=0.3)``."""

    _decoder_class = KandinskyImg2ImgPipeline

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        strength: float = 0.3,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """As ``KandinskyCombinedPipeline``, plus ``image`` (one per prompt) and ``strength``."""
        embeds, negative, key = self.prior_embeds(prompt, negative_prompt, num_images_per_prompt,
                                                  prior_num_inference_steps, prior_guidance_scale, rng, latents)
        return self.decode(prompt, embeds, negative, key, {"image": image}, strength=strength, width=width,
                           height=height, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                           output_type=output_type, callback=callback, callback_steps=callback_steps,
                           return_dict=return_dict)


class KandinskyInpaintCombinedPipeline(_KandinskyCombined):
    """Kandinsky 2.1 inpainting, prior and decoder: ``pipe(prompt, image, mask_image)``."""

    _decoder_class = KandinskyInpaintPipeline

    def __call__(
        self,
        prompt: str | list[str],
        image: Any,
        mask_image: Any,
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 100,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        height: int = 512,
        width: int = 512,
        prior_guidance_scale: float = 4.0,
        prior_num_inference_steps: int = 25,
        rng: Any = None,
        latents: Any = None,
        output_type: str = "pil",
        callback: Callable[[int, int, Any], None] | None = None,
        callback_steps: int = 1,
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """As ``KandinskyCombinedPipeline``, plus ``image`` and ``mask_image`` (white = repaint)."""
        embeds, negative, key = self.prior_embeds(prompt, negative_prompt, num_images_per_prompt,
                                                  prior_num_inference_steps, prior_guidance_scale, rng, latents)
        return self.decode(prompt, embeds, negative, key, {"image": image, "mask_image": mask_image}, width=width,
                           height=height, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                           output_type=output_type, callback=callback, callback_steps=callback_steps,
                           return_dict=return_dict)


def cli_generate(args: Any, call: dict, dtype: Any, save: Callable) -> list:
    """``jaxgen generate`` for a Kandinsky 2.1 decoder: prior then decoder (``--prior-model``, default the one
    the decoder names; ``--prior-steps``, ``--prior-guidance``; ``--image`` / ``--strength``: image to image)."""
    combined = KandinskyImg2ImgCombinedPipeline if "image" in call else KandinskyCombinedPipeline
    return run_combined(combined, args, call, dtype)


def prior_options(args: Any) -> dict:
    """The prior's settings on the command line, as the combined pipelines name them."""
    options = {}
    if args.prior_steps is not None:
        options["prior_num_inference_steps"] = args.prior_steps
    if args.prior_guidance is not None:
        options["prior_guidance_scale"] = args.prior_guidance
    return options


def run_combined(combined_class: type, args: Any, call: dict, dtype: Any) -> list:
    """A combined pipeline from ``args.model`` (and ``--prior-model``) on the command line's prompt: its images."""
    pipe = combined_class.from_pretrained(args.model, prior=args.prior_model, dtype=dtype)
    return pipe(args.prompt, **call, **prior_options(args)).images
