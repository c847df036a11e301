"""AutoPipelineFor*: pick the pipeline a task needs from the ``_class_name`` in model_index.json.

Which pipeline serves which task for which checkpoint is each family's registration
(``jaxgen.registry``, ``Family.tasks``), as diffusers' ``AUTO_*_PIPELINES_MAPPING``.
"""

from __future__ import annotations

import os
from typing import Any

from jaxgen import hub, registry

__all__ = ["AutoPipelineForText2Image", "AutoPipelineForImage2Image", "AutoPipelineForInpainting", "pipeline_class",
           "checkpoint_class_name"]

pipeline_class = registry.pipeline_class


def checkpoint_class_name(pretrained_model_name_or_path: str | os.PathLike) -> str:
    """The ``_class_name`` of a checkpoint's model_index.json (nothing else is downloaded)."""
    root = hub.resolve_pipeline(pretrained_model_name_or_path, lambda index: {})
    class_name = hub.load_model_index(root).get("_class_name")
    if not isinstance(class_name, str):
        raise hub.CheckpointError(f"{root}/model_index.json has no _class_name")
    return class_name


class _AutoPipeline:
    """Reads ``_class_name`` from model_index.json (downloading nothing else) and loads the pipeline
    registered for ``_task``."""

    _task = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise EnvironmentError(f"{type(self).__name__} is built with `{type(self).__name__}.from_pretrained(...)`")

    @classmethod
    def pipeline_class_for(cls, pretrained_model_name_or_path: str | os.PathLike) -> type:
        """The jaxgen pipeline class this Auto pipeline loads for a checkpoint."""
        class_name = checkpoint_class_name(pretrained_model_name_or_path)
        target = registry.task_pipeline(cls._task, class_name)
        if target is None:
            raise ValueError(f"{cls.__name__} cannot load {class_name!r}: jaxgen has no {cls._task} pipeline for it")
        return registry.pipeline_class(target)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load the pipeline for this task that model_index.json's class maps to; keyword arguments go
        to its ``from_pretrained``."""
        return cls.pipeline_class_for(pretrained_model_name_or_path).from_pretrained(pretrained_model_name_or_path, **kwargs)


class AutoPipelineForText2Image(_AutoPipeline):
    """``AutoPipelineForText2Image.from_pretrained(repo_or_folder)`` -> the text-to-image pipeline of that family."""

    _task = "text-to-image"


class AutoPipelineForImage2Image(_AutoPipeline):
    """``AutoPipelineForImage2Image.from_pretrained(repo_or_folder)`` -> the image-to-image pipeline of that family."""

    _task = "image-to-image"


class AutoPipelineForInpainting(_AutoPipeline):
    """``AutoPipelineForInpainting.from_pretrained(repo_or_folder)`` -> the inpainting pipeline of that family."""

    _task = "inpainting"
