"""The PixArt-XL-2 denoising step on an accelerator: jaxgen (cuDNN and XLA attention) against diffusers (eager and
``torch.compile``), with the FLOPs counted and the share of the measured matmul peak (MFU).

One step is the transformer on the classifier-free-guidance batch of 2 (the part of a step that costs: the
scheduler's update is a few elementwise ops), at 1024 px (4,096 tokens) and, with ``--sizes 1024,2048``, at 2048 px
(16,384 tokens: PixArt-Σ-2K's count; the α architecture, whose per-token cost is the same). Random weights from
the real config (tests/configs), the same on both sides only in distribution (speed does not depend on values).
cuDNN against XLA attention: the same params and inputs, relative L2 between the two outputs.

Ceilings measured first, in the same run: an 8192^3 bf16 matmul through jax (and PyTorch), a device-to-device copy.
MFU = the step's model FLOPs (counted from the config: ``benchmarks.pixart.transformer_flops``) over its time,
over the better of the two measured matmul rates. XLA's own count (``cost_analysis``) is kept in the JSON; it leaves
out what runs in library calls (cuDNN attention, some GEMMs), so it is not the MFU's numerator.

    python benchmarks/step.py --sizes 1024,2048 --json step-gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "tests" / "configs" / "PixArt-alpha__PixArt-XL-2-1024-MS" / "transformer" / "config.json"
TEXT_LEN, BATCH = 120, 2


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync() -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)


def _median_s(call: Callable[[], Any], reps: int, sync: Callable[[], None]) -> float:
    call(), sync()  # warm
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ceilings() -> dict:
    """Measured rates: bf16 matmul (8192^3) through jax and PyTorch, device copy bandwidth (bytes read + written)."""
    import jax
    import jax.numpy as jnp
    import torch

    cuda = torch.cuda.is_available()
    n = 8192 if cuda else 1024
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda x: x @ x)
    jax_s = _median_s(lambda: matmul(a).block_until_ready(), 10, lambda: None)
    t = torch.randn(n, n, device=_device(), dtype=torch.bfloat16)
    torch_s = _median_s(lambda: t @ t, 10, _sync())
    big = jax.random.normal(jax.random.key(1), (1 << (30 if cuda else 24),), jnp.bfloat16)  # 2 GiB on a GPU
    copy = jax.jit(lambda x: x + 1)
    copy_s = _median_s(lambda: copy(big).block_until_ready(), 10, lambda: None)
    return {"jax_bf16_matmul_flops": 2 * n**3 / jax_s, "torch_bf16_matmul_flops": 2 * n**3 / torch_s,
            "copy_bytes_per_s": 2 * big.size * 2 / copy_s}


def jaxgen_step(config: dict, size: int, reps: int, implementations: tuple[str, ...]) -> dict:
    """The transformer on the CFG batch, jitted, with cuDNN (as chosen on a GPU) and with XLA attention."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.memory import _forced_attention
    from benchmarks.random_weights import jax_random_params
    from jaxgen.models import PixArtTransformer2DModel

    module = PixArtTransformer2DModel.from_config(config, dtype=jnp.bfloat16)
    params = jax_random_params(module, jnp.bfloat16)
    side = size // 8
    keys = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(keys[0], (BATCH, side, side, config["in_channels"]), jnp.bfloat16)
    caption = jax.random.normal(keys[1], (BATCH, TEXT_LEN, config["caption_channels"]), jnp.bfloat16)
    t = jnp.full((BATCH,), 500, jnp.int32)
    added = {"resolution": jnp.full((BATCH, 2), float(size)), "aspect_ratio": jnp.ones((BATCH, 1))}
    mask = jnp.ones((BATCH, TEXT_LEN), jnp.int32)
    out, results = {}, {}
    for implementation in implementations:
        with _forced_attention(implementation):
            step = jax.jit(lambda p, x, c, t, a, m: module.apply({"params": p}, x, c, t, a, encoder_attention_mask=m).sample)
            start = time.perf_counter()
            compiled = step.lower(params, x, caption, t, added, mask).compile()
            compile_s = time.perf_counter() - start
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        results[implementation] = np.asarray(compiled(params, x, caption, t, added, mask), np.float32)
        seconds = _median_s(lambda: compiled(params, x, caption, t, added, mask).block_until_ready(), reps, lambda: None)
        out[implementation] = {"s": seconds, "compile_s": compile_s, "xla_flops": float((cost or {}).get("flops", 0))}
    if len(results) == 2:
        a, b = results["cudnn"], results["xla"]
        out["cudnn_vs_xla_rel_l2"] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    out["finite"] = bool(all(np.isfinite(r).all() for r in results.values()))
    out["peak_bytes"] = (jax.local_devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    return out


def diffusers_step(config: dict, size: int, reps: int, torch_compile: bool) -> dict:
    """diffusers' PixArtTransformer2DModel on the same shapes: eager, and through torch.compile."""
    import torch
    from diffusers import PixArtTransformer2DModel

    from benchmarks.random_weights import torch_random_module

    model = torch_random_module(lambda: PixArtTransformer2DModel.from_config(config), torch.bfloat16, _device())
    side = size // 8
    x = torch.randn(BATCH, config["in_channels"], side, side, device=_device(), dtype=torch.bfloat16)
    caption = torch.randn(BATCH, TEXT_LEN, config["caption_channels"], device=_device(), dtype=torch.bfloat16)
    t = torch.full((BATCH,), 500, device=_device())
    added = {"resolution": torch.full((BATCH, 2), float(size), device=_device(), dtype=torch.bfloat16),
             "aspect_ratio": torch.ones(BATCH, 1, device=_device(), dtype=torch.bfloat16)}
    mask = torch.ones(BATCH, TEXT_LEN, device=_device())
    out = {}
    with torch.inference_mode():
        call = lambda m: m(x, encoder_hidden_states=caption, encoder_attention_mask=mask, timestep=t,
                           added_cond_kwargs=added, return_dict=False)[0]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        out["eager"] = {"s": _median_s(lambda: call(model), reps, _sync())}
        out["peak_bytes"] = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        if torch_compile:
            compiled = torch.compile(model)
            start = time.perf_counter()
            call(compiled), _sync()()
            compile_s = time.perf_counter() - start
            out["torch.compile"] = {"s": _median_s(lambda: call(compiled), reps, _sync()),
                                    "compile_s": compile_s}
    return out


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/step.py``: see the module's docstring."""
    from benchmarks.pixart import transformer_flops

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1024", help="comma-separated image sides")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--no-torch-compile", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    config = json.loads(CONFIG.read_text())
    result = {"ceilings": ceilings(), "sizes": {}}
    # the better of the two libraries' matmul rates: cuBLAS through PyTorch beat XLA's own GEMM on an H200
    peak = max(result["ceilings"]["jax_bf16_matmul_flops"], result["ceilings"]["torch_bf16_matmul_flops"])
    print(f"ceilings: {json.dumps(result['ceilings'])}", flush=True)
    lines = ["| px | tokens | GFLOP/step | jaxgen cuDNN ms (MFU) | jaxgen XLA-attention ms (MFU) | diffusers eager ms"
             " (MFU) | torch.compile ms (MFU) | cuDNN vs XLA rel. L2 |", "|---|---|---|---|---|---|---|---|"]
    for size in [int(s) for s in args.sizes.split(",")]:
        tokens = (size // 8 // config["patch_size"]) ** 2
        flops = transformer_flops(config, tokens, TEXT_LEN, BATCH)
        ours = jaxgen_step(config, size, args.reps, ("cudnn", "xla") if _device() == "cuda" else ("xla",))
        theirs = diffusers_step(config, size, args.reps, not args.no_torch_compile)
        result["sizes"][size] = {"tokens": tokens, "flops": flops, "jaxgen": ours, "diffusers": theirs}
        cell = lambda d: f"{d['s'] * 1e3:.1f} ({flops / d['s'] / peak:.0%})" if d else "-"
        ours.setdefault("cudnn", None)
        lines.append(f"| {size} | {tokens} | {flops / 1e9:.0f} | {cell(ours['cudnn'])} | {cell(ours['xla'])} |"
                     f" {cell(theirs.get('eager'))} | {cell(theirs.get('torch.compile'))} |"
                     f" {ours.get('cudnn_vs_xla_rel_l2', float('nan')):.2e} |")
        print(lines[-1], flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
