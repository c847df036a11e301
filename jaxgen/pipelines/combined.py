"""Prior + decoder pipelines as one: what Kandinsky 2.1, 2.2 and Würstchen's combined pipelines share.

A combined pipeline holds a prior pipeline (``pipe.prior_pipe``) and a decoder pipeline
(``pipe.decoder_pipe``); its components carry diffusers' names (the decoder's, and the prior's with
``prior_`` in front: ``pipe.prior_prior``, ``pipe.prior_text_encoder``, ...). Three ways to build one:

- ``...CombinedPipeline.from_pretrained(decoder_repo)``: the prior is the one the decoder repository's
  README.md names in its metadata (``prior: [kandinsky-community/kandinsky-2-1-prior]``, as diffusers'
  connected pipelines), or the one given as ``prior=`` (a repo id, a folder, or a loaded prior
  pipeline); ``prior_<component>=`` keywords go to the prior;
- ``...CombinedPipeline.from_pipes(prior_pipe, decoder_pipe)``: two loaded pipelines, nothing reloaded;
- ``...CombinedPipeline(**components)`` with diffusers' component names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import jax.numpy as jnp

from jaxgen import hub
from jaxgen.pipelines import checks

__all__ = ["PriorDecoderPipeline", "connected_prior", "prior_options", "run_combined", "PRIOR"]

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
            " pass `prior=` (a repo id, a folder, or a loaded prior pipeline)"
        )
    return priors[0] if isinstance(priors, list) else priors


class PriorDecoderPipeline:
    """Prior + decoder pipelines as one. Subclasses set ``_prior_class`` and ``_decoder_class`` (both
    ``DiffusionPipeline`` subclasses) and write ``__call__``."""

    _prior_class: ClassVar[type]
    _decoder_class: ClassVar[type]
    _components: ClassVar[dict] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:  # as every pipeline's: the arguments named alike checked first
            cls.__call__ = checks.checking_named_arguments(cls.__dict__["__call__"])
        if not (hasattr(cls, "_prior_class") and hasattr(cls, "_decoder_class")):
            return  # an intermediate base (Kandinsky's), its subclasses name the two
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
    def from_pipes(cls, prior_pipe: Any, decoder_pipe: Any) -> "PriorDecoderPipeline":
        """Two loaded pipelines -> the combined pipeline, sharing their components (nothing reloaded)."""
        return cls(**decoder_pipe.components, **{PRIOR + k: v for k, v in prior_pipe.components.items()})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, prior: Any = None, *,
                        dtype: Any = jnp.float32, variant: str | None = None, mesh: Any = None,
                        text_encoder_quantization: str | None = None, model_cpu_offload: bool = False,
                        **components: Any) -> "PriorDecoderPipeline":
        """The decoder from ``pretrained_model_name_or_path`` and the prior from ``prior`` (a repo id, a
        folder or a loaded prior pipeline; default: the one the decoder's README.md names), on one mesh.
        ``prior_<name>=`` keywords are the prior's components, others the decoder's.
        ``text_encoder_quantization="int8"``: the text encoders of either that have an int8 form (the prior's CLIP).
        ``model_cpu_offload=True``: both loaded into host memory (each part's ``from_pretrained``), a loaded
        ``prior`` offloaded too: the pipeline as after ``enable_model_cpu_offload()``."""
        prior_components = {k[len(PRIOR):]: components.pop(k) for k in list(components) if k.startswith(PRIOR)}
        quantize = {c: _quantization(c, text_encoder_quantization) for c in (cls._prior_class, cls._decoder_class)}
        if text_encoder_quantization is not None and not any(quantize.values()):
            raise ValueError(f"`text_encoder_quantization`: {cls.__name__} has no text encoder with an int8 form")
        prior_components["text_encoder_quantization"] = quantize[cls._prior_class]
        components["text_encoder_quantization"] = quantize[cls._decoder_class]
        hub.load_model_index(hub.resolve_pipeline(pretrained_model_name_or_path, lambda index: {}))  # found, first
        # the prior first: 2.2's loads its image encoder alone before anything else (a lower peak)
        if not isinstance(prior, cls._prior_class):
            prior = cls._prior_class.from_pretrained(prior or connected_prior(pretrained_model_name_or_path),
                                                     dtype=dtype, variant=variant, mesh=mesh,
                                                     model_cpu_offload=model_cpu_offload, **prior_components)
        decoder = cls._decoder_class.from_pretrained(pretrained_model_name_or_path, dtype=dtype, variant=variant,
                                                     mesh=prior.mesh, model_cpu_offload=model_cpu_offload, **components)
        pipe = cls.from_pipes(prior, decoder)
        if model_cpu_offload:  # a prior passed loaded: its models go to host memory too (in this pipeline only)
            pipe.enable_model_cpu_offload()
        return pipe

    @property
    def components(self) -> dict[str, Any]:
        """The decoder's components and the prior's (``prior_`` + name), as diffusers names them."""
        return {**self.decoder_pipe.components, **{PRIOR + k: v for k, v in self.prior_pipe.components.items()}}

    def enable_model_cpu_offload(self, device: None = None) -> None:
        """Both pipelines' models in host memory, each on the devices only while it runs (as diffusers' combined
        pipelines forward it to their parts; see ``DiffusionPipeline.enable_model_cpu_offload``). ``device``
        must be None."""
        from jaxgen.pipelines.offload import check_device

        check_device(device)  # before either part changes
        self.prior_pipe.enable_model_cpu_offload()
        self.decoder_pipe.enable_model_cpu_offload()

    def disable_model_cpu_offload(self) -> None:
        """Both pipelines' offloaded models back on the devices (``DiffusionPipeline.disable_model_cpu_offload``)."""
        self.prior_pipe.disable_model_cpu_offload()
        self.decoder_pipe.disable_model_cpu_offload()

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """The progress bar options of both pipelines."""
        self.prior_pipe.set_progress_bar_config(**kwargs)
        self.decoder_pipe.set_progress_bar_config(**kwargs)

    @property
    def progress_bar_config(self) -> dict[str, Any]:
        """The progress bar options (``set_progress_bar_config`` sets both pipelines'; the decoder's, a copy)."""
        return self.decoder_pipe.progress_bar_config

    def warmup(self, height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
               batch_size: int = 1, prior_num_inference_steps: int | None = None, **kwargs: Any) -> float:
        """Compile the prior's and the decoder's programs ahead (see ``DiffusionPipeline.warmup``);
        returns the seconds it took."""
        prior = {} if prior_num_inference_steps is None else {"num_inference_steps": prior_num_inference_steps}
        seconds = self.prior_pipe.warmup(height, width, batch_size=batch_size, **prior)  # a size where the prior takes one
        return seconds + self.decoder_pipe.warmup(height, width, num_inference_steps, batch_size, **kwargs)


def _quantization(pipeline_class: type, quantization: str | None) -> str | None:
    """``quantization`` where ``pipeline_class`` has a text encoder with an int8 form, else None."""
    from jaxgen.pipelines.loading import int8_text_encoders

    return quantization if int8_text_encoders(pipeline_class._components) else None


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
    from jaxgen.cli import load_options

    pipe = combined_class.from_pretrained(args.model, prior=args.prior_model, dtype=dtype, **load_options(args))
    return pipe(args.prompt, **call, **prior_options(args)).images
