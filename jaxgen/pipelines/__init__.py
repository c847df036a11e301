"""Pipelines, one file per family; ``PIPELINES`` maps diffusers class names to their modules."""

PIPELINES = {
    "PixArtAlphaPipeline": "jaxgen.pipelines.pixart_alpha",
    "IFPipeline": "jaxgen.pipelines.deepfloyd_if",
    "IFSuperResolutionPipeline": "jaxgen.pipelines.deepfloyd_if",
    "IFImg2ImgPipeline": "jaxgen.pipelines.deepfloyd_if",
    "IFImg2ImgSuperResolutionPipeline": "jaxgen.pipelines.deepfloyd_if",
    "IFInpaintingPipeline": "jaxgen.pipelines.deepfloyd_if",
    "IFInpaintingSuperResolutionPipeline": "jaxgen.pipelines.deepfloyd_if",
    "StableDiffusionUpscalePipeline": "jaxgen.pipelines.stable_diffusion_upscale",
}
