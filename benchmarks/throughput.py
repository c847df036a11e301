"""Images per second of the PixArt-α pipeline against batch size and device count.

A random-weight pipeline folder is written once (jaxgen's converted layout: model_index.json,
configs, orbax params, a T5 tokenizer trained here on a few sentences, the scheduler config; no
download, no torch). Then, for each device count N, a fresh process loads it onto a data-parallel
mesh of N devices and, for each batch size (number of prompts, one image each, guidance on),
compiles ahead (``pipe.warmup``), makes one untimed call, and times further calls of the whole
pipeline (tokenize, T5, the denoising loop, VAE decode, images back on the host as numpy):
steady-state images/s = batch / seconds of the best call (the JSON has the median too). A batch that does not divide by N is
padded (batch 1 on 8 devices computes 8 rows), and only real images are counted.

Every call uses the same prompts and seed, so the images of a batch must not depend on N (the
pipeline's guarantee): the script prints the largest absolute difference from the 1-device images
of the same batch, and from the same images inside the largest batch (the noise of image i does
not depend on the batch size).

On CPU (default) the devices are fake ones, ``XLA_FLAGS=--xla_force_host_platform_device_count=N``,
that share the machine's cores: the numbers check correctness and the shape of the scaling, not
speed (on 2 cores, more devices cannot be faster). The default model is a SMALL PixArt config
(T5 d_model 64, transformer 4 layers x 64 wide, VAE 32/64 channels, 64x64 images). On a GPU or TPU
host, the same script measures real throughput on the real PixArt-XL-2 config with random weights
(the configs in tests/configs; the tokenizer stays the small trained one, which changes no
shape: prompts are padded to 120 tokens):

    python benchmarks/throughput.py --json benchmarks/throughput-cpu.json
    python benchmarks/throughput.py --configs tests/configs/PixArt-alpha__PixArt-XL-2-1024-MS \\
        --dtype bfloat16 --resolution 1024 --steps 20 --devices 1 --batch-sizes 1 2 4 8 16 \\
        --json benchmarks/throughput-gpu.json

``--devices`` then takes the first N local accelerators (N up to the local device count).
Prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TEXT_LEN = 120  # PixArt-α's max_sequence_length
PROMPTS = [
    "a photo of a cat", "an astronaut riding a horse on the moon", "the quick brown fox jumps over the lazy dog",
    "a painting of a city at night with neon lights", "a cat riding a horse", "the moon at night",
    "a brown dog on the moon", "neon lights of a city", "a quick painting of a fox", "an astronaut with a cat",
    "a horse on a city street at night", "the lazy dog", "a photo of the moon", "a fox and a cat",
    "a painting of an astronaut", "lights at night",
]


# --------------------------------------------------------------------------- the random pipeline folder


def small_configs(vocab_size: int) -> dict[str, dict]:
    """config.json contents of the small PixArt pipeline (text width = caption channels = 64)."""
    from jaxgen.models.autoencoder_kl import AutoencoderKLConfig
    from jaxgen.models.pixart_transformer import PixArtTransformer2DModelConfig
    from jaxgen.text.t5 import T5Config

    text = T5Config.tiny().replace(vocab_size=vocab_size, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2)
    transformer = PixArtTransformer2DModelConfig.tiny(
        num_attention_heads=4, attention_head_dim=16, num_layers=4, cross_attention_dim=64, caption_channels=64,
        sample_size=32,
    )
    vae = AutoencoderKLConfig.tiny().replace(block_out_channels=(32, 64), norm_num_groups=8, sample_size=64)
    return {"text_encoder": text.to_dict(), "transformer": transformer.to_dict(), "vae": vae.to_dict()}


def build_folder(dst: Path, configs: Path | None, dtype_name: str) -> None:
    """Write a random-weight PixArt pipeline folder at ``dst`` (runs on the host CPU)."""
    import jax
    import jax.numpy as jnp

    from jaxgen.modeling import ORBAX_PARAMS_DIR, save_orbax_params
    from jaxgen.pipelines.pixart_alpha import PixArtAlphaPipeline
    from jaxgen.quantize import cast_floating
    from tests.conftest import make_t5_tokenizer

    dst.mkdir(parents=True)
    tokenizer = make_t5_tokenizer(dst / "_spm")
    tokenizer.save_pretrained(dst / "tokenizer")
    shutil.rmtree(dst / "_spm")
    index = {
        "_class_name": "PixArtAlphaPipeline", "tokenizer": ["transformers", "T5Tokenizer"],
        "text_encoder": ["transformers", "T5EncoderModel"], "vae": ["diffusers", "AutoencoderKL"],
        "transformer": ["diffusers", "PixArtTransformer2DModel"], "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
    }
    if configs is None:
        model_configs = small_configs(len(tokenizer))
        scheduler = {"_class_name": "DPMSolverMultistepScheduler"}
    else:
        model_configs = {n: json.loads((configs / n / "config.json").read_text()) for n in ("text_encoder", "transformer", "vae")}
        scheduler = json.loads((configs / "scheduler" / "scheduler_config.json").read_text())
    (dst / "scheduler").mkdir()
    (dst / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
    for i, (name, config) in enumerate(model_configs.items()):
        cls = PixArtAlphaPipeline._components[name].model_class
        module = cls.from_config(config)
        params = jax.jit(lambda key: cast_floating(module.init_params(key), dtype))(jax.random.key(i))
        (dst / name).mkdir()
        (dst / name / "config.json").write_text(json.dumps(config, indent=2))
        save_orbax_params(dst / name / ORBAX_PARAMS_DIR, params)
        del params
    (dst / "model_index.json").write_text(json.dumps(index, indent=2))


# --------------------------------------------------------------------------- one device count


def run_devices(folder: Path, n: int, batch_sizes: list[int], args: argparse.Namespace, out: Path) -> None:
    """Time every batch size on a data-parallel mesh of ``n`` local devices; JSON rows + images to ``out``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxgen import PixArtAlphaPipeline, sharding

    devices = jax.local_devices()
    if len(devices) < n:
        raise SystemExit(f"{n} devices asked for, {len(devices)} local {devices[0].platform} devices here")
    mesh = sharding.make_mesh(data=n, model=1, devices=devices[:n])
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype]
    pipe = PixArtAlphaPipeline.from_pretrained(folder, dtype=dtype, mesh=mesh)
    pipe.set_progress_bar_config(disable=True)
    size = dict(height=args.resolution, width=args.resolution, num_inference_steps=args.steps, output_type="np",
                use_resolution_binning=False)
    rows, images = [], {}
    for b in batch_sizes:
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(b)]
        warmup_s = pipe.warmup(batch_size=b, **size)
        pipe(prompts, rng=args.seed, **size)  # first call: the eager ops around the compiled programs
        times: list[float] = []
        while len(times) < args.min_calls or (sum(times) < args.min_seconds and len(times) < args.max_calls):
            start = time.perf_counter()
            result = pipe(prompts, rng=args.seed, **size).images
            times.append(time.perf_counter() - start)
        seconds = min(times)  # the best call: other processes on the host only ever slow one down
        images[f"b{b}"] = np.asarray(result, np.float32)
        rows.append({
            "devices": n, "batch": b, "padded_rows": sharding.padded_size(b, mesh), "images_per_s": b / seconds,
            "s_per_call": seconds, "median_s_per_call": statistics.median(times), "calls": len(times),
            "warmup_s": warmup_s, "finite": bool(np.isfinite(result).all()),
        })
        print(f"  devices={n} batch={b}: {b / seconds:.2f} images/s ({seconds:.3f} s/call, {len(times)} calls, "
              f"warmup {warmup_s:.1f} s)", flush=True)
    meta = {"platform": devices[0].platform, "device_kind": devices[0].device_kind, "jax": jax.__version__}
    (out / f"rows-{n}.json").write_text(json.dumps({"meta": meta, "rows": rows}))
    np.savez(out / f"images-{n}.npz", **images)


# --------------------------------------------------------------------------- driver


def _env(n: int, cpu_only: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
    env.setdefault("JAXGEN_COMPILATION_CACHE", "off")  # compile afresh, write nothing under ~/.cache
    if cpu_only:
        env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _child(argv: list[str], n: int, cpu_only: bool = False) -> None:
    subprocess.run([sys.executable, __file__, *argv], env=_env(n, cpu_only), check=True)


def _table(rows: list[dict], meta: dict, args: argparse.Namespace, total_s: float) -> str:
    devices = sorted({r["devices"] for r in rows})
    batches = sorted({r["batch"] for r in rows})
    by = {(r["devices"], r["batch"]): r for r in rows}
    model = "small random-weight PixArt config" if args.configs is None else f"{Path(args.configs).name}, random weights"
    fake = " (fake devices sharing the host's cores: correctness and scaling shape, not speed)" if meta["platform"] == "cpu" else ""
    lines = [
        f"PixArt-α pipeline, {model}, {args.resolution}x{args.resolution}, {args.steps} DPM-Solver steps, guidance on "
        f"(CFG), {args.dtype}; {meta['platform']} x N ({meta['device_kind']}){fake}; host {platform.machine()}, "
        f"{os.cpu_count()} cores (1-min load average {meta['load_average_1min'][0]} at the start, "
        f"{meta['load_average_1min'][1]} at the end); jax {meta['jax']}; whole run {total_s:.0f} s",
        "",
        "images/s (steady state: best timed call after warmup), by batch size (prompts per call) and device count (data axis):",
        "",
        "| batch | " + " | ".join(f"{n} device{'s' * (n > 1)}" for n in devices) + " |",
        "|---|" + "---|" * len(devices),
    ]
    for b in batches:
        lines.append(f"| {b} | " + " | ".join(f"{by[n, b]['images_per_s']:.2f}" for n in devices) + " |")
    lines += [
        "",
        "| devices | batch | rows computed (padded) | images/s | best s/call | median s/call | calls timed | warmup s | max abs diff vs 1 device | max abs diff vs the same images in batch "
        f"{batches[-1]} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in devices:
        for b in batches:
            r = by[n, b]
            diff = lambda k: "n/a" if r.get(k) is None else f"{r[k]:.1e}"
            lines.append(
                f"| {n} | {b} | {r['padded_rows']} | {r['images_per_s']:.2f} | {r['s_per_call']:.3f} | {r['median_s_per_call']:.3f} | {r['calls']} | "
                f"{r['warmup_s']:.1f} | {diff('max_abs_diff_vs_1_device')} | {diff('max_abs_diff_vs_largest_batch')} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8], help="device counts (the first is the reference)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--configs", type=Path, default=None,
                        help="a diffusers PixArt folder of configs (e.g. tests/configs/PixArt-alpha__PixArt-XL-2-1024-MS); default: the small config")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-calls", type=int, default=2, help="timed calls per point, at least")
    parser.add_argument("--max-calls", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="time at least this long per point (up to --max-calls)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--_build", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_worker", type=Path, nargs=2, default=None, help=argparse.SUPPRESS)  # folder, out
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))

    if args._build is not None:
        build_folder(args._build, args.configs, args.dtype)
        return 0
    if args._worker is not None:
        run_devices(args._worker[0], args.devices[0], args.batch_sizes, args, args._worker[1])
        return 0

    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    common = ["--dtype", args.dtype, "--resolution", str(args.resolution), "--steps", str(args.steps),
              "--seed", str(args.seed), "--min-calls", str(args.min_calls), "--max-calls", str(args.max_calls),
              "--min-seconds", str(args.min_seconds), "--batch-sizes", *map(str, args.batch_sizes)]
    with tempfile.TemporaryDirectory(prefix="jaxgen-throughput-") as tmp:
        tmp = Path(tmp)
        folder = tmp / "pipeline"
        build = ["--_build", str(folder), "--dtype", args.dtype] + (["--configs", str(args.configs)] if args.configs else [])
        _child(build, 1, cpu_only=True)
        print(f"random-weight pipeline written in {time.perf_counter() - start:.0f} s", flush=True)
        rows, images, meta = [], {}, None
        for n in args.devices:
            out = tmp / f"out-{n}"
            out.mkdir()
            _child(["--_worker", str(folder), str(out), "--devices", str(n), *common], n)
            result = json.loads((out / f"rows-{n}.json").read_text())
            meta = meta or result["meta"]
            rows += result["rows"]
            with __import__("numpy").load(out / f"images-{n}.npz") as f:
                images[n] = {k: f[k] for k in f.files}

    import numpy as np

    ref_n, largest = args.devices[0], f"b{max(args.batch_sizes)}"
    for r in rows:
        key, n = f"b{r['batch']}", r["devices"]
        mine = images[n][key]
        r["max_abs_diff_vs_1_device"] = None if n == ref_n else float(np.abs(mine - images[ref_n][key]).max())
        r["max_abs_diff_vs_largest_batch"] = float(np.abs(mine - images[n][largest][: r["batch"]]).max())
    total_s = time.perf_counter() - start
    meta = {**meta, "load_average_1min": [round(load_start, 1), round(os.getloadavg()[0], 1)]}
    table = _table(rows, meta, args, total_s)
    print(table)
    if args.json:
        record = {"meta": {**meta, "config": str(args.configs or "small"), "dtype": args.dtype,
                           "resolution": args.resolution, "steps": args.steps, "seed": args.seed,
                           "host": platform.machine(), "cores": os.cpu_count(), "total_s": total_s},
                  "rows": rows}
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
