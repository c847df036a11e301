"""Pipelines, one file per family; ``PIPELINES`` maps diffusers class names to their modules."""

PIPELINES = {
    "PixArtAlphaPipeline": "jaxgen.pipelines.pixart_alpha",
}
