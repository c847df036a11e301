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
the real checkpoints; with ``--random-weights`` the folders need no weights: both libraries build every model from
its config.json with random weights (``benchmarks/random_weights.py``; the real architectures' folders come from
``python -m benchmarks.random_folders``). The families and the checkpoints each uses are ``FAMILIES`` below; IF runs
stage I (its text-to-image pipeline, as diffusers' Auto pipeline maps it).

Also measured: jaxgen's first call again after ``jax.clear_caches()`` (its programs from the persistent compilation
cache), each side's peak device memory (jax's ``peak_bytes_in_use``, PyTorch's ``max_memory_allocated``), and
with ``--torch-compile`` diffusers with its denoisers through ``torch.compile``; ``--offload``: jaxgen with
``enable_model_cpu_offload()``. ``--jobs K`` runs each family in its own process, K at once, so that compiling
overlaps while the timed calls take turns (a lock file); ``--time-budget`` bounds the whole run. The GPU run, one
script for a lent machine: ``benchmarks/gpu_run.sh``.

    python -m benchmarks --smoke --json benchmarks/suite-smoke.json
    python -m benchmarks --checkpoints real.json --dtypes bfloat16 --steps 20 --per-step 40
    python -m benchmarks --checkpoints .bench/real/map.json --random-weights --dtypes bfloat16 --steps default \
        --torch-compile --jobs 4

Writes a Markdown table to stdout (and ``--table``) and every measurement to ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import inspect
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

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
    "pixart_1024": Family(("PixArt-alpha/PixArt-XL-2-1024-MS",), ("PixArtAlphaPipeline",), 1024, 64),
    "pixart_sigma": Family(("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",), ("PixArtSigmaPipeline",), 1024, 64),
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
    if pipeline in ("PixArtAlphaPipeline", "PixArtSigmaPipeline"):
        return {"height": size, "width": size, "use_resolution_binning": False}
    return {"height": size, "width": size}


def _jaxgen_runner(family: Family, folders: list[str], dtype: str, size: int, random_weights: bool = False,
                   offload: bool = False) -> Callable[[int], np.ndarray]:
    """jaxgen's pipelines for the family on one device: ``run(steps)`` -> the image (numpy). ``random_weights``:
    the models are built from the folders' configs with random params (``benchmarks.random_weights``).
    ``offload``: the pipelines run with ``enable_model_cpu_offload()``; with random weights the params are made in
    host memory and never all on the device (as a load straight to host memory would)."""
    import jax
    import jax.numpy as jnp

    import jaxgen

    mesh = jaxgen.sharding.make_mesh(devices=jax.local_devices()[:1])
    pipes = []
    for name, folder in zip(family.pipelines, folders):
        cls = getattr(jaxgen, name)
        models = (_jaxgen_random_models(cls, folder, jnp.dtype(dtype), family.without, mesh if offload else None)
                  if random_weights else {})
        pipes.append(cls.from_pretrained(folder, dtype=jnp.dtype(dtype), mesh=mesh,
                                         **dict.fromkeys(family.without), **models))
        if offload:
            pipes[-1].enable_model_cpu_offload()
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    return _chain(family, pipes, size, rng=lambda: {"rng": 0})


def _jaxgen_random_models(cls: Any, folder: str, dtype: Any, without: tuple[str, ...],
                          offload_mesh: Any = None) -> dict[str, Any]:
    """The model components of jaxgen pipeline ``cls`` that ``folder``'s model_index.json names, each built from its
    config.json with random params: name -> ``(module, params)``, as ``from_pretrained`` takes components; with an
    ``offload_mesh``, made on the host and held in host memory for that mesh (``OffloadedModel``)."""
    import jax

    from benchmarks.random_weights import jax_random_params
    from jaxgen.pipelines.offload import offload

    index = json.loads((Path(folder) / "model_index.json").read_text())
    models = {}
    for name, spec in cls._components.items():
        entry = index.get(name)
        if spec.kind != "model" or name in without or not isinstance(entry, list) or entry[1] is None:
            continue
        module = spec.model_class.from_config_file(Path(folder) / name, dtype=dtype)
        if offload_mesh is None:
            models[name] = (module, jax_random_params(module, dtype))
        else:
            params = jax_random_params(module, dtype, jax.devices("cpu")[0])
            models[name] = offload(module.bind({"params": params}), offload_mesh)
    return models


DENOISERS = ("transformer", "unet", "prior", "decoder")  # the attributes diffusers' pipelines keep their denoiser in


def _diffusers_runner(family: Family, folders: list[str], dtype: str, size: int, random_weights: bool = False,
                      torch_compile: bool = False) -> Callable[..., np.ndarray]:
    """diffusers' pipelines for the family (PyTorch, CPU or CUDA): ``run(steps, compiled=False)`` -> the image
    (numpy). ``random_weights`` as for jaxgen; ``torch_compile``: each pipeline's denoiser is also compiled by
    ``torch.compile`` (default mode), and ``compiled=True`` runs with it (the first such call compiles)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = getattr(torch, dtype)
    pipes = [_diffusers_pipeline(name, folder, torch_dtype, family.without, random_weights, device).to(device)
             for name, folder in zip(family.pipelines, folders)]
    eager = [{a: getattr(p, a) for a in DENOISERS if isinstance(getattr(p, a, None), torch.nn.Module)} for p in pipes]
    through_compile = [{a: torch.compile(m) for a, m in e.items()} for e in eager] if torch_compile else None
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run(steps: int, compiled: bool = False) -> np.ndarray:
        for pipe, modules in zip(pipes, through_compile if compiled else eager):
            for attribute, module in modules.items():
                setattr(pipe, attribute, module)
        with torch.inference_mode():
            out = _chain(family, pipes, size, rng=lambda: {"generator": torch.Generator(device).manual_seed(0)})(steps)
        sync()
        return out

    return run


def _diffusers_pipeline(name: str, folder: str, torch_dtype: Any, without: tuple[str, ...],
                        random_weights: bool = False, device: str = "cpu") -> Any:
    """diffusers' pipeline ``name`` from a folder, each component loaded by its own class: diffusers'
    ``from_pretrained`` cannot resolve Würstchen's and UniDiffuser's models, which live in
    ``diffusers.pipelines.deprecated`` now. ``random_weights``: the models are built from their configs with
    random weights, drawn on ``device``."""
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
        if is_model and random_weights:
            components[component] = _torch_random_model(found, Path(folder) / component, torch_dtype, device)
            continue
        components[component] = found.from_pretrained(Path(folder) / component,
                                                      **({"torch_dtype": torch_dtype} if is_model else {}))
    pipeline = getattr(diffusers, name)
    takes = inspect.signature(pipeline.__init__).parameters
    for component in [c for c in components if c not in takes]:  # the Hub's name for what diffusers calls otherwise
        renamed = [p for p in takes if p.endswith(f"_{component}") and p not in components]
        if renamed:
            components[renamed[0]] = components.pop(component)
    return pipeline(**components)


def _torch_random_model(found: type, folder: Path, torch_dtype: Any, device: str) -> Any:
    """A diffusers or transformers model class built from ``folder``'s config, random weights on ``device``."""
    import diffusers

    from benchmarks.random_weights import torch_random_module

    if issubclass(found, diffusers.ModelMixin):
        config = found.load_config(folder)
        return torch_random_module(lambda: found.from_config(config), torch_dtype, device)
    config = found.config_class.from_pretrained(folder)
    return torch_random_module(lambda: found(config), torch_dtype, device)


def _chain(family: Family, pipes: list, size: int, rng: Callable[[], dict]) -> Callable[[int], np.ndarray]:
    """One image from the family's pipelines, the same calls in both libraries: a prior's image embeddings go to
    the decoder (Kandinsky, Würstchen); one pipeline otherwise."""

    def run(steps: int | None) -> np.ndarray:
        n = {} if steps is None else {"num_inference_steps": steps}  # None: each pipeline's default
        if len(pipes) == 1:
            pipe, name = pipes[0], family.pipelines[0]
            return np.asarray(pipe(PROMPT, **n, output_type="np", **rng(),
                                   **_size_arguments(name, size)).images)
        prior, decoder = pipes
        if family.pipelines[0] == "WuerstchenPriorPipeline":
            embeddings = prior(PROMPT, **n, height=size, width=size, output_type="pt",
                               **rng()).image_embeddings
            return np.asarray(decoder(embeddings, prompt=PROMPT, **n, output_type="np",
                                      **rng()).images)
        embeds = prior(PROMPT, **n, output_type="pt", **rng())
        text = {"prompt": PROMPT} if family.pipelines[1] == "KandinskyPipeline" else {}
        return np.asarray(decoder(**text, image_embeds=embeds.image_embeds,
                                  negative_image_embeds=embeds.negative_image_embeds, **n,
                                  output_type="np", **rng(), **_size_arguments(family.pipelines[1], size)).images)

    return run


# --------------------------------------------------------------------------- timing


@dataclasses.dataclass(frozen=True)
class Options:
    """How a family is measured: models from configs with random weights; diffusers' denoisers also through
    ``torch.compile``; jaxgen with ``enable_model_cpu_offload()``; a file lock that parallel workers (``--jobs``)
    take around every timed section; the time (``time.time()``) after which optional work (``torch.compile``, the longer step count) is skipped."""

    random_weights: bool = False
    torch_compile: bool = False
    offload: bool = False
    lock: str | None = None
    deadline: float | None = None

    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.time()


@contextlib.contextmanager
def _exclusive(lock: str | None) -> Iterator[None]:
    """Inside: no other worker of the same run is timing (an exclusive lock on the file ``lock``, if any)."""
    if lock is None:
        yield
        return
    import fcntl

    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _seconds(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def _median(call: Callable[[], Any], reps: int) -> float:
    return statistics.median(_seconds(call)[0] for _ in range(max(reps, 1)))


def _peak_bytes(side: str) -> int | None:
    """The peak device memory this process's side has held (jax's allocator, or PyTorch's on CUDA); None on CPU."""
    if side == "jaxgen":
        import jax

        stats = jax.local_devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use") if jax.default_backend() != "cpu" else None
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None


def _bytes_in_use() -> int | None:
    """Device memory jax holds now (None on CPU)."""
    import jax

    return (jax.local_devices()[0].memory_stats() or {}).get("bytes_in_use") if jax.default_backend() != "cpu" else None


def _measure_jaxgen(family: Family, folders: list[str], row: dict, steps: int, reps: int, per_step: int | None,
                    options: Options) -> dict:
    """jaxgen's row: the first call (compiling cold) outside the lock, then inside it the timed calls and a first
    call again after ``jax.clear_caches()`` (compiled programs from the persistent cache)."""
    import jax

    row["build_s"], run = _seconds(lambda: _jaxgen_runner(family, folders, row["dtype"], row["size"],
                                                          options.random_weights, options.offload))
    if options.offload:
        row["resting_bytes"] = _bytes_in_use()
    row["first_s"], image = _seconds(lambda: run(steps))
    row.update(shape=list(image.shape), finite=bool(np.isfinite(image).all()))
    with _exclusive(options.lock):
        row["s_per_image"] = _median(lambda: run(steps), reps)
        jax.clear_caches()
        row["first_cached_s"] = _seconds(lambda: run(steps))[0]
    if per_step is not None and options.time_left() > 120:
        run(per_step)
        with _exclusive(options.lock):
            row["s_per_step"] = (_median(lambda: run(per_step), reps) - row["s_per_image"]) / (per_step - steps)
    row["peak_bytes"] = _peak_bytes("jaxgen")
    return row


def _measure_diffusers(family: Family, folders: list[str], row: dict, steps: int, reps: int, per_step: int | None,
                       options: Options) -> list[dict]:
    """diffusers' row (eager), and with ``options.torch_compile`` a row for its denoisers under ``torch.compile``
    (the first call compiles, outside the lock)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    row["build_s"], run = _seconds(lambda: _diffusers_runner(family, folders, row["dtype"], row["size"],
                                                             options.random_weights, options.torch_compile))
    with _exclusive(options.lock):
        row["first_s"], image = _seconds(lambda: run(steps))
        row.update(shape=list(image.shape), finite=bool(np.isfinite(image).all()))
        row["s_per_image"] = _median(lambda: run(steps), reps)
        if per_step is not None and options.time_left() > 120:
            row["s_per_step"] = (_median(lambda: run(per_step), reps) - row["s_per_image"]) / (per_step - steps)
    row["peak_bytes"] = _peak_bytes("diffusers")
    rows = [row]
    if options.torch_compile and options.time_left() > 150:
        compiled = {**row, "side": "torch.compile"}
        for key in ("s_per_step", "build_s"):
            compiled.pop(key, None)
        compiled["first_s"], image = _seconds(lambda: run(steps, compiled=True))
        compiled["finite"] = bool(np.isfinite(image).all())
        with _exclusive(options.lock):
            compiled["s_per_image"] = _median(lambda: run(steps, compiled=True), reps)
        compiled["peak_bytes"] = _peak_bytes("diffusers")
        rows.append(compiled)
    return rows


def measure(name: str, folders: list[str], dtype: str, size: int, steps: int, reps: int,
            per_step: int | None, sides: tuple[str, ...], options: Options = Options(),
            emit: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """One family in one dtype: a row per library (seconds per image, first call, per-step seconds, peak device
    memory; jaxgen's first call again from the persistent compilation cache; diffusers under ``torch.compile``
    too with ``options.torch_compile``). ``emit`` gets each row as it is done."""
    family = FAMILIES[name]
    rows = []
    for side in sides:
        row = {"family": name, "side": "jaxgen offload" if side == "jaxgen" and options.offload else side,
               "dtype": dtype, "size": size, "steps": steps}
        done = ([_measure_jaxgen(family, folders, row, steps, reps, per_step, options)] if side == "jaxgen"
                else _measure_diffusers(family, folders, row, steps, reps, per_step, options))
        for one in done:
            emit(one)
        rows += done
        gc.collect()
        if side != "jaxgen":
            _release_torch_memory()
    return rows


def _release_torch_memory() -> None:
    """PyTorch's cached device memory back to the driver: the next side (or a parallel worker) can have it."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def table(rows: list[dict]) -> str:
    """Markdown: a line per family and dtype, jaxgen and diffusers (eager, and ``torch.compile`` when measured) side
    by side; speed-ups are diffusers' seconds over jaxgen's."""
    by = {(r["family"], r["dtype"], r["side"]): r for r in rows}
    lines = ["| family | dtype | size | steps | jaxgen s/image | diffusers s/image | speed-up | torch.compile s/image |"
             " speed-up | jaxgen s/step | diffusers s/step | jaxgen first call s (cold / cached) |"
             " torch.compile first call s | peak GiB (jaxgen / diffusers) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda r, k: f"{r[k]:.3f}" if r is not None and r.get(k) is not None else "-"
    gib = lambda r: f"{r['peak_bytes'] / 2**30:.1f}" if r is not None and r.get("peak_bytes") else "-"
    ratio = lambda a, b: f"{b['s_per_image'] / a['s_per_image']:.2f}x" if a and b and "s_per_image" in a and \
        "s_per_image" in b else "-"
    for family, dtype in dict.fromkeys((r["family"], r["dtype"]) for r in rows):
        ours, theirs = by.get((family, dtype, "jaxgen")), by.get((family, dtype, "diffusers"))
        compiled = by.get((family, dtype, "torch.compile"))
        ref = ours or theirs or compiled
        if ref is None:  # offload rows only: the table below
            continue
        lines.append(f"| {family} | {dtype} | {ref['size']} | {ref['steps'] or 'default'} | {fmt(ours, 's_per_image')} |"
                     f" {fmt(theirs, 's_per_image')} | {ratio(ours, theirs)} | {fmt(compiled, 's_per_image')} |"
                     f" {ratio(ours, compiled)} | {fmt(ours, 's_per_step')} | {fmt(theirs, 's_per_step')} |"
                     f" {fmt(ours, 'first_s')} / {fmt(ours, 'first_cached_s')} | {fmt(compiled, 'first_s')} |"
                     f" {gib(ours)} / {gib(theirs)} |")
    offloaded = [r for r in rows if r["side"] == "jaxgen offload"]
    if offloaded:
        lines += ["", "| family | dtype | size | jaxgen s/image | with enable_model_cpu_offload s/image | peak GiB"
                  " (jaxgen / with offload) | GiB on the device between calls (with offload) |", "|---|---|---|---|---|---|---|"]
        for r in offloaded:
            ours = by.get((r["family"], r["dtype"], "jaxgen"))
            resting = f"{r['resting_bytes'] / 2**30:.2f}" if r.get("resting_bytes") is not None else "-"
            lines.append(f"| {r['family']} | {r['dtype']} | {r['size']} | {fmt(ours, 's_per_image')} |"
                         f" {fmt(r, 's_per_image')} | {gib(ours)} / {gib(r)} | {resting} |")
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
    given = {repo: str(Path(args.checkpoints).resolve().parent / folder)  # relative folders: to the map's
             for repo, folder in json.loads(Path(args.checkpoints).read_text()).items()}
    missing = sorted(needed - set(given))
    if missing:
        raise SystemExit(f"--checkpoints {args.checkpoints} lacks {missing}")
    return given


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny stand-in checkpoints, few steps, small images")
    parser.add_argument("--checkpoints", default=None, help="JSON: Hub id -> checkpoint folder")
    parser.add_argument("--random-weights", action="store_true", help="build the models from the folders' configs "
                        "with random weights (folders from python -m benchmarks.random_folders)")
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {list(FAMILIES)}")
    parser.add_argument("--dtypes", default="float32", help="comma-separated: float32, bfloat16")
    parser.add_argument("--sides", default="jaxgen,diffusers", help="jaxgen, diffusers or both")
    parser.add_argument("--steps", default=None, help="denoising steps per stage (smoke 2, else 20), or 'default': "
                        "each pipeline's own")
    parser.add_argument("--per-step", type=int, default=None, help="a second, larger step count: per-step seconds")
    parser.add_argument("--size", type=int, default=None, help="image side (default: each family's; smoke: tiny)")
    parser.add_argument("--reps", type=int, default=2, help="timed calls after the first")
    parser.add_argument("--torch-compile", action="store_true", help="diffusers' denoisers through torch.compile too")
    parser.add_argument("--offload", action="store_true", help="jaxgen with enable_model_cpu_offload() (random "
                        "weights: made in host memory); its rows are 'jaxgen offload'")
    parser.add_argument("--jobs", type=int, default=None, help="each family in its own process, this many at once "
                        "(their compiling overlaps; timed sections take turns); peak memory is then per family")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds: no family starts after it, "
                        "optional work (torch.compile, --per-step) is skipped near it, workers are stopped at it")
    parser.add_argument("--json", default=None, help="write the measurements here")
    parser.add_argument("--table", default=None, help="write the Markdown table here")
    parser.add_argument("--lock", default=None, help="a file: timed sections take turns with every run given it")
    parser.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    return parser


def _steps(args: argparse.Namespace) -> int | None:
    if args.steps == "default":
        if args.per_step is not None:
            raise SystemExit("--per-step needs a number of --steps")
        return None
    steps = int(args.steps) if args.steps else (2 if args.smoke else 20)
    if args.per_step is not None and args.per_step <= steps:
        raise SystemExit(f"--per-step must be more than --steps ({steps})")
    return steps


def _run_workers(args: argparse.Namespace, families: list[str], folders: dict[str, str]) -> list[dict]:
    """``--jobs K``: a process per family, at most K at once, started in the order given; each writes its rows to a
    JSON file as it measures them, so a worker stopped at the deadline still gives what it finished."""
    import subprocess
    import tempfile

    work = Path(tempfile.mkdtemp(prefix="jaxgen-bench-"))
    (work / "checkpoints.json").write_text(json.dumps(folders))
    deadline = args.deadline or (time.time() + args.time_budget if args.time_budget else None)
    shared = ["--checkpoints", str(work / "checkpoints.json"), "--dtypes", args.dtypes, "--sides", args.sides,
              "--reps", str(args.reps), "--lock", args.lock or str(work / "lock")]
    for flag, value in (("--steps", args.steps or ("2" if args.smoke else None)), ("--per-step", args.per_step),
                        ("--size", args.size), ("--deadline", deadline)):
        shared += [flag, str(value)] if value is not None else []
    shared += ["--random-weights"] * args.random_weights + ["--torch-compile"] * args.torch_compile
    shared += ["--offload"] * args.offload
    waiting, running, rows = list(families), {}, []
    while waiting or running:
        late = deadline is not None and time.time() > deadline - 60
        while waiting and len(running) < args.jobs and not late:
            name = waiting.pop(0)
            size = ["--size", str(FAMILIES[name].smoke_size)] if args.smoke and args.size is None else []
            log = open(work / f"{name}.log", "w")
            running[name] = subprocess.Popen([sys.executable, "-m", "benchmarks", *shared, *size, "--families", name,
                                              "--json", str(work / f"{name}.json")], stdout=log, stderr=log, cwd=REPO)
        for name, process in list(running.items()):
            if process.poll() is None and deadline is not None and time.time() > deadline:
                process.kill()
            if process.poll() is not None:
                del running[name]
                text = (work / f"{name}.log").read_text()
                print(f"--- {name} (exit {process.returncode}) ---\n{text[-4000:]}", file=sys.stderr, flush=True)
        if late and waiting:
            print(f"time budget: not started {waiting}", file=sys.stderr)
            waiting = []
        time.sleep(0.5)
    for name in families:
        if (work / f"{name}.json").exists():
            rows += json.loads((work / f"{name}.json").read_text())["rows"]
    shutil.rmtree(work, ignore_errors=True)  # the workers' logs were printed as each ended
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks``: see the module's docstring."""
    args = _parser().parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"--families: unknown {unknown}; known: {list(FAMILIES)}")
    steps = _steps(args)
    folders = _checkpoints(args, families)
    meta = {"environment": environment(), "argv": sys.argv[1:] if argv is None else argv}
    write = lambda rows: args.json and Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=2))
    if args.jobs:
        rows = _run_workers(args, families, folders)
    else:
        rows = []
        options = Options(args.random_weights, args.torch_compile, args.offload, args.lock, args.deadline)
        for name in families:
            family = FAMILIES[name]
            size = args.size or (family.smoke_size if args.smoke else family.size)
            for dtype in args.dtypes.split(","):
                measure(name, [folders[r] for r in family.checkpoints], dtype, size, steps, args.reps, args.per_step,
                        tuple(args.sides.split(",")), options, emit=lambda row: (rows.append(row), write(rows)))
                print(f"{name} {dtype}: done", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    if args.table:
        Path(args.table).write_text(text + "\n")
    write(rows)
    return 0
