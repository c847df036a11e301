"""The ``jaxgen`` command: ``jaxgen generate "prompt" --model REPO_OR_FOLDER ...``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["main"]


def _output_paths(out: str, count: int) -> list[Path]:
    path = Path(out)
    if path.suffix == "" or path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        return [path / f"image-{i}.png" for i in range(count)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(count)]


def _generate(args: argparse.Namespace) -> int:
    import jax.numpy as jnp

    from jaxgen.pipelines.auto_pipeline import AutoPipelineForText2Image

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    pipe = AutoPipelineForText2Image.from_pretrained(args.model, dtype=dtype)
    call = {"num_inference_steps": args.steps, "rng": args.seed, "num_images_per_prompt": args.num_images}
    for name, value in (("height", args.height), ("width", args.width), ("guidance_scale", args.guidance)):
        if value is not None:
            call[name] = value
    if args.no_resolution_binning:
        call["use_resolution_binning"] = False
    if args.negative_prompt is not None:
        call["negative_prompt"] = args.negative_prompt
    images = pipe(args.prompt, **call).images
    for image, path in zip(images, _output_paths(args.out, len(images))):
        tmp = path.with_name(path.name + ".tmp")
        image.save(tmp, format="PNG")
        os.replace(tmp, path)  # atomic: no half-written image is ever seen at `path`
        print(path)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxgen", description="diffusers' text-to-image pipelines in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate images from a prompt")
    gen.add_argument("prompt")
    gen.add_argument("--model", required=True, help="Hub repo id, diffusers folder, or `python -m convert` folder")
    gen.add_argument("--steps", type=int, default=20, help="number of denoising steps (default 20)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--num-images", type=int, default=1)
    gen.add_argument("--no-resolution-binning", action="store_true",
                     help="generate at exactly --height x --width instead of the nearest trained aspect-ratio bin")
    gen.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    gen.add_argument("--out", default="image.png", help="file (several images get -0, -1, ...) or folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxgen`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    from jaxgen.hub import CheckpointError, HubError

    try:
        return _generate(args)
    except (HubError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"jaxgen: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
