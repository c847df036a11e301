"""The ``jaxgen`` command: ``jaxgen generate "prompt" --model REPO_OR_FOLDER ...``,
``jaxgen batch --model REPO_OR_FOLDER --prompts prompts.txt|.jsonl --out DIR ...`` and
``jaxgen caption image.png --model REPO_OR_FOLDER`` (image to text: UniDiffuser)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import PIL.Image

__all__ = ["main", "load_options"]


def _output_paths(out: str, count: int) -> list[Path]:
    path = Path(out)
    if path.suffix == "" or path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        return [path / f"image-{i}.png" for i in range(count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


def _check_out(out: str, folder: bool = False) -> None:
    """Fail before any model loads when nothing could be written at ``--out`` (a file path, or a folder)."""
    path = Path(out)
    target = path if folder or path.suffix == "" or path.is_dir() else path.parent
    if target.exists() and not target.is_dir():
        raise ValueError(f"--out {out}: {target} is a file, not a folder")
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: cannot write there ({existing} is not a writable folder)")


def _save_pngs(images: list, paths: list[Path]) -> None:
    for image, path in zip(images, paths):
        tmp = path.with_name(path.name + ".tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, path)  # atomic: no half-written image is ever seen at `path`
        print(path)


def _stage_paths(out: str, count: int, stage: int) -> list[Path]:
    """Where stage ``stage``'s images go with --save-stages: the output names with ``-stageN`` added."""
    return [p.with_name(f"{p.stem}-stage{stage}{p.suffix}") for p in _output_paths(out, count)]


def _open_image(path: str, name: str, mode: str) -> PIL.Image.Image:
    """An image file as a PIL image in ``mode``; a missing or unreadable file is a ValueError naming its option."""
    flag = {"image": "--image", "hint": "--hint", "mask_image": "--mask"}[name]
    try:
        with PIL.Image.open(path) as image:
            return image.convert(mode)
    except FileNotFoundError:
        raise ValueError(f"{flag} {path}: no such file") from None
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:  # not an image, truncated, too large
        raise ValueError(f"{flag} {path}: not a readable image ({e})") from None


def _call_options(args: argparse.Namespace, takes: Any) -> dict:
    """The pipeline arguments the command line sets; an option the pipeline does not take is an error."""
    call = {"rng": args.seed, "num_images_per_prompt": args.num_images}
    for name, value in (("num_inference_steps", args.steps), ("height", args.height), ("width", args.width),
                        ("guidance_scale", args.guidance), ("negative_prompt", args.negative_prompt)):
        if value is not None:
            call[name] = value
    if args.no_resolution_binning:
        call["use_resolution_binning"] = False
    if args.mask is not None and args.image is None:
        raise ValueError("--mask needs --image (inpainting repaints the masked part of that image)")
    for name, path, mode in (("image", args.image, "RGB"), ("hint", args.hint, "RGB"), ("mask_image", args.mask, "L")):
        if path is not None:  # image files, given as PIL images
            call[name] = _open_image(path, name, mode)
    if args.strength is not None:
        call["strength"] = args.strength
    unknown = sorted(k for k in call if takes is not None and k not in takes)
    if unknown:
        raise ValueError(f"--model {args.model}: its pipeline does not take {unknown}")
    return call


def _save_captions(texts: list[str], paths: list[Path]) -> None:
    """Each image's caption next to it (``image.png`` -> ``image.txt``), printed too."""
    for text, path in zip(texts, paths):
        path.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
        print(f"{path.with_suffix('.txt')}: {text}")


def _generate_class(args: argparse.Namespace, class_name: str) -> type:
    """The pipeline a single `generate` call runs: the Auto pipeline's for the task, or, for a family outside
    diffusers' Auto tables (UniDiffuser), the checkpoint's own pipeline."""
    from jaxgen import registry

    task = "inpainting" if args.mask is not None else "image-to-image" if args.image is not None else "text-to-image"
    target = registry.command_line_pipeline(task, class_name)
    if target is None:
        raise ValueError(f"--model {args.model}: jaxgen has no {task} pipeline for {class_name!r}")
    return registry.pipeline_class(target)


def _writes_text(cls: type) -> bool:
    """Whether a pipeline's output has captions (UniDiffuser's ``ImageTextPipelineOutput``)."""
    return "text" in {f.name for f in dataclasses.fields(cls._output_class)}


def _generate(args: argparse.Namespace) -> int:
    import inspect

    import jax.numpy as jnp

    from jaxgen import registry
    from jaxgen.pipelines.auto_pipeline import checkpoint_class_name

    _check_out(args.out)
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    class_name = checkpoint_class_name(args.model)
    family = registry.family_of(class_name)
    if family is not None and family.cli_generate is not None:  # more than one pipeline call (IF, Kandinsky, Würstchen)
        if args.prompt is None:
            raise ValueError(f"--model {args.model}: the prompt is required ({family.name} generates from text)")
        module, name = family.cli_generate.split(":")
        save_stage = lambda images, stage: _save_pngs(images, _stage_paths(args.out, len(images), stage))
        images = registry.load(module, name)(args, _call_options(args, None), dtype, save_stage)
        _save_pngs(images, _output_paths(args.out, len(images)))
        return 0
    cls = _generate_class(args, class_name)
    if args.prompt is None and not _writes_text(cls):
        raise ValueError(f"--model {args.model}: the prompt is required; only UniDiffuser generates without one")
    call = _call_options(args, inspect.signature(cls.__call__).parameters)
    if args.prompt is None:  # joint mode: as many captions as images (diffusers takes the smaller count)
        call["num_prompts_per_image"] = args.num_images
    out = cls.from_pretrained(args.model, dtype=dtype, **load_options(args))(args.prompt, **call)
    paths = _output_paths(args.out, len(out.images))
    _save_pngs(out.images, paths)
    if getattr(out, "text", None) is not None:  # UniDiffuser's joint mode: each image with its caption
        _save_captions(out.text, paths)
    return 0


def _caption(args: argparse.Namespace) -> int:
    import jax.numpy as jnp

    from jaxgen import registry
    from jaxgen.pipelines.auto_pipeline import checkpoint_class_name

    for path in args.images:  # a missing file fails before any model loads
        if not Path(path).is_file():
            raise FileNotFoundError(f"image file {path!r} does not exist")
    if args.num_captions < 1:
        raise ValueError(f"--num-captions must be at least 1, got {args.num_captions}")
    class_name = checkpoint_class_name(args.model)
    family = registry.family_of(class_name)
    if family is None or family.cli_caption is None:
        raise ValueError(f"--model {args.model}: {class_name} does not write captions; `jaxgen caption` needs an"
                         " image-to-text model (UniDiffuser: thu-ml/unidiffuser-v1)")
    module, name = family.cli_caption.split(":")
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    captions = registry.load(module, name)(args, dtype)
    n = len(args.images)
    for i, path in enumerate(args.images):  # the pipeline's order: every image once per caption round
        for caption in captions[i::n]:
            print(caption if n == 1 else f"{path}: {caption}")
    return 0


def _batch(args: argparse.Namespace) -> int:
    import jax.numpy as jnp

    from jaxgen.batch import generate_batch, read_prompts
    from jaxgen.pipelines.combined import prior_options

    read_prompts(args.prompts, seed=args.seed)  # a bad prompts file or --out fails before anything loads
    _check_out(args.out, folder=True)
    if args.distributed:
        _join_processes(args)
    elif any(v is not None for v in (args.coordinator_address, args.num_processes, args.process_id)):
        raise ValueError("--coordinator-address, --num-processes and --process-id need --distributed")
    call = {}
    for name, value in (("num_inference_steps", args.steps), ("height", args.height), ("width", args.width),
                        ("guidance_scale", args.guidance)):
        if value is not None:
            call[name] = value
    if args.no_resolution_binning:
        call["use_resolution_binning"] = False
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    summary = generate_batch(
        args.model, args.prompts, args.out, batch_size=args.batch_size, seed=args.seed,
        num_images_per_prompt=args.num_images, negative_prompt=args.negative_prompt, dtype=dtype,
        show_progress=not args.no_progress, process_index=args.process_index, process_count=args.process_count,
        prior=args.prior_model, **load_options(args),
        **call, **prior_options(args),
    )
    print(
        f"{summary.generated} images generated, {summary.skipped} already done, {summary.images} in all"
        f" ({summary.jobs} prompts) in {summary.seconds:.1f} s ({summary.images_per_second:.2f} img/s);"
        f" manifest: {summary.manifest}"
    )
    return 0


def _join_processes(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` from the flags, or from JAX's environment (TPU pods, SLURM, ...) where they are
    not given; on CPU hosts the processes exchange arrays over gloo."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only: accelerators use their own
    jax.distributed.initialize(coordinator_address=args.coordinator_address, num_processes=args.num_processes,
                               process_id=args.process_id)


def _sampling_args(parser: argparse.ArgumentParser) -> None:
    """The options `generate` and `batch` share."""
    parser.add_argument("--model", required=True, help="Hub repo id, diffusers folder, or `python -m convert` folder")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps, every stage (default: each pipeline's own, PixArt 20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--num-images", type=int, default=1)
    parser.add_argument("--no-resolution-binning", action="store_true",
                        help="generate at exactly --height x --width instead of the nearest trained aspect-ratio bin")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--text-encoder-int8", action="store_true",
                        help="quantize the text encoders (T5, CLIP) to int8 while loading: a quarter of their float32"
                        " memory (from_pretrained's text_encoder_quantization='int8')")
    parser.add_argument("--model-cpu-offload", action="store_true",
                        help="keep the models in host memory and move each to the device only while it runs: the"
                        " device holds one model at a time (from_pretrained's model_cpu_offload=True)")


def load_options(args: argparse.Namespace) -> dict:
    """The ``from_pretrained`` options the command line sets (each family's ``cli_generate`` passes them on)."""
    options: dict = {"text_encoder_quantization": "int8"} if getattr(args, "text_encoder_int8", False) else {}
    if getattr(args, "model_cpu_offload", False):
        options["model_cpu_offload"] = True
    return options


def _prior_args(parser: argparse.ArgumentParser) -> None:
    """The prior's options (`generate` and `batch`)."""
    prior = parser.add_argument_group("prior (when --model is a Kandinsky or Würstchen decoder)")
    prior.add_argument("--prior-model", default=None,
                       help="the prior's repo or folder (default: the one the decoder's README.md names)")
    prior.add_argument("--prior-steps", type=int, default=None,
                       help="the prior's denoising steps (default: Kandinsky 25, Würstchen 60)")
    prior.add_argument("--prior-guidance", type=float, default=None, help="the prior's guidance scale (default 4)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxgen", description="diffusers' text-to-image pipelines in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate images from a prompt")
    gen.add_argument("prompt", nargs="?", default=None,
                     help="the prompt (UniDiffuser without one: joint mode, each image and its caption in a .txt)")
    _sampling_args(gen)
    gen.add_argument("--out", default="image.png", help="file (several images get -0, -1, ...) or folder")
    cascade = gen.add_argument_group("DeepFloyd IF cascade (when --model is an IF stage I)")
    cascade.add_argument("--stages", type=int, default=3, help="run stages I..N: 1 (64 px), 2 (256 px), 3 (1024 px)")
    cascade.add_argument("--stage2-model", default="DeepFloyd/IF-II-L-v1.0")
    cascade.add_argument("--stage3-model", default="stabilityai/stable-diffusion-x4-upscaler")
    cascade.add_argument("--noise-level", type=int, default=100, help="stage III's noise level (default 100)")
    cascade.add_argument("--save-stages", action="store_true", help="also write each earlier stage's images (-stage1, -stage2)")
    _prior_args(gen)
    inputs = gen.add_argument_group("image inputs (pipelines that take them)")
    inputs.add_argument("--image", default=None, help="image file: image to image from it")
    inputs.add_argument("--mask", default=None, help="with --image: inpainting; the mask image file (white: repaint)")
    inputs.add_argument("--strength", type=float, default=None, help="image to image: how much to change (0-1)")
    inputs.add_argument("--hint", default=None, help="Kandinsky 2.2 ControlNet: the hint image (a depth map)")

    caption = sub.add_parser(
        "caption", help="caption images (image to text: UniDiffuser)",
        description="Print a caption for each image (resized to the model's 512 x 512); with several images each "
        "line starts with the file's name.")
    caption.add_argument("images", nargs="+", help="image files")
    caption.add_argument("--model", required=True, help="Hub repo id or diffusers folder (thu-ml/unidiffuser-v1)")
    caption.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's, 50)")
    caption.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's, 8)")
    caption.add_argument("--seed", type=int, default=0)
    caption.add_argument("--num-captions", type=int, default=1, help="captions per image")
    caption.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")

    batch = sub.add_parser(
        "batch", help="generate a set of prompts into a folder, resumable",
        description="Generate one PNG per prompt (per image) into --out, with the prompt, seed and settings in "
        "its metadata and a manifest.jsonl line per finished image. Rerun the same command to resume after a "
        "crash: finished images are kept, never redone. Job i's seed is its jsonl \"seed\", else --seed + i.",
    )
    batch.add_argument("--prompts", required=True,
                       help=".txt (one prompt per line) or .jsonl ({\"prompt\", optional \"seed\", \"negative_prompt\", \"id\"})")
    batch.add_argument("--out", required=True, help="output folder")
    _sampling_args(batch)
    _prior_args(batch)
    batch.add_argument("--batch-size", type=int, default=8, help="prompts per pipeline call (default 8)")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    batch.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() first (multi-host: each process takes every "
                       "process_count-th prompt and writes manifest-<process_index>.jsonl)")
    batch.add_argument("--coordinator-address", default=None,
                       help="with --distributed: process 0's host:port (default: from JAX's environment)")
    batch.add_argument("--num-processes", type=int, default=None, help="with --distributed: how many processes")
    batch.add_argument("--process-id", type=int, default=None, help="with --distributed: this process's id")
    batch.add_argument("--process-index", type=int, default=None,
                       help="split the set over independent runs by hand: this run's index (default: JAX's)")
    batch.add_argument("--process-count", type=int, default=None, help="number of runs sharing the set (default: JAX's)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxgen`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    from jaxgen.hub import CheckpointError, HubError

    try:
        if args.command == "batch":
            return _batch(args)
        if args.command == "caption":
            return _caption(args)
        return _generate(args)
    except (HubError, CheckpointError, FileNotFoundError, ValueError, TypeError) as e:
        print(f"jaxgen: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the device ran out of memory: a request too large for it, not a bug
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        print(f"jaxgen: error: out of device memory ({str(e).splitlines()[0]}): ask for fewer or smaller images"
              " (--num-images, --height, --width, --batch-size) or use --dtype bfloat16", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command != "batch":
            raise
        print("jaxgen: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
