"""PixArt-α speed: jaxgen against diffusers (PyTorch) on the real PixArt-XL-2 architecture.

Random weights (speed does not depend on their values), same machine, one run. Measures seconds
per denoising step with classifier-free guidance (transformer on a batch of 2 + DPM-Solver++ step)
and the VAE decode, in float32 and bfloat16; jaxgen's compile time is reported apart. Also counts
the transformer's FLOPs per step and compares with the FLOP floor: those FLOPs at the best rate
of a large matmul on this machine (JAX's or PyTorch's, whichever is faster). Prints a Markdown table and writes JSON.

    python benchmarks/pixart.py --resolution 256 --dtypes float32 bfloat16 --json benchmarks/pixart-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_CONFIGS = REPO / "tests" / "configs" / "PixArt-alpha__PixArt-XL-2-1024-MS"


def transformer_flops(cfg: dict, tokens: int, text_len: int, batch: int) -> float:
    """Multiply-adds x 2 of one transformer forward (linear layers and attention matmuls)."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    n, t = tokens, text_len
    per_layer = (
        2 * n * d * d * 4          # self-attention q, k, v, out
        + 2 * 2 * n * n * d        # self-attention scores and values
        + 2 * n * d * d * 2        # cross-attention q, out
        + 2 * t * d * d * 2        # cross-attention k, v (over the caption)
        + 2 * 2 * n * t * d        # cross-attention scores and values
        + 2 * n * d * 4 * d * 2    # feed-forward (4x)
    )
    caption = 2 * t * cfg["caption_channels"] * d + 2 * t * d * d
    patch = 2 * n * cfg["in_channels"] * cfg["patch_size"] ** 2 * d
    head = 2 * n * d * cfg["patch_size"] ** 2 * cfg["out_channels"]
    return float(batch * (cfg["num_layers"] * per_layer + caption + patch + head))


def _micro_conditions(cfg: dict) -> bool:
    """Whether the transformer takes resolution / aspect-ratio conditions (α-1024 does, Σ's do not)."""
    flag = cfg.get("use_additional_conditions")
    return cfg.get("sample_size") == 128 if flag is None else bool(flag)


def matmul_rate(dtype: str, size: int = 2048) -> float:
    """FLOP/s of a large jitted matmul in JAX on this machine: the practical peak."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((size, size), dtype)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(3))
    return 2 * size**3 / best


def torch_matmul_rate(dtype: str, size: int = 2048) -> float:
    """FLOP/s of a large matmul in PyTorch on this machine (oneDNN/cuBLAS)."""
    import torch

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.ones(size, size, dtype=dt, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    (a @ a), sync()
    best = min(_timed(lambda: ((a @ a), sync())) for _ in range(3))
    return 2 * size**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_jaxgen(cfg_dir: Path, resolution: int, dtype_name: str, steps: int, text_len: int) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxgen.models.autoencoder_kl import AutoencoderKL
    from jaxgen.models.pixart_transformer import PixArtTransformer2DModel
    from jaxgen.pipelines.pipeline_utils import decode_latents
    from jaxgen.pipelines.pixart_alpha import PixArtDenoiser
    from jaxgen.pipelines.sampling import ClassifierFreeGuidance, denoise
    from jaxgen.schedulers import DPMSolverMultistepScheduler

    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
    tcfg = json.loads((cfg_dir / "transformer" / "config.json").read_text())
    vcfg = json.loads((cfg_dir / "vae" / "config.json").read_text())
    scfg = json.loads((cfg_dir / "scheduler" / "scheduler_config.json").read_text())
    transformer = PixArtTransformer2DModel.from_config(tcfg, dtype=dtype)
    vae = AutoencoderKL.from_config(vcfg, dtype=dtype)
    cast = lambda p: jax.tree_util.tree_map(lambda x: x.astype(dtype), p)
    params = jax.jit(lambda k: cast(transformer.init_params(k)))(jax.random.key(0))
    vae_params = jax.jit(lambda k: cast(vae.init_params(k)))(jax.random.key(1))
    scheduler = DPMSolverMultistepScheduler.from_config(scfg)
    h = resolution // 8
    latents = jax.random.normal(jax.random.key(2), (1, h, h, 4), jnp.float32)
    embeds = jax.random.normal(jax.random.key(3), (2, text_len, tcfg["caption_channels"]), dtype)
    mask = jnp.ones((2, text_len), jnp.int32)
    cond = {"encoder_hidden_states": embeds, "encoder_attention_mask": mask}
    if _micro_conditions(tcfg):
        cond["added_cond_kwargs"] = {"resolution": jnp.full((2, 2), resolution, dtype), "aspect_ratio": jnp.ones((2, 1), dtype)}

    def run(n: int, compile_only: bool = False):
        state = scheduler.set_timesteps(n, shape=latents.shape)
        args = (PixArtDenoiser(transformer), scheduler, params, latents, state, cond, jnp.float32(4.5), jax.random.key(4),
                jnp.int32(n))
        kw = dict(guidance=ClassifierFreeGuidance(), eta=None)
        if compile_only:
            return denoise.lower(*args, **kw).compile()
        return denoise(*args, **kw).block_until_ready()

    compile_s = _timed(lambda: run(steps, compile_only=True))
    run(steps)  # warm (also the compile of the run itself hits the cache)
    loop_s = statistics.median(_timed(lambda: run(steps)) for _ in range(2))
    decode_compile = _timed(lambda: decode_latents.lower(vae, vae_params, latents).compile())
    decode_latents(vae, vae_params, latents).block_until_ready()
    decode_s = statistics.median(_timed(lambda: decode_latents(vae, vae_params, latents).block_until_ready()) for _ in range(2))
    return {"step_s": loop_s / steps, "decode_s": decode_s, "compile_s": compile_s, "decode_compile_s": decode_compile}


def bench_diffusers(cfg_dir: Path, resolution: int, dtype_name: str, steps: int, text_len: int) -> dict:
    import torch
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, PixArtTransformer2DModel

    torch.manual_seed(0)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    tcfg = json.loads((cfg_dir / "transformer" / "config.json").read_text())
    tcfg["_class_name"] = "PixArtTransformer2DModel"
    vcfg = json.loads((cfg_dir / "vae" / "config.json").read_text())
    transformer = PixArtTransformer2DModel.from_config(tcfg).to(dtype).eval()
    vae = AutoencoderKL.from_config(vcfg).to(dtype).eval()
    scheduler = DPMSolverMultistepScheduler.from_config(json.loads((cfg_dir / "scheduler" / "scheduler_config.json").read_text()))
    h = resolution // 8
    latents = torch.randn(1, 4, h, h)
    embeds = torch.randn(2, text_len, tcfg["caption_channels"], dtype=dtype)
    mask = torch.ones(2, text_len)
    cond = {"resolution": None, "aspect_ratio": None}
    if _micro_conditions(tcfg):
        cond = {"resolution": torch.full((2, 2), float(resolution), dtype=dtype), "aspect_ratio": torch.ones(2, 1, dtype=dtype)}

    @torch.no_grad()
    def loop(n: int):
        scheduler.set_timesteps(n)
        x = latents.clone()
        for t in scheduler.timesteps:
            inp = torch.cat([x, x]).to(dtype)
            out = transformer(inp, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                              timestep=t.expand(2), added_cond_kwargs=cond, return_dict=False)[0].float()
            uncond, text = out.chunk(2)
            eps = (uncond + 4.5 * (text - uncond))[:, :4]
            x = scheduler.step(eps, t, x, return_dict=False)[0]
        return x

    loop(1)  # warm-up
    loop_s = _timed(lambda: loop(steps))
    with torch.no_grad():
        z = latents.to(dtype) / vae.config.scaling_factor
        vae.decode(z)
        decode_s = _timed(lambda: vae.decode(z))
    return {"step_s": loop_s / steps, "decode_s": decode_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS, help="folder with transformer/, vae/, scheduler/ configs")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=3, help="denoising steps timed (per measurement)")
    parser.add_argument("--text-len", type=int, default=120)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import jax
    import torch

    tcfg = json.loads((args.configs / "transformer" / "config.json").read_text())
    tokens = (args.resolution // 8 // tcfg["patch_size"]) ** 2
    flops = transformer_flops(tcfg, tokens, args.text_len, batch=2)
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    rows = []
    for dtype in args.dtypes:
        ours = bench_jaxgen(args.configs, args.resolution, dtype, args.steps, args.text_len)
        ref = None if args.skip_torch else bench_diffusers(args.configs, args.resolution, dtype, args.steps, args.text_len)
        rate = max(matmul_rate(dtype), torch_matmul_rate(dtype))  # the best matmul this machine does
        rows.append({
            "dtype": dtype, "resolution": args.resolution, "jaxgen": ours, "diffusers": ref,
            "flops_per_step": flops, "matmul_flops_per_s": rate, "floor_step_s": flops / rate,
        })
    print(f"\nPixArt-XL-2 ({args.configs.name}), {args.resolution}x{args.resolution}, CFG batch 2, "
          f"{tokens} image tokens, {args.text_len} text tokens; device: {device}; torch {torch.__version__}, jax {jax.__version__}\n")
    print("| dtype | jaxgen s/step | diffusers s/step | speed-up | jaxgen VAE decode s | diffusers VAE decode s | jaxgen compile s (loop / decode) | GFLOP/step | best matmul GFLOP/s | floor s/step | jaxgen / floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, d = r["jaxgen"], r["diffusers"]
        speed = f"{d['step_s'] / o['step_s']:.2f}x" if d else "-"
        print(f"| {r['dtype']} | {o['step_s']:.3f} | {d['step_s'] if d else float('nan'):.3f} | {speed} | {o['decode_s']:.3f} | "
              f"{d['decode_s'] if d else float('nan'):.3f} | {o['compile_s']:.1f} / {o['decode_compile_s']:.1f} | "
              f"{r['flops_per_step'] / 1e9:.0f} | {r['matmul_flops_per_s'] / 1e9:.0f} | {r['floor_step_s']:.3f} | {o['step_s'] / r['floor_step_s']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
