"""DeepFloyd IF in JAX: the six diffusers pipelines of the cascade's pixel-space stages.

Stage I (``IFPipeline``, ``IFImg2ImgPipeline``, ``IFInpaintingPipeline``) denoises 64x64 images
from T5 embeddings; stage II (``IFSuperResolutionPipeline``, ``IFImg2ImgSuperResolutionPipeline``,
``IFInpaintingSuperResolutionPipeline``) upscales the stage I image to 256x256: the low-resolution
image is resized (bilinear, corners aligned), noised to ``noise_level`` by the
``image_noising_scheduler`` and given to the UNet as extra channels, with the noise level as its
class label. Arguments, defaults and messages are diffusers 0.42's; the torch ``generator`` is
``rng`` and ``latents=`` (the initial noise, NHWC) is accepted by every pipeline. The whole cascade
(stage I, II and the x4 upscaler as stage III) is ``jaxgen.pipelines.deepfloyd_if.generate_cascade``.

What is IF's own here: the UNet adapter (``IFDenoiser``: guidance on epsilon, the learned variance
the text half's), its image preprocessing (IF's resize of PIL inputs), ``encode_prompt`` (T5, 77
tokens, the UNet sees every token) and the stage II conditioning (``upscale_and_noise``); the
tasks (img2img's strength, inpainting's blend after every step) are the shared parts of
``jaxgen.pipelines.tasks``.

Images are channels last. Inputs: PIL images, or arrays (N, H, W, C) / (H, W, C), either in [0, 1]
(as ``output_type="np"`` returns them) or in [-1, 1] (as ``output_type="latent"`` returns them and
diffusers takes arrays): an array with a negative value is taken as already in [-1, 1].

Layout: ``common.py`` (the adapter, preprocessing, encoding, the run's steps), ``stage_1.py``,
``stage_2.py`` (the pipelines), ``cascade.py`` (``generate_cascade``: stages I, II and III, each
stage's weights freed before the next loads).
"""

from jaxgen.pipelines.deepfloyd_if.cascade import generate_cascade
from jaxgen.pipelines.deepfloyd_if.common import IFDenoiser, _split_rng, resize, upscale_and_noise  # noqa: F401
from jaxgen.pipelines.deepfloyd_if.stage_1 import IFImg2ImgPipeline, IFInpaintingPipeline, IFPipeline
from jaxgen.pipelines.deepfloyd_if.stage_2 import (
    IFImg2ImgSuperResolutionPipeline, IFInpaintingSuperResolutionPipeline, IFSuperResolutionPipeline,
)
from jaxgen.pipelines.if_timesteps import (  # noqa: F401  (re-exported: `timesteps=fast27_timesteps`)
    fast27_timesteps, smart27_timesteps, smart50_timesteps, smart100_timesteps, smart185_timesteps,
    super27_timesteps, super40_timesteps, super100_timesteps,
)
from jaxgen.pipelines.outputs import IFPipelineOutput

__all__ = [
    "IFPipeline", "IFSuperResolutionPipeline", "IFImg2ImgPipeline", "IFImg2ImgSuperResolutionPipeline",
    "IFInpaintingPipeline", "IFInpaintingSuperResolutionPipeline", "IFPipelineOutput", "IFDenoiser",
    "upscale_and_noise", "resize", "generate_cascade",
]
