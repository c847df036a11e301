"""Where each family registers itself, once.

A family's entry names its pipelines, the models and schedulers it adds, which of its pipelines
the Auto pipelines pick for each task, and (optionally) what ``jaxgen generate`` runs for it.
Everything else follows from its own files: a model class declares its partition rules
(``param_axes``), its key map lives in ``convert/<model module>.py``, and a pipeline class declares
its components. Only names and module paths are stored here, so ``import jaxgen`` imports nothing
heavy; ``load(module, name)`` imports on first use.

Adding a family: its files (models, a pipeline module, ``convert/`` key maps, tests) and one
``Family(...)`` below.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
from typing import Any, Mapping

__all__ = [
    "Family", "FAMILIES", "PIPELINES", "MODELS", "SCHEDULERS", "TASKS", "load", "pipeline_class",
    "family_of", "task_pipeline", "command_line_pipeline",
]

TASKS = ("text-to-image", "image-to-image", "inpainting")
"""The Auto pipelines' tasks: ``AutoPipelineForText2Image``, ``...Image2Image``, ``...Inpainting``."""


def _frozen(mapping: Mapping) -> types.MappingProxyType:
    return types.MappingProxyType(dict(mapping))


@dataclasses.dataclass(frozen=True)
class Family:
    """One family's registration.

    ``pipelines``: diffusers pipeline class name -> the jaxgen module defining it (exported as
    ``jaxgen.<Name>``). ``models`` / ``schedulers``: class name -> module (``jaxgen.models.<Name>``,
    ``jaxgen.schedulers.<Name>``). ``tasks``: Auto-pipeline task -> {the ``_class_name`` a
    model_index.json may hold -> this family's pipeline for that task}, as diffusers'
    ``AUTO_*_PIPELINES_MAPPING``. ``cli_generate``: ``"module:function"`` that ``jaxgen generate``
    calls for this family's checkpoints instead of one text-to-image pipeline call (the IF cascade),
    as ``fn(args, call, dtype, save) -> images``, or None. ``cli_caption``: ``"module:function"`` that
    ``jaxgen caption`` calls for this family's checkpoints, ``fn(args, dtype) -> captions``; None: no captions.
    """

    name: str
    pipelines: Mapping[str, str] = dataclasses.field(default_factory=dict)
    models: Mapping[str, str] = dataclasses.field(default_factory=dict)
    schedulers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tasks: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    cli_generate: str | None = None
    cli_caption: str | None = None

    def __post_init__(self) -> None:
        for field in ("pipelines", "models", "schedulers"):
            object.__setattr__(self, field, _frozen(getattr(self, field)))
        unknown = set(self.tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"family {self.name!r}: unknown tasks {sorted(unknown)}; tasks are {TASKS}")
        object.__setattr__(self, "tasks", _frozen({t: _frozen(m) for t, m in self.tasks.items()}))


def _same_target(names: Mapping[str, str], target: str) -> dict[str, str]:
    """Every model_index class name of a family -> the one pipeline a task loads for it."""
    return dict.fromkeys(names, target)


_IF_STAGE_I = ("IFPipeline", "IFImg2ImgPipeline", "IFInpaintingPipeline")
_KANDINSKY = ("KandinskyPipeline", "KandinskyImg2ImgPipeline", "KandinskyInpaintPipeline", "KandinskyCombinedPipeline",
              "KandinskyImg2ImgCombinedPipeline", "KandinskyInpaintCombinedPipeline")
_KANDINSKY_22 = ("KandinskyV22Pipeline", "KandinskyV22Img2ImgPipeline", "KandinskyV22InpaintPipeline",
                 "KandinskyV22CombinedPipeline", "KandinskyV22Img2ImgCombinedPipeline", "KandinskyV22InpaintCombinedPipeline")
_KANDINSKY_3 = ("Kandinsky3Pipeline", "Kandinsky3Img2ImgPipeline")

FAMILIES: tuple[Family, ...] = (
    Family(
        "common",  # shared by several families
        models={
            "AutoencoderKL": "jaxgen.models.autoencoder_kl",
            "UNet2DConditionModel": "jaxgen.models.unet_2d_condition",
            "T5EncoderModel": "jaxgen.text.t5",
            "CLIPTextModel": "jaxgen.text.clip",
            "CLIPTextModelWithProjection": "jaxgen.text.clip",
            "CLIPVisionModelWithProjection": "jaxgen.text.clip",
        },
        schedulers={
            "DDPMScheduler": "jaxgen.schedulers.ddpm",
            "DDIMScheduler": "jaxgen.schedulers.ddim",
            "DPMSolverMultistepScheduler": "jaxgen.schedulers.dpmsolver_multistep",
        },
    ),
    Family(
        "pixart",
        pipelines={"PixArtAlphaPipeline": "jaxgen.pipelines.pixart_alpha",
                   "PixArtSigmaPipeline": "jaxgen.pipelines.pixart_sigma"},
        models={"PixArtTransformer2DModel": "jaxgen.models.pixart_transformer"},
        tasks={"text-to-image": {"PixArtAlphaPipeline": "PixArtAlphaPipeline",
                                 "PixArtSigmaPipeline": "PixArtSigmaPipeline"}},
    ),
    Family(
        "deepfloyd_if",
        pipelines=dict.fromkeys(
            ("IFPipeline", "IFImg2ImgPipeline", "IFInpaintingPipeline", "IFSuperResolutionPipeline",
             "IFImg2ImgSuperResolutionPipeline", "IFInpaintingSuperResolutionPipeline"),
            "jaxgen.pipelines.deepfloyd_if",
        ),
        models={"IFSafetyChecker": "jaxgen.models.safety_checker", "IFWatermarker": "jaxgen.models.watermark"},
        tasks={
            "text-to-image": _same_target(_IF_STAGE_I, "IFPipeline"),
            "image-to-image": _same_target(_IF_STAGE_I, "IFImg2ImgPipeline"),
            "inpainting": _same_target(_IF_STAGE_I, "IFInpaintingPipeline"),
        },
        cli_generate="jaxgen.pipelines.deepfloyd_if.cascade:cli_generate",
    ),
    Family(
        "kandinsky",
        pipelines=dict.fromkeys(
            ("KandinskyPriorPipeline", "KandinskyPipeline", "KandinskyImg2ImgPipeline", "KandinskyInpaintPipeline",
             "KandinskyCombinedPipeline", "KandinskyImg2ImgCombinedPipeline", "KandinskyInpaintCombinedPipeline"),
            "jaxgen.pipelines.kandinsky",
        ),
        models={
            "PriorTransformer": "jaxgen.models.prior_transformer",
            "VQModel": "jaxgen.models.vq_model",
            "MultilingualCLIP": "jaxgen.text.multilingual_clip",
        },
        schedulers={"UnCLIPScheduler": "jaxgen.schedulers.unclip"},
        # as diffusers' AUTO_*_PIPELINES_MAPPING["kandinsky"]: any Kandinsky 2.1 checkpoint -> prior + decoder
        tasks={
            "text-to-image": _same_target(_KANDINSKY, "KandinskyCombinedPipeline"),
            "image-to-image": _same_target(_KANDINSKY, "KandinskyImg2ImgCombinedPipeline"),
            "inpainting": _same_target(_KANDINSKY, "KandinskyInpaintCombinedPipeline"),
        },
        cli_generate="jaxgen.pipelines.kandinsky.combined:cli_generate",
    ),
    Family(
        "kandinsky2_2",
        pipelines=dict.fromkeys(
            ("KandinskyV22PriorPipeline", "KandinskyV22PriorEmb2EmbPipeline", *_KANDINSKY_22,
             "KandinskyV22ControlnetPipeline", "KandinskyV22ControlnetImg2ImgPipeline"),
            "jaxgen.pipelines.kandinsky2_2",
        ),
        # as diffusers' AUTO_*_PIPELINES_MAPPING["kandinsky22"] (the ControlNet's class is in none of them)
        tasks={
            "text-to-image": _same_target(_KANDINSKY_22, "KandinskyV22CombinedPipeline"),
            "image-to-image": _same_target(_KANDINSKY_22, "KandinskyV22Img2ImgCombinedPipeline"),
            "inpainting": _same_target(_KANDINSKY_22, "KandinskyV22InpaintCombinedPipeline"),
        },
        cli_generate="jaxgen.pipelines.kandinsky2_2.combined:cli_generate",
    ),
    Family(
        "kandinsky3",
        pipelines=dict.fromkeys(("Kandinsky3Pipeline", "Kandinsky3Img2ImgPipeline"), "jaxgen.pipelines.kandinsky3"),
        models={"Kandinsky3UNet": "jaxgen.models.kandinsky3_unet"},
        # as diffusers' AUTO_*_PIPELINES_MAPPING["kandinsky3"] (no inpainting)
        tasks={
            "text-to-image": _same_target(_KANDINSKY_3, "Kandinsky3Pipeline"),
            "image-to-image": _same_target(_KANDINSKY_3, "Kandinsky3Img2ImgPipeline"),
        },
    ),
    Family(
        "wuerstchen",
        pipelines=dict.fromkeys(("WuerstchenPriorPipeline", "WuerstchenDecoderPipeline", "WuerstchenCombinedPipeline"),
                                "jaxgen.pipelines.wuerstchen"),
        models={"PaellaVQModel": "jaxgen.models.paella_vq_model", "WuerstchenPrior": "jaxgen.models.wuerstchen_prior",
                "WuerstchenDiffNeXt": "jaxgen.models.wuerstchen_diffnext"},
        schedulers={"DDPMWuerstchenScheduler": "jaxgen.schedulers.ddpm_wuerstchen"},
        # as diffusers' AUTO_TEXT2IMAGE_(DECODER_)PIPELINES_MAPPING["wuerstchen"]: a decoder -> prior + decoder
        tasks={"text-to-image": _same_target(("WuerstchenDecoderPipeline", "WuerstchenCombinedPipeline"),
                                             "WuerstchenCombinedPipeline")},
        cli_generate="jaxgen.pipelines.wuerstchen:cli_generate",
    ),
    Family(
        "unidiffuser",  # not in diffusers' Auto-pipeline tables: no tasks
        pipelines={"UniDiffuserPipeline": "jaxgen.pipelines.unidiffuser"},
        models={"UniDiffuserModel": "jaxgen.models.unidiffuser_model",
                "UniDiffuserTextDecoder": "jaxgen.models.unidiffuser_text_decoder"},
        cli_caption="jaxgen.pipelines.unidiffuser:cli_caption",
    ),
    Family(
        "stable_diffusion_upscale",  # DeepFloyd IF's stage III
        pipelines={"StableDiffusionUpscalePipeline": "jaxgen.pipelines.stable_diffusion_upscale"},
    ),
)


def _merged(field: str) -> types.MappingProxyType:
    out: dict[str, str] = {}
    for family in FAMILIES:
        for name, module in getattr(family, field).items():
            if name in out:
                raise ValueError(f"{field[:-1]} {name!r} is registered twice")
            out[name] = module
    return _frozen(out)


PIPELINES = _merged("pipelines")
"""Every pipeline: diffusers class name -> jaxgen module."""
MODELS = _merged("models")
"""Every model: class name -> jaxgen module."""
SCHEDULERS = _merged("schedulers")
"""Every scheduler: diffusers class name -> jaxgen module."""


def load(module: str, name: str) -> Any:
    """``module.name``, imported on first use."""
    return getattr(importlib.import_module(module), name)


def pipeline_class(class_name: str) -> type:
    """The jaxgen pipeline class for a diffusers pipeline class name (ValueError naming the supported ones)."""
    if class_name not in PIPELINES:
        raise ValueError(f"pipeline class {class_name!r} is not supported by jaxgen; supported: {sorted(PIPELINES)}")
    return load(PIPELINES[class_name], class_name)


def family_of(pipeline_class_name: str) -> Family | None:
    """The family that registers this pipeline class, or None."""
    return next((f for f in FAMILIES if pipeline_class_name in f.pipelines), None)


def task_pipeline(task: str, class_name: str) -> str | None:
    """The pipeline an Auto pipeline loads for ``task`` from a checkpoint whose model_index.json names
    ``class_name``; None when no family maps it."""
    for family in FAMILIES:
        target = family.tasks.get(task, {}).get(class_name)
        if target is not None:
            return target
    return None


def command_line_pipeline(task: str, class_name: str) -> str | None:
    """The pipeline ``jaxgen generate`` and ``jaxgen batch`` run for ``task`` on a checkpoint whose model_index.json
    names ``class_name``: the Auto pipelines' (``task_pipeline``), or, for a family outside diffusers' Auto tables
    (no ``tasks``: UniDiffuser), the checkpoint's own pipeline for text to image; None when there is none."""
    target = task_pipeline(task, class_name)
    family = family_of(class_name)
    if target is None and task == "text-to-image" and family is not None and not family.tasks:
        target = class_name
    return target
