"""Every family's whole pipeline, one image at a time, jaxgen against diffusers in the same run: ``python -m benchmarks``.

Both libraries load the same diffusers checkpoint folders through their own ``from_pretrained`` and run the same
call (prompt, size, steps, guidance, one image, numpy out): text encoding, every denoising step (the prior's and the
decoder's for two-stage families), decoding, and for jaxgen the copy back to the host. Each side's first call is
timed alone (jaxgen's includes compiling); then ``--reps`` calls give seconds per image (median). With
``--per-step``, a second step count S2 > S gives the per-step cost (t(S2) - t(S)) / (S2 - S) of the whole
pipeline's loop(s), which cancels encoding and decoding.

Checkpoints: ``--smoke`` builds tiny random-weight stand-ins of every family's checkpoints (tests/conftest.py's
``build_tiny_hub``: needs the test extras) and runs a few steps at a small size, for CI (that it runs and writes
its table) and as a quick check. ``--checkpoints map.json`` (Hub id -> folder) benchmarks any folders laid out as
the real checkpoints: downloaded ones, or random-weight real-size ones. The families and the checkpoints each
uses are ``FAMILIES`` below; IF runs stage I (its text-to-image pipeline, as diffusers' Auto pipeline maps it).

    python -m benchmarks --smoke --json benchmarks/suite-smoke.json
    python -m benchmarks --checkpoints real.json --dtypes bfloat16 --steps 20 --per-step 40

Writes a Markdown table to stdout (and ``--table``) and every measurement to ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a photo of a cat wearing a hat"


@dataclasses.dataclass(frozen=True)
class Family:
    """A family's benchmark: the checkpoints it loads (Hub ids), its pipelines in both libraries (prior first for
    two-stage families) and a size both accept (``smoke_size``: the tiny stand-ins'; ``size``: the real default)."""

    checkpoints: tuple[str, ...]
    pipelines: tuple[str, ...]
    size: int
    smoke_size: int
    without: tuple[str, ...] = ()  # components neither side loads (IF's safety checker and watermark: not the pipeline)


FAMILIES = {
    "pixart": Family(("PixArt-alpha/PixArt-XL-2-512x512",), ("PixArtAlphaPipeline",), 512, 64),
    "deepfloyd_if": Family(("DeepFloyd/IF-I-XL-v1.0",), ("IFPipeline",), 64, 16,
                           ("safety_checker", "feature_extractor", "watermarker")),
    "kandinsky": Family(("kandinsky-community/kandinsky-2-1-prior", "kandinsky-community/kandinsky-2-1"),
                        ("KandinskyPriorPipeline", "KandinskyPipeline"), 512, 64),
    "kandinsky2_2": Family(("kandinsky-community/kandinsky-2-2-prior", "kandinsky-community/kandinsky-2-2-decoder"),
                           ("KandinskyV22PriorPipeline", "KandinskyV22Pipeline"), 512, 64),
    "kandinsky3": Family(("kandinsky-community/kandinsky-3",), ("Kandinsky3Pipeline",), 1024, 64),
    "wuerstchen": Family(("warp-ai/wuerstchen-prior", "warp-ai/wuerstchen"),
                         ("WuerstchenPriorPipeline", "WuerstchenDecoderPipeline"), 1024, 128),
    "unidiffuser": Family(("thu-ml/unidiffuser-v1",), ("UniDiffuserPipeline",), 512, 16),
}


# --------------------------------------------------------------------------- one image, each library


def _size_arguments(pipeline: str, size: int) -> dict:
    """The size arguments a pipeline takes (UniDiffuser's is fixed by its U-ViT; IF's is the UNet's)."""
    if pipeline in ("UniDiffuserPipeline", "IFPipeline", "KandinskyPriorPipeline", "KandinskyV22PriorPipeline"):
        return {}
    if pipeline == "PixArtAlphaPipeline":
        return {"height": size, "width": size, "use_resolution_binning": False}
    return {"height": size, "width": size}


def _jaxgen_runner(family: Family, folders: list[str], dtype: str, size: int) -> Callable[[int], np.ndarray]:
    """jaxgen's pipelines for the family on one device: ``run(steps)`` -> the image (numpy)."""
    import jax
    import jax.numpy as jnp

    import jaxgen

    mesh = jaxgen.sharding.make_mesh(devices=jax.local_devices()[:1])
    pipes = [getattr(jaxgen, name).from_pretrained(folder, dtype=jnp.dtype(dtype), mesh=mesh,
                                                   **dict.fromkeys(family.without))
             for name, folder in zip(family.pipelines, folders)]
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return _chain(family, pipes, size, rng=lambda: {"rng": 0})


def _diffusers_runner(family: Family, folders: list[str], dtype: str, size: int) -> Callable[[int], np.ndarray]:
    """diffusers' pipelines for the family (PyTorch, CPU or CUDA): ``run(steps)`` -> the image (numpy)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = getattr(torch, dtype)
    pipes = [_diffusers_pipeline(name, folder, torch_dtype, family.without).to(device)
             for name, folder in zip(family.pipelines, folders)]
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run(steps: int) -> np.ndarray:
        with torch.inference_mode():
            out = _chain(family, pipes, size, rng=lambda: {"generator": torch.Generator(device).manual_seed(0)})(steps)
        sync()
        return out

    return run


def _diffusers_pipeline(name: str, folder: str, torch_dtype: Any, without: tuple[str, ...]) -> Any:
    """diffusers' pipeline ``name`` from a folder, each component loaded by its own class: diffusers'
    ``from_pretrained`` cannot resolve Würstchen's and UniDiffuser's models, which live in
    ``diffusers.pipelines.deprecated`` now."""
    import importlib
    import importlib.util

    import diffusers
    import torch
    import transformers

    components = {}
    for component, entry in json.loads((Path(folder) / "model_index.json").read_text()).items():
        if component.startswith("_"):
            continue
        if component in without:
            components[component] = None
            continue
        if component == "requires_safety_checker":
            components[component] = "safety_checker" not in without
            continue
        if not isinstance(entry, list):  # a config value (IF's requires_safety_checker)
            components[component] = entry
            continue
        library, class_name = entry
        if class_name is None:
            components[component] = None
            continue
        found = getattr(transformers if library == "transformers" else diffusers, class_name, None)
        for module in (library, "wuerstchen", "unidiffuser"):  # a pipeline's own module, maybe deprecated
            for package in ("diffusers.pipelines", "diffusers.pipelines.deprecated"):
                if found is None and importlib.util.find_spec(f"{package}.{module}") is not None:
                    found = getattr(importlib.import_module(f"{package}.{module}"), class_name, None)
        if found is None:
            raise ValueError(f"{folder}: diffusers has no class {class_name!r} for {component!r}")
        is_model = isinstance(found, type) and issubclass(found, torch.nn.Module)
        components[component] = found.from_pretrained(Path(folder) / component,
                                                      **({"torch_dtype": torch_dtype} if is_model else {}))
    return getattr(diffusers, name)(**components)


def _chain(family: Family, pipes: list, size: int, rng: Callable[[], dict]) -> Callable[[int], np.ndarray]:
    """One image from the family's pipelines, the same calls in both libraries: a prior's image embeddings go to
    the decoder (Kandinsky, Würstchen); one pipeline otherwise."""

    def run(steps: int) -> np.ndarray:
        if len(pipes) == 1:
            pipe, name = pipes[0], family.pipelines[0]
            return np.asarray(pipe(PROMPT, num_inference_steps=steps, output_type="np", **rng(),
                                   **_size_arguments(name, size)).images)
        prior, decoder = pipes
        if family.pipelines[0] == "WuerstchenPriorPipeline":
            embeddings = prior(PROMPT, num_inference_steps=steps, height=size, width=size, output_type="pt",
                               **rng()).image_embeddings
            return np.asarray(decoder(embeddings, prompt=PROMPT, num_inference_steps=steps, output_type="np",
                                      **rng()).images)
        embeds = prior(PROMPT, num_inference_steps=steps, output_type="pt", **rng())
        text = {"prompt": PROMPT} if family.pipelines[1] == "KandinskyPipeline" else {}
        return np.asarray(decoder(**text, image_embeds=embeds.image_embeds,
                                  negative_image_embeds=embeds.negative_image_embeds, num_inference_steps=steps,
                                  output_type="np", **rng(), **_size_arguments(family.pipelines[1], size)).images)

    return run


# --------------------------------------------------------------------------- timing


def _time(run: Callable[[int], np.ndarray], steps: int, reps: int) -> dict:
    """The first call alone (compiling, for jaxgen), then the median of ``reps`` calls; seconds."""
    start = time.perf_counter()
    image = run(steps)
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run(steps)
        times.append(time.perf_counter() - start)
    return {"first_s": first, "s_per_image": statistics.median(times), "shape": list(image.shape),
            "finite": bool(np.isfinite(image).all())}


def measure(name: str, folders: list[str], dtype: str, size: int, steps: int, reps: int,
            per_step: int | None, sides: tuple[str, ...]) -> list[dict]:
    """One family in one dtype: a row per library (seconds per image, first call, per-step seconds)."""
    family = FAMILIES[name]
    rows = []
    for side in sides:
        build = _jaxgen_runner if side == "jaxgen" else _diffusers_runner
        run = build(family, folders, dtype, size)
        row = {"family": name, "side": side, "dtype": dtype, "size": size, "steps": steps, **_time(run, steps, reps)}
        if per_step is not None:
            longer = _time(run, per_step, reps)
            row["s_per_step"] = (longer["s_per_image"] - row["s_per_image"]) / (per_step - steps)
        rows.append(row)
        del run
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: a line per family and dtype, jaxgen and diffusers side by side."""
    by = {(r["family"], r["dtype"], r["side"]): r for r in rows}
    lines = ["| family | dtype | size | steps | jaxgen s/image | diffusers s/image | speed-up | jaxgen s/step |"
             " diffusers s/step | jaxgen first call s |", "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda r, k: f"{r[k]:.3f}" if r is not None and r.get(k) is not None else "-"
    for family, dtype in dict.fromkeys((r["family"], r["dtype"]) for r in rows):
        ours, theirs = by.get((family, dtype, "jaxgen")), by.get((family, dtype, "diffusers"))
        ref = ours or theirs
        ratio = f"{theirs['s_per_image'] / ours['s_per_image']:.2f}x" if ours and theirs else "-"
        lines.append(f"| {family} | {dtype} | {ref['size']} | {ref['steps']} | {fmt(ours, 's_per_image')} |"
                     f" {fmt(theirs, 's_per_image')} | {ratio} | {fmt(ours, 's_per_step')} | {fmt(theirs, 's_per_step')} |"
                     f" {fmt(ours, 'first_s')} |")
    return "\n".join(lines)


def environment() -> dict:
    """Where the run ran: devices, host, versions, XLA flags."""
    import diffusers
    import jax
    import torch

    return {"jax_device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
            "torch_device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "host": f"{platform.machine()}, {os.cpu_count()} cores",
            "versions": {"jax": jax.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__},
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


# --------------------------------------------------------------------------- command line


def _checkpoints(args: argparse.Namespace, families: list[str]) -> dict[str, str]:
    """Hub id -> folder: tiny stand-ins built here (``--smoke``), or the ``--checkpoints`` map."""
    needed = {repo for name in families for repo in FAMILIES[name].checkpoints}
    if args.smoke:
        # the notebooks' builder: tests/conftest.py's, imported without its 8-device, optimisation-level-0 XLA_FLAGS
        sys.path.insert(0, str(REPO / "docs" / "examples"))
        from tiny_models import tiny_model

        return {repo: tiny_model(repo) for repo in sorted(needed)}
    if args.checkpoints is None:
        raise SystemExit("give --smoke (tiny stand-ins) or --checkpoints MAP.json (Hub id -> folder)")
    given = json.loads(Path(args.checkpoints).read_text())
    missing = sorted(needed - set(given))
    if missing:
        raise SystemExit(f"--checkpoints {args.checkpoints} lacks {missing}")
    return given


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks``: see the module's docstring."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny stand-in checkpoints, few steps, small images")
    parser.add_argument("--checkpoints", default=None, help="JSON: Hub id -> checkpoint folder")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {list(FAMILIES)}")
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16")
    parser.add_argument("--sides", default="jaxgen,diffusers", help="jaxgen, diffusers or both")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per stage (smoke 2, else 20)")
    parser.add_argument("--per-step", type=int, default=None, help="a second, larger step count: per-step seconds")
    parser.add_argument("--size", type=int, default=None, help="image side (default: each family's; smoke: tiny)")
    parser.add_argument("--reps", type=int, default=2, help="timed calls after the first")
    parser.add_argument("--json", default=None, help="write the measurements here")
    parser.add_argument("--table", default=None, help="write the Markdown table here")
    args = parser.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"--families: unknown {unknown}; known: {list(FAMILIES)}")
    steps = args.steps or (2 if args.smoke else 20)
    if args.per_step is not None and args.per_step <= steps:
        raise SystemExit(f"--per-step must be more than --steps ({steps})")
    folders = _checkpoints(args, families)
    rows = []
    for name in families:
        family = FAMILIES[name]
        size = args.size or (family.smoke_size if args.smoke else family.size)
        for dtype in args.dtypes.split(","):
            rows += measure(name, [folders[r] for r in family.checkpoints], dtype, size, steps, args.reps,
                            args.per_step, tuple(args.sides.split(",")))
            print(f"{name} {dtype}: done", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    if args.table:
        Path(args.table).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": environment(), "argv": sys.argv[1:] if argv is None
                                               else argv, "rows": rows}, indent=2))
    return 0
