"""Peak device memory per PixArt-α component at real size, without allocating the real params.

For each component and dtype, the call a pipeline makes is lowered and compiled with
``jax.ShapeDtypeStruct`` arguments (nothing is allocated), and XLA's buffer assignment
(``compiled.memory_analysis()``) gives the sizes of the arguments (params + inputs), the outputs
and the temporaries. Peak = arguments + outputs - aliased + temporaries: what the device holds
while that one program runs. The calls:

- T5-XXL text encoder: encode a CFG batch (prompt and negative prompt) of 2 x 120 tokens;
  float32, bfloat16, and int8 weight-only (``jaxgen.quantize``, bfloat16 compute);
- PixArt-XL-2 transformer: one denoising step, CFG batch 2, latents (2, res/8, res/8, 4), 120
  caption tokens, then the guidance combination;
- VAE (AutoencoderKL) decode of one latent to a res x res image.

The numbers come from the backend this runs on. On CPU, XLA's default scheduler favours
concurrency over memory (it converts and broadcasts far ahead of use); this script turns it off
(``--xla_cpu_enable_concurrency_optimized_scheduler=false``, unless XLA_FLAGS already sets it) so
that the buffer assignment is the memory-minimising one that GPU and TPU compilers aim for. GPU
and TPU fuse differently and pick other attention kernels: flash attention (cuDNN, splash) never
holds the (batch, heads, tokens, tokens) float32 logits that the XLA path does (2 GiB for the
transformer at 1024x1024), so temporaries there are smaller: one more transformer row compiles
it with splash attention (Pallas interpret mode on CPU: the kernel's block-sized buffers, not the
logits) as an estimate of the flash-attention peak. Prints a Markdown table and writes JSON.

    python benchmarks/memory.py --resolution 1024 --json benchmarks/memory-cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_CONFIGS = REPO / "tests" / "configs" / "PixArt-alpha__PixArt-XL-2-1024-MS"
GIB = 2**30
TEXT_LEN = 120  # PixArt-α's max_sequence_length
CFG_BATCH = 2


def _flops(compiled: Any) -> float:
    """XLA's FLOP count of a compiled program (a loop body counts once)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def _compile_stats(fn: Callable, *args: Any) -> dict:
    """Lower and compile ``fn`` on abstract args: XLA's memory analysis in bytes, FLOPs, compile time."""
    import jax

    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    m = compiled.memory_analysis()
    stats = {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
        "flops": _flops(compiled),
        "compile_s": round(seconds, 1),
    }
    stats["peak_bytes"] = stats["argument_bytes"] + stats["output_bytes"] - stats["alias_bytes"] + stats["temp_bytes"]
    return stats


def _abstract_params(module: Any, dtype: Any, quantized: bool = False) -> Any:
    import jax

    from jaxgen.quantize import cast_floating, quantize_params

    shapes = cast_floating(module.param_shapes(), dtype)
    return jax.eval_shape(quantize_params, shapes) if quantized else shapes


def text_encoder_row(configs: Path, dtype_name: str) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxgen.models import T5EncoderModel
    from jaxgen.quantize import param_bytes

    quantized = dtype_name == "int8"
    dtype = jnp.float32 if dtype_name == "float32" else jnp.bfloat16
    config = json.loads((configs / "text_encoder" / "config.json").read_text())
    module = T5EncoderModel.from_config(config, dtype=dtype)
    params = _abstract_params(module, dtype)
    if quantized:
        params = _abstract_params(module, dtype, quantized=True)
        module = module.clone(quantized=True)
    ids = jax.ShapeDtypeStruct((CFG_BATCH, TEXT_LEN), jnp.int32)
    stats = _compile_stats(lambda p, i, m: module.apply({"params": p}, i, m).last_hidden_state, params, ids, ids)
    return {"component": "text_encoder (T5-XXL)", "call": f"encode {CFG_BATCH}x{TEXT_LEN} tokens",
            "dtype": "int8 weights, bfloat16 compute" if quantized else dtype_name, "param_bytes": param_bytes(params), **stats}


@contextlib.contextmanager
def _forced_attention(implementation: str | None):
    """Every ``dot_product_attention`` call traced inside runs ``implementation`` (None: as chosen)."""
    from jaxgen.nn import attention

    original = attention.dot_product_attention
    if implementation is not None:
        attention.dot_product_attention = lambda *a, **kw: original(*a, **{**kw, "implementation": implementation})
    try:
        yield
    finally:
        attention.dot_product_attention = original


def transformer_row(configs: Path, dtype_name: str, resolution: int, guidance_scale: float = 4.5,
                    attention: str | None = None) -> dict:
    """``attention="splash"``: Pallas splash attention (interpret mode off TPU): flash attention's buffers."""
    import jax
    import jax.numpy as jnp

    from jaxgen.models import PixArtTransformer2DModel
    from jaxgen.quantize import param_bytes

    dtype = jnp.dtype(dtype_name)
    config = json.loads((configs / "transformer" / "config.json").read_text())
    module = PixArtTransformer2DModel.from_config(config, dtype=dtype)
    params = _abstract_params(module, dtype)
    side = resolution // 8
    s = jax.ShapeDtypeStruct
    latents = s((CFG_BATCH, side, side, config["in_channels"]), dtype)
    caption = s((CFG_BATCH, TEXT_LEN, config["caption_channels"]), dtype)
    mask = s((CFG_BATCH, TEXT_LEN), jnp.int32)
    timestep = s((CFG_BATCH,), jnp.int32)
    added = {"resolution": s((CFG_BATCH, 2), jnp.float32), "aspect_ratio": s((CFG_BATCH, 1), jnp.float32)}

    def step(p, x, c, t, a, m):
        out = module.apply({"params": p}, x, c, t, a, encoder_attention_mask=m).sample
        eps = out[..., : config["in_channels"]].astype(jnp.float32)  # learned sigma: the first half is epsilon
        uncond, cond = jnp.split(eps, 2)
        return uncond + guidance_scale * (cond - uncond)

    with _forced_attention(attention):
        stats = _compile_stats(step, params, latents, caption, timestep, added, mask)
    tokens = (side // config["patch_size"]) ** 2
    call = f"1 step, CFG batch {CFG_BATCH}, {side}x{side} latents ({tokens} tokens)"
    if attention == "splash":
        call += ", splash attention (flash; interpret-mode estimate off TPU)"
    return {"component": "transformer (PixArt-XL-2)", "call": call, "dtype": dtype_name,
            "param_bytes": param_bytes(params), **stats}


def vae_row(configs: Path, dtype_name: str, resolution: int) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxgen.models import AutoencoderKL
    from jaxgen.quantize import param_bytes

    dtype = jnp.dtype(dtype_name)
    config = json.loads((configs / "vae" / "config.json").read_text())
    module = AutoencoderKL.from_config(config, dtype=dtype)
    params = _abstract_params(module, dtype)
    z = jax.ShapeDtypeStruct((1, resolution // 8, resolution // 8, config["latent_channels"]), dtype)
    stats = _compile_stats(lambda p, z: module.apply({"params": p}, z, method="decode").sample, params, z)
    return {"component": "vae (AutoencoderKL)", "call": f"decode 1 image {resolution}x{resolution}",
            "dtype": dtype_name, "param_bytes": param_bytes(params), **stats}


def pipeline_summary(rows: list[dict]) -> list[dict]:
    """Whole-pipeline peaks per dtype: all components resident during every phase, and the denoising
    and decoding phases once the text encoder has been dropped (``text_encoder=None`` pattern)."""
    by = {(r["component"].split()[0], r["dtype"]): r for r in rows if "splash" not in r["call"]}
    out = []
    for label, t5_dtype, dtype in (("float32", "float32", "float32"), ("bfloat16", "bfloat16", "bfloat16"),
                                   ("bfloat16 + int8 T5", "int8 weights, bfloat16 compute", "bfloat16")):
        t5, tr, vae = by.get(("text_encoder", t5_dtype)), by.get(("transformer", dtype)), by.get(("vae", dtype))
        if not (t5 and tr and vae):
            continue
        params = {"t5": t5["param_bytes"], "tr": tr["param_bytes"], "vae": vae["param_bytes"]}
        phases = {"t5": t5["peak_bytes"], "tr": tr["peak_bytes"], "vae": vae["peak_bytes"]}
        # each phase's peak holds its own params; the others' params sit beside it
        resident = max(phases[k] + sum(v for n, v in params.items() if n != k) for k in phases)
        # without the text encoder (prompt embeddings given, or encoded elsewhere)
        no_t5 = max(phases["tr"] + params["vae"], phases["vae"] + params["tr"])
        out.append({"pipeline": label, "all_resident_peak_bytes": resident, "without_text_encoder_peak_bytes": no_t5})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--components", nargs="+", default=["text_encoder", "transformer", "vae"])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "int8"],
                        help="int8 applies to the text encoder only (weight-only, bfloat16 compute)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-flash-estimate", action="store_true",
                        help="skip the transformer row with splash (flash) attention instead of XLA's")
    parser.add_argument("--concurrency-scheduler", action="store_true",
                        help="keep XLA:CPU's default concurrency-optimised scheduler (more memory)")
    args = parser.parse_args()

    flags = os.environ.get("XLA_FLAGS", "")
    if not args.concurrency_scheduler and "concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_enable_concurrency_optimized_scheduler=false".strip()
    import jax

    rows = []
    for component in args.components:
        for dtype in args.dtypes:
            if dtype == "int8" and component != "text_encoder":
                continue
            if component == "text_encoder":
                row = text_encoder_row(args.configs, dtype)
            elif component == "transformer":
                row = transformer_row(args.configs, dtype, args.resolution)
            else:
                row = vae_row(args.configs, dtype, args.resolution)
            print(f"# {row['component']} {row['dtype']}: compiled in {row['compile_s']} s", file=sys.stderr, flush=True)
            rows.append(row)
    if "transformer" in args.components and not args.no_flash_estimate:
        dtype = "bfloat16" if "bfloat16" in args.dtypes else args.dtypes[0]
        rows.append(transformer_row(args.configs, dtype, args.resolution, attention="splash"))

    device = jax.devices()[0]
    print(f"PixArt-α components ({args.configs.name}), {args.resolution}x{args.resolution}; memory analysis of the "
          f"compiled programs on {device.platform} ({platform.machine()}), jax {jax.__version__}"
          + (", XLA:CPU concurrency-optimised scheduler off" if "scheduler=false" in os.environ.get("XLA_FLAGS", "") else "")
          + "\n")
    print("| component | call | dtype | params GiB | temp GiB | peak GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['component']} | {r['call']} | {r['dtype']} | {r['param_bytes'] / GIB:.2f} | "
              f"{r['temp_bytes'] / GIB:.2f} | {r['peak_bytes'] / GIB:.2f} |")
    summary = pipeline_summary(rows)
    if summary:
        print("\n| pipeline dtype | peak GiB, all components resident | peak GiB after the text encoder is dropped |")
        print("|---|---|---|")
        for s in summary:
            print(f"| {s['pipeline']} | {s['all_resident_peak_bytes'] / GIB:.2f} | {s['without_text_encoder_peak_bytes'] / GIB:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({
            "resolution": args.resolution, "text_len": TEXT_LEN, "cfg_batch": CFG_BATCH, "configs": args.configs.name,
            "backend": device.platform, "jax": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "rows": rows, "pipeline": summary,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
