"""The DeepFloyd IF cascade as its documentation runs it, as one library function.

Stage I (64 px) makes images from T5 embeddings; stage II (256 px) upscales them, reusing stage I's
embeddings (it loads without a text encoder); stage III, the x4 upscaler (1024 px), upscales those
with its own CLIP text encoder. Each stage is loaded when it is needed and, when this function
loaded it, dropped before the next one loads: only one stage's weights are resident at a time
(stage I with T5-XXL is 4.3B + 4.8B parameters). Every checkpoint is located (its model_index.json
read) before stage I runs, so a missing stage II fails before any sampling.
"""

from __future__ import annotations

import gc
import os
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from jaxgen import hub
from jaxgen.image_processing import numpy_to_pil

__all__ = ["generate_cascade", "cli_generate"]

StageArg = Any  # a checkpoint (folder or Hub repo id), a loaded pipeline, or None (stop before this stage)


def _locate(stage: StageArg, name: str) -> None:
    """Fail early for a stage checkpoint that cannot be found (reads only its model_index.json)."""
    from jaxgen.pipelines.pipeline_utils import DiffusionPipeline

    if isinstance(stage, (str, os.PathLike)):
        hub.load_model_index(hub.resolve_pipeline(stage, lambda index: {}))
    elif stage is not None and not isinstance(stage, DiffusionPipeline):
        raise TypeError(f"`{name}` must be a checkpoint path or repo id, a loaded pipeline, or None; got {type(stage).__name__}")


def _load(stage: StageArg, cls: Any, dtype: Any, **options: Any) -> Any:
    """The stage's pipeline: loaded from a checkpoint (with ``options``), or the one given."""
    return cls.from_pretrained(stage, dtype=dtype, **options) if isinstance(stage, (str, os.PathLike)) else stage


def generate_cascade(
    prompt: str | list[str],
    stage_1: StageArg = "DeepFloyd/IF-I-XL-v1.0",
    stage_2: StageArg = "DeepFloyd/IF-II-L-v1.0",
    stage_3: StageArg = "stabilityai/stable-diffusion-x4-upscaler",
    *,
    negative_prompt: str | list[str] | None = None,
    num_images_per_prompt: int = 1,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    height: int | None = None,
    width: int | None = None,
    noise_level: int = 100,
    rng: Any = None,
    dtype: Any = jnp.float32,
    on_stage: Callable[[int, list], None] | None = None,
    text_encoder_quantization: str | None = None,
    model_cpu_offload: bool = False,
) -> list:
    """Run IF stage I, II and III on ``prompt``; returns the last stage's PIL images.

    ``stage_1`` / ``stage_2`` / ``stage_3``: a checkpoint (folder or Hub repo id; loaded here in
    ``dtype`` and freed after its stage), a loaded ``IFPipeline`` / ``IFSuperResolutionPipeline`` /
    ``StableDiffusionUpscalePipeline`` (used as given, not freed), or None to stop before that stage.
    ``num_inference_steps`` / ``guidance_scale``: every stage's (each pipeline's default when None);
    ``height`` / ``width``: stage I's size; ``noise_level``: stage III's. ``on_stage(stage,
    pil_images)`` is called with the images of each stage before the last (to save them).
    ``text_encoder_quantization="int8"``: stage I's T5 and stage III's CLIP quantized while loading.
    ``model_cpu_offload=True``: every stage loaded with its models in host memory (``from_pretrained``'s).
    """
    from jaxgen.pipelines.deepfloyd_if import IFPipeline, IFSuperResolutionPipeline
    from jaxgen.pipelines.stable_diffusion_upscale import StableDiffusionUpscalePipeline

    for stage, name in ((stage_1, "stage_1"), (stage_2, "stage_2"), (stage_3, "stage_3")):
        _locate(stage, name)
    if stage_1 is None:
        raise ValueError("`stage_1` (the IF stage I checkpoint or pipeline) must be given")
    options = {k: v for k, v in (("num_inference_steps", num_inference_steps), ("guidance_scale", guidance_scale))
               if v is not None}
    last = 1 if stage_2 is None else 2 if stage_3 is None else 3

    quantize = {"text_encoder_quantization": text_encoder_quantization, "model_cpu_offload": model_cpu_offload}
    pipe = _load(stage_1, IFPipeline, dtype, **quantize)
    embeds, negative = pipe.encode_prompt(prompt, negative_prompt=negative_prompt)
    size = {k: v for k, v in (("height", height), ("width", width)) if v is not None}
    images = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, output_type="pil" if last == 1 else "np",
                  num_images_per_prompt=num_images_per_prompt, rng=rng, **size, **options).images
    del pipe  # stage I (with T5) goes before stage II loads, unless the caller holds it
    gc.collect()
    if last == 1:
        return images
    if on_stage is not None:
        on_stage(1, numpy_to_pil(images))

    # stage I made one row per image: its embeddings repeated to match
    per_image = lambda x: None if x is None else np.repeat(np.asarray(x), num_images_per_prompt, axis=0)
    pipe = _load(stage_2, IFSuperResolutionPipeline, dtype, text_encoder=None, model_cpu_offload=model_cpu_offload)
    images = pipe(image=images, prompt_embeds=per_image(embeds), negative_prompt_embeds=per_image(negative),
                  output_type="pil" if last == 2 else "np", rng=rng, **options).images
    del pipe
    gc.collect()
    if last == 2:
        return images
    if on_stage is not None:
        on_stage(2, numpy_to_pil(images))

    prompts = [prompt] * len(images) if isinstance(prompt, str) else [p for p in prompt for _ in range(num_images_per_prompt)]
    negatives = None if negative_prompt is None else (
        [negative_prompt] * len(images) if isinstance(negative_prompt, str)
        else [p for p in negative_prompt for _ in range(num_images_per_prompt)])
    pipe = _load(stage_3, StableDiffusionUpscalePipeline, dtype, **quantize)
    return pipe(prompt=prompts, negative_prompt=negatives, image=images, noise_level=noise_level, rng=rng,
                **options).images


def cli_generate(args: Any, call: dict, dtype: Any, save: Callable[[list, int | None], None]) -> list:
    """``jaxgen generate`` for an IF checkpoint: the cascade with the command line's stage options
    (``--stages``, ``--stage2-model``, ``--stage3-model``, ``--noise-level``, ``--save-stages``)."""
    from jaxgen.cli import load_options

    unknown = sorted(set(call) & {"image", "mask_image", "strength", "hint"})
    if unknown:  # the cascade starts from text; IFImg2ImgPipeline / IFInpaintingPipeline take images in Python
        raise ValueError(f"--model {args.model}: the IF cascade generates from text; it does not take {unknown}")
    if args.stages not in (1, 2, 3):
        raise ValueError(f"--stages must be 1, 2 or 3, got {args.stages}")
    return generate_cascade(
        args.prompt, args.model, args.stage2_model if args.stages >= 2 else None,
        args.stage3_model if args.stages >= 3 else None, negative_prompt=args.negative_prompt,
        num_images_per_prompt=call.get("num_images_per_prompt", 1), num_inference_steps=call.get("num_inference_steps"),
        guidance_scale=call.get("guidance_scale"), height=call.get("height"), width=call.get("width"),
        noise_level=args.noise_level, rng=call.get("rng"), dtype=dtype,
        on_stage=(lambda stage, images: save(images, stage)) if args.save_stages else None,
        **load_options(args),
    )
