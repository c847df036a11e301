"""AutoPipelineFor*: pick the pipeline class named by model_index.json's ``_class_name``."""

from __future__ import annotations

import importlib
import os
from typing import Any

from jaxgen import hub
from jaxgen.pipelines import PIPELINES

__all__ = ["AutoPipelineForText2Image", "AutoPipelineForImage2Image", "AutoPipelineForInpainting", "pipeline_class"]


def pipeline_class(class_name: str) -> type:
    """The jaxgen pipeline class for a diffusers pipeline class name."""
    if class_name not in PIPELINES:
        raise ValueError(f"pipeline class {class_name!r} is not supported by jaxgen; supported: {sorted(PIPELINES)}")
    return getattr(importlib.import_module(PIPELINES[class_name]), class_name)


def _if_family(target: str) -> dict[str, str]:
    """DeepFloyd IF stage I (diffusers' "if" entry of AUTO_*_PIPELINES_MAPPING): any of its three tasks -> ``target``."""
    return dict.fromkeys(("IFPipeline", "IFImg2ImgPipeline", "IFInpaintingPipeline"), target)


class _AutoPipeline:
    """Reads ``_class_name`` from model_index.json and loads that pipeline (text-to-image task)."""

    # diffusers class name as written in model_index.json -> the class for this task
    _task_names: dict[str, str] = {}
    _task = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise EnvironmentError(f"{type(self).__name__} is built with `{type(self).__name__}.from_pretrained(...)`")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Load the pipeline that model_index.json names; keyword arguments go to its ``from_pretrained``."""
        root = hub.resolve_checkpoint(pretrained_model_name_or_path)
        class_name = hub.load_model_index(root).get("_class_name")
        if not isinstance(class_name, str):
            raise hub.CheckpointError(f"{root}/model_index.json has no _class_name")
        target = cls._task_names.get(class_name)
        if target is None:
            raise ValueError(f"{cls.__name__} cannot load {class_name!r}: jaxgen has no {cls._task} pipeline for it")
        return pipeline_class(target).from_pretrained(root, **kwargs)


class AutoPipelineForText2Image(_AutoPipeline):
    """``AutoPipelineForText2Image.from_pretrained(repo_or_folder)`` -> the text-to-image pipeline it names."""

    _task = "text-to-image"
    _task_names = {"PixArtAlphaPipeline": "PixArtAlphaPipeline", **_if_family("IFPipeline")}


class AutoPipelineForImage2Image(_AutoPipeline):
    """``AutoPipelineForImage2Image.from_pretrained(repo_or_folder)`` -> the image-to-image pipeline of that family."""

    _task = "image-to-image"
    _task_names = {**_if_family("IFImg2ImgPipeline")}


class AutoPipelineForInpainting(_AutoPipeline):
    """``AutoPipelineForInpainting.from_pretrained(repo_or_folder)`` -> the inpainting pipeline of that family."""

    _task = "inpainting"
    _task_names = {**_if_family("IFInpaintingPipeline")}
