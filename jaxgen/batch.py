"""Batch generation: a file of prompts -> one PNG per image, with metadata and a manifest, resumable.

``generate_batch(pipe_or_model, prompts, out_dir, batch_size=8, seed=0, **call_kwargs)`` is what
``jaxgen batch`` runs. The output folder holds:

- ``<id>.png`` per job (``<id>-<k>.png`` with ``num_images_per_prompt`` > 1), each with a PNG text
  chunk ``parameters``: JSON with the job's id, image index, prompt, negative prompt, seed and
  settings (steps, guidance, size, scheduler config, dtype, ...);
- ``manifest.jsonl`` (``manifest-<process_index>.jsonl`` when ``jax.process_count() > 1``): one JSON
  line per finished image, the same fields plus ``file``, appended (and fsynced) after the image;
- ``.lock-p<process_index>``: held while a run writes, so two runs cannot write the same images.

Every image is written to a temporary file in the same folder, fsynced and renamed into place, so
a crash leaves either the whole image or none. On a rerun, an image that is in a manifest and
whose file is a valid PNG (every chunk's CRC checks) is skipped; a valid image that was renamed
into place but not yet recorded (a crash between the two) is adopted into the manifest when its
metadata matches, not rewritten; stale temporary files are removed. A finished image is thus
never generated twice nor lost. A job recorded with other settings (another seed, step count,
...) stops the run with an error instead of mixing two settings in one folder.

Models: every family's text-to-image pipeline, the one ``AutoPipelineForText2Image`` loads (PixArt;
DeepFloyd IF stage I, 64 px; Kandinsky 2.1 / 2.2 and Würstchen decoders: prior + decoder, the prior
from ``prior=`` or the one the decoder's README.md names; Kandinsky 3) or the family's own (UniDiffuser,
text to image). ``guidance_scale`` is a combined Würstchen's decoder guidance.

Reproducibility: job ``i`` (0-based among the prompts) uses its own ``"seed"`` if the jsonl line
gives one, else ``seed + i``. With ``batch_size=1`` an image is exactly ``pipe(prompt, rng=seed,
**settings)`` for every family (image ``k`` of ``num_images_per_prompt``: row ``k`` of that call).
With larger batches it depends on its batch unless the pipeline takes its whole noise as one
``latents=`` tensor and samples deterministically (PixArt with its default DPM-Solver++, or DDIM
with eta 0): there each image's initial noise is drawn from its seed alone, exactly as
``pipe(prompt, rng=seed)`` draws it (``jax.random.split(jax.random.key(seed))[0]``; image ``k > 0``
of a job folds ``k`` into that key), so an image depends only on its prompt, seed and settings, not
on its batch (up to float rounding between batch shapes). Everywhere else (DDPM-like samplers: IF,
Kandinsky's priors, Kandinsky 3, Würstchen; UniDiffuser's data-free guidance; a prior and a decoder
drawing from one call's key) the noise is drawn per call from its first job's seed, and each such
image's metadata records the call it came from (``"call": {"seed", "ids"}``: the prompts of those
ids in that order, that rng, the recorded settings).

Compilation: every pipeline call has the same shapes. Prompts go in groups of
``min(batch_size, number of jobs)``; the last group is padded with repeats of its last prompt whose
images are dropped, so the sampling program compiles once for the whole run, resumed runs included.

Multi-host: with ``jax.process_count() > 1`` (after ``jax.distributed.initialize()``), process
``p`` takes the jobs whose index ``i`` has ``i % process_count == p``, runs them on its own
devices, and writes only its own images and its own manifest ``manifest-<p>.jsonl``. Every process
reads all ``manifest*.jsonl`` files when resuming, so a run may resume with another process count.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.batch_files import Manifest, finished, lock_folder, png_bytes, png_parameters, write_atomic

__all__ = ["Job", "BatchSummary", "read_prompts", "generate_batch", "read_manifest", "initial_noise", "load_pipeline"]

logger = logging.getLogger(__name__)

MAX_SEED = 2**32  # jax.random.key keeps 32 bits of a seed without jax_enable_x64: larger seeds would collide

# call arguments that generate_batch sets itself
_RESERVED = (
    "prompt", "rng", "generator", "latents", "output_type", "return_dict", "prompt_embeds", "negative_prompt_embeds",
    "prompt_attention_mask", "negative_prompt_attention_mask", "callback", "callback_steps",
)
# call arguments recorded in every image's settings, with the pipeline's defaults when not given
_SETTINGS = (
    "num_inference_steps", "guidance_scale", "height", "width", "use_resolution_binning", "eta", "clean_caption",
    "max_sequence_length", "timesteps", "sigmas",
)
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]")


@dataclasses.dataclass(frozen=True)
class Job:
    """One prompt to generate: ``index`` (0-based order among the prompts), stable ``id``, ``seed``."""

    index: int
    id: str
    line: int
    prompt: str
    negative_prompt: str | None
    seed: int


@dataclasses.dataclass(frozen=True)
class BatchSummary:
    """What ``generate_batch`` did in this process."""

    out_dir: Path
    manifest: Path
    jobs: int  # jobs this process is responsible for
    images: int  # images of those jobs
    generated: int  # images generated by this run
    skipped: int  # images already finished before this run (including adopted ones)
    seconds: float
    process_index: int
    process_count: int

    @property
    def images_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- reading prompts


def _check_seed(seed: Any, where: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"{where}: \"seed\" must be an integer, got {seed!r}")
    if not 0 <= int(seed) < MAX_SEED:
        raise ValueError(f"{where}: seed {seed} is outside [0, 2**32)")
    return int(seed)


def _entry(item: Any, where: str) -> tuple[str, str | None, int | None, str | None]:
    """A jsonl object or list element -> (prompt, negative_prompt, seed, id); checks the types."""
    if isinstance(item, str):
        return item, None, None, None
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: expected a JSON object with a \"prompt\", got {type(item).__name__}")
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{where}: expected a non-empty string \"prompt\", got {prompt!r}")
    negative = item.get("negative_prompt")
    if negative is not None and not isinstance(negative, str):
        raise ValueError(f"{where}: \"negative_prompt\" must be a string, got {negative!r}")
    seed = item.get("seed")
    if seed is not None:
        seed = _check_seed(seed, where)
    job_id = item.get("id", item.get("name"))
    if job_id is not None:
        if isinstance(job_id, bool) or not isinstance(job_id, (str, int)) or not str(job_id).strip():
            raise ValueError(f"{where}: \"id\" must be a non-empty string or an integer, got {job_id!r}")
        job_id = str(job_id).strip()
    return prompt, negative, seed, job_id


def _source_entries(source: str | os.PathLike | Sequence[Any]) -> tuple[str, list[tuple[int, Any]]]:
    """(where, for messages, [(1-based line or item number, str or object)]) with blank lines left out."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file not found: {path}")
        suffix = path.suffix.lower()
        if suffix == ".json":
            raise ValueError(f"{path}: use .jsonl (one JSON object per line) or .txt (one prompt per line)")
        lines = path.read_text(encoding="utf-8").splitlines()
        entries = []
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            if suffix in (".jsonl", ".ndjson"):
                try:
                    entries.append((number, json.loads(text)))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path} line {number}: not valid JSON ({e.msg} at column {e.colno})") from None
            else:
                entries.append((number, text.strip()))
        return f"{path} line", entries
    if isinstance(source, Sequence):
        items = [(i, item) for i, item in enumerate(source, start=1)]
        return "prompts item", [(i, item) for i, item in items if not (isinstance(item, str) and not item.strip())]
    raise TypeError(f"prompts must be a path to a .txt/.jsonl file or a list, got {type(source).__name__}")


def read_prompts(source: str | os.PathLike | Sequence[Any], *, seed: int = 0) -> list[Job]:
    """Jobs from a .txt file (one prompt per line), a .jsonl file, or a list of strings or dicts.

    jsonl objects: ``{"prompt": ..., "seed": int, "negative_prompt": str, "id": str | int}``, all
    but "prompt" optional ("name" is read as "id"). Blank lines are skipped. A job's id is its given
    id, else its 1-based line number zero-padded to 6 digits; its seed is its given seed, else
    ``seed + index``. Raises ``FileNotFoundError``/``ValueError`` naming the file and line.
    """
    name, entries = _source_entries(source)
    if not entries:
        raise ValueError(f"{name.rsplit(' ', 1)[0]}: no prompts (empty, or only blank lines)")
    seed = _check_seed(seed, "--seed")
    jobs, seen = [], {}
    for index, (line, item) in enumerate(entries):
        where = f"{name} {line}"
        prompt, negative, job_seed, job_id = _entry(item, where)
        job_id = job_id if job_id is not None else f"{line:06d}"
        if job_id in seen:
            raise ValueError(f"{where}: id {job_id!r} is also the id of {name.rsplit(' ', 1)[1]} {seen[job_id]}; ids must be unique")
        seen[job_id] = line
        if job_seed is None:
            job_seed = _check_seed(seed + index, f"{where} (seed {seed} + index {index})")
        jobs.append(Job(index, job_id, line, prompt, negative, job_seed))
    return jobs


# --------------------------------------------------------------------------- noise and shapes


@functools.partial(jax.jit, static_argnames=("images_per_seed", "shape"))
def initial_noise(seeds: jax.Array, *, images_per_seed: int, shape: tuple[int, int, int]) -> jax.Array:
    """Per-image initial noise: (S,) uint32 seeds -> (S * images_per_seed, *shape) float32.

    Image 0 of a seed is the noise ``pipe(prompt, rng=seed)`` draws (the first half of
    ``jax.random.split(key(seed))``); image k > 0 uses that key folded with k. No image depends
    on the other seeds of the batch.
    """

    def per_seed(seed: jax.Array) -> jax.Array:
        noise_key = jax.random.split(jax.random.key(seed))[0]
        keys = [noise_key] + [jax.random.fold_in(noise_key, k) for k in range(1, images_per_seed)]
        return jnp.concatenate([jax.random.normal(key, (1, *shape), jnp.float32) for key in keys])

    return jax.vmap(per_seed)(seeds).reshape(-1, *shape)


def _latent_layout(pipe: Any, height: int | None, width: int | None, binning: bool) -> tuple[tuple[int, int, int], int, int, int, int]:
    """(latent (h, w, C), output height, width, generated height, width), as the pipeline computes them."""
    if not hasattr(pipe, "generation_size"):
        raise ValueError(f"batch generation supports latent-transformer pipelines (PixArt); not {type(pipe).__name__}")
    (gen_height, gen_width), (height, width) = pipe.generation_size(height, width, binning)
    factor = pipe.vae_scale_factor
    return (gen_height // factor, gen_width // factor, pipe.transformer.config.in_channels), height, width, gen_height, gen_width


# --------------------------------------------------------------------------- records and files


def _jsonable(value: Any) -> Any:
    """Plain JSON values (non-finite floats as strings, so the metadata is strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else str(float(value))
    return str(value)


def _schedulers(pipe: Any) -> dict[str, Any]:
    """The pipeline's schedulers by component name (a combined pipeline's ``scheduler`` and ``prior_scheduler``)."""
    components = getattr(pipe, "components", {})
    return {name: c for name, c in components.items() if type(c).__name__.endswith("Scheduler")}


def _model_dtype(pipe: Any) -> str | None:
    for name in ("transformer", "unet", "decoder", "text_encoder"):
        component = getattr(pipe, name, None)
        if component is not None and getattr(component, "dtype", None) is not None:
            return jnp.dtype(component.dtype).name
    return None


def _settings(pipe: Any, model: str | None, call: Mapping[str, Any], num_images: int, layout: tuple) -> dict:
    """Everything besides prompt and seed that decides an image, as plain JSON."""
    defaults = {
        name: p.default for name, p in inspect.signature(pipe.__call__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    settings: dict[str, Any] = {"model": model, "pipeline": type(pipe).__name__}
    for name in _SETTINGS:
        if name in call or name in defaults:
            settings[name] = call.get(name, defaults.get(name))
    for name in sorted(set(call) - set(_SETTINGS)):
        settings[name] = call[name]
    settings["num_images_per_prompt"] = num_images
    if layout is not None:
        _, height, width, gen_height, gen_width = layout
        settings.update(height=height, width=width)
        if (gen_height, gen_width) != (height, width):
            settings.update(generated_height=gen_height, generated_width=gen_width)
    for name, scheduler in _schedulers(pipe).items():
        config = {k: v for k, v in dict(getattr(scheduler, "config", {})).items() if not k.startswith("_")}
        settings[name] = {"class": type(scheduler).__name__, **config}
    settings["dtype"] = _model_dtype(pipe)
    return json.loads(json.dumps(_jsonable(settings)))  # exactly what a manifest line reads back as


def _negative(job: Job, default: str | None) -> str:
    """The job's own negative prompt, else the run's, else "" (the pipeline's default)."""
    if job.negative_prompt is not None:
        return job.negative_prompt
    return default or ""


def _record(job: Job, k: int, settings: dict, default_negative: str | None) -> dict:
    """Image k of a job, as its PNG metadata and manifest line record it (the manifest adds "file")."""
    return {"id": job.id, "image": k, "prompt": job.prompt, "negative_prompt": _negative(job, default_negative),
            "seed": job.seed, "settings": settings}


def _difference(old: Mapping, new: Mapping) -> str | None:
    """The first field that differs between two records (the model path is not compared), or None."""
    for name in ("id", "image", "prompt", "negative_prompt", "seed"):
        if old.get(name) != new.get(name):
            return f"{name} {old.get(name)!r}, not {new.get(name)!r}"
    old_settings, new_settings = old.get("settings") or {}, new.get("settings") or {}
    for name in sorted(set(old_settings) | set(new_settings)):
        if name != "model" and old_settings.get(name) != new_settings.get(name):
            return f"{name} {old_settings.get(name)!r}, not {new_settings.get(name)!r}"
    return None


_STOCHASTIC_SCHEDULERS = ("DDPMScheduler", "UnCLIPScheduler", "DDPMWuerstchenScheduler")


def _stochastic(pipe: Any, call: Mapping[str, Any]) -> bool:
    """Whether sampling draws noise at each step (then images depend on the pipeline call's rng): a DDPM-like
    scheduler (any stage's), DDIM with eta > 0, an SDE solver, or the pipeline's own draws (UniDiffuser's data-free
    guidance)."""
    if getattr(pipe, "draws_noise_every_step", False):
        return True
    for scheduler in _schedulers(pipe).values():
        name, config = type(scheduler).__name__, getattr(scheduler, "config", {})
        if (name in _STOCHASTIC_SCHEDULERS or (name == "DDIMScheduler" and float(call.get("eta", 0.0)) > 0)
                or str(config.get("algorithm_type", "")).startswith("sde")):
            return True
    return False


def load_pipeline(model: str | os.PathLike, dtype: Any = jnp.float32, prior: Any = None,
                  text_encoder_quantization: str | None = None, model_cpu_offload: bool = False) -> Any:
    """The text-to-image pipeline ``jaxgen batch`` runs for a checkpoint (repo id or folder): the one
    ``AutoPipelineForText2Image`` loads (Kandinsky and Würstchen decoders: prior + decoder, the prior from
    ``prior`` or the one the decoder's README.md names), or a family's own (UniDiffuser), in ``dtype``;
    ``text_encoder_quantization`` ("int8") and ``model_cpu_offload``: as ``from_pretrained``'s."""
    from jaxgen import registry
    from jaxgen.pipelines.auto_pipeline import checkpoint_class_name

    class_name = checkpoint_class_name(model)
    target = registry.command_line_pipeline("text-to-image", class_name)
    if target is None:
        raise ValueError(f"--model {model}: jaxgen has no text-to-image pipeline for {class_name!r}")
    cls = registry.pipeline_class(target)
    if prior is not None and not hasattr(cls, "_prior_class"):
        raise ValueError(f"--prior-model: {target} (for --model {model}) has no prior")
    options = {} if prior is None else {"prior": prior}
    if model_cpu_offload:  # only when asked: a pipeline class without the option still loads as before
        options["model_cpu_offload"] = True
    return cls.from_pretrained(model, dtype=dtype, text_encoder_quantization=text_encoder_quantization, **options)


def _call_arguments(pipe: Any, call: Mapping[str, Any]) -> dict:
    """``call`` as this pipeline names it (a combined Würstchen's guidance is its decoder's); an argument it does not
    take is refused before anything runs."""
    takes = inspect.signature(pipe.__call__).parameters
    call = dict(call)
    if "guidance_scale" in call and "guidance_scale" not in takes and "decoder_guidance_scale" in takes:
        call["decoder_guidance_scale"] = call.pop("guidance_scale")
    unknown = sorted(k for k in call if k not in takes or takes[k].kind is inspect.Parameter.VAR_KEYWORD)
    if unknown:
        raise TypeError(f"{type(pipe).__name__} does not take {unknown}")
    return call


# --------------------------------------------------------------------------- the run


def generate_batch(
    pipe_or_model: Any,
    prompts: str | os.PathLike | Sequence[Any],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    seed: int = 0,
    num_images_per_prompt: int = 1,
    negative_prompt: str | None = None,
    dtype: Any = jnp.float32,
    show_progress: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
    prior: Any = None,
    text_encoder_quantization: str | None = None,
    model_cpu_offload: bool = False,
    **call_kwargs: Any,
) -> BatchSummary:
    """Generate an image set into ``out_dir``; rerun the same call to resume after a crash.

    ``pipe_or_model``: a loaded pipeline, or a repo id / folder (loaded by ``load_pipeline`` in
    ``dtype``; ``prior``: a Kandinsky or Würstchen decoder's prior, a repo id, folder or loaded prior
    pipeline; ``text_encoder_quantization``: "int8" to quantize its text encoders while loading;
    ``model_cpu_offload``: its models kept in host memory, each on the devices only while it runs). ``prompts``: a .txt or .jsonl path, or a list of strings / dicts (see
    ``read_prompts``); prompts are read and checked before any model loads. ``batch_size`` prompts go
    into each pipeline call; ``seed`` is the base seed; ``negative_prompt`` applies to the jobs that do
    not give their own; ``call_kwargs`` go to every pipeline call (``num_inference_steps``,
    ``guidance_scale``, ``height``, ``width``, ``use_resolution_binning``, ``prior_num_inference_steps``,
    ...; one the pipeline does not take is a TypeError before anything runs).
    ``process_index``/``process_count`` default to JAX's; pass them to split a set over independent
    runs. Returns a ``BatchSummary`` for this process.
    """
    reserved = sorted(set(call_kwargs) & set(_RESERVED))
    if reserved:
        raise TypeError(f"generate_batch sets {reserved} itself; do not pass them")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
        raise ValueError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}")
    jobs = read_prompts(prompts, seed=seed)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    jobs = [job for job in jobs if job.index % process_count == process_index]
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder")

    model = None
    if isinstance(pipe_or_model, (str, os.PathLike)):
        model = os.fspath(pipe_or_model)
        pipe = load_pipeline(model, dtype, prior, text_encoder_quantization, model_cpu_offload)
    else:
        pipe = pipe_or_model
    call_kwargs = _call_arguments(pipe, call_kwargs)

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_suffix = f".tmp-p{process_index}"
    held = lock_folder(out_dir, process_index)
    manifest = None
    try:
        # left by a run that died mid-write; a single process owns them all (an earlier run may have had more)
        for stale in out_dir.glob(".*.tmp-p*" if process_count == 1 else f".*{tmp_suffix}"):
            stale.unlink()
        name = "manifest.jsonl" if process_count == 1 else f"manifest-{process_index}.jsonl"
        manifest = Manifest(out_dir / name, tmp_suffix)
        return _run(pipe, model, jobs, out_dir, manifest, tmp_suffix, batch_size, num_images_per_prompt,
                    negative_prompt, show_progress, process_index, process_count, call_kwargs)
    finally:
        if manifest is not None:
            manifest.close()
        if held is not None:
            held.close()


def _file_name(job: Job, k: int, num_images: int) -> str:
    stem = _SAFE_ID.sub("_", job.id)
    return f"{stem}.png" if num_images == 1 else f"{stem}-{k}.png"


def _run(pipe, model, jobs, out_dir, manifest, tmp_suffix, batch_size, num_images, negative_prompt, show_progress,
         process_index, process_count, call) -> BatchSummary:
    from tqdm.auto import tqdm

    per_image_noise = hasattr(pipe, "generation_size")  # one latent tensor: given per image (PixArt)
    layout = None
    if per_image_noise:
        layout = _latent_layout(pipe, call.get("height"), call.get("width"), call.get("use_resolution_binning", True))
        call = {**call, "height": layout[1], "width": layout[2]}
    settings = _settings(pipe, model, call, num_images, layout)
    calls = max(1, min(batch_size, len(jobs)))  # the batch shape of every call
    by_group = calls > 1 and (not per_image_noise or _stochastic(pipe, call))
    if by_group:
        logger.warning("%s draws its noise per pipeline call: each image depends on the prompts it is batched with"
                       " (recorded as \"call\" in its metadata); use batch_size=1 to make each image depend only on its"
                       " own seed", type(pipe).__name__)

    files = {}
    for job in jobs:
        for k in range(num_images):
            file = _file_name(job, k, num_images)
            if file in files:
                raise ValueError(f"ids {files[file]!r} and {job.id!r} map to the same file name {file}")
            files[file] = job.id

    # finished: recorded with a valid file; or valid, matching and renamed into place but not yet recorded
    recorded = finished(out_dir)
    pending: list[tuple[Job, list[int]]] = []
    skipped = 0
    for job in jobs:
        todo = []
        for k in range(num_images):
            record, file = _record(job, k, settings, negative_prompt), _file_name(job, k, num_images)
            path = out_dir / file
            params = png_parameters(path) if path.exists() else None
            if params is None:  # missing or corrupt: (re)generate
                todo.append(k)
                continue
            entry = recorded.get((job.id, k))
            if entry is None and not params:
                raise ValueError(f"{path} exists and was not written by jaxgen batch; move it or use another --out")
            diff = _difference(entry if entry is not None else params, record)
            if diff is not None:
                raise ValueError(
                    f"{out_dir} already holds {file} made with {diff}; use another --out folder, or "
                    "delete that image to regenerate it"
                )
            if entry is None:
                manifest.append({**record, "file": file})  # adopt it: a crash came between rename and record
            skipped += 1
        if todo:
            pending.append((job, todo))

    total = len(jobs) * num_images
    generated = 0
    start = time.perf_counter()
    old_bar_config = pipe.progress_bar_config
    pipe.set_progress_bar_config(**{**old_bar_config, "disable": True})  # one bar, per image, not per step
    bar = tqdm(total=total, initial=skipped, unit="img", desc="jaxgen batch", disable=not show_progress,
               dynamic_ncols=True, smoothing=0.1)
    try:
        for first in range(0, len(pending), calls):
            group = pending[first : first + calls]
            padded = [job for job, _ in group] + [group[-1][0]] * (calls - len(group))
            noise = {}
            if per_image_noise:
                seeds = jnp.asarray([job.seed for job in padded], jnp.uint32)
                noise["latents"] = initial_noise(seeds, images_per_seed=num_images, shape=layout[0])
            negatives = [_negative(job, negative_prompt) for job in padded]
            images = pipe(
                [job.prompt for job in padded], negative_prompt=negatives, num_images_per_prompt=num_images,
                rng=padded[0].seed, output_type="pil", **noise, **call,
            ).images
            # the call an image came from, when it depends on it: pipe(prompts of ids, rng=seed, **settings)[row]
            origin = {"call": {"seed": padded[0].seed, "ids": [job.id for job in padded]}} if by_group else {}
            for b, (job, todo) in enumerate(group):
                for k in todo:
                    record, file = _record(job, k, settings, negative_prompt), _file_name(job, k, num_images)
                    record = {**record, **origin}
                    write_atomic(out_dir / file, png_bytes(images[b * num_images + k], record), tmp_suffix)
                    manifest.append({**record, "file": file})
                    generated += 1
                    bar.update(1)
    finally:
        bar.close()
        pipe.set_progress_bar_config(**old_bar_config)
    return BatchSummary(out_dir, manifest.path, len(jobs), total, generated, skipped, time.perf_counter() - start,
                        process_index, process_count)


def read_manifest(out_dir: str | os.PathLike) -> list[dict]:
    """The finished images of a batch folder: the last manifest entry per (id, image), over every process."""
    return list(finished(Path(out_dir)).values())
