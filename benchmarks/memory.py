"""Peak device memory per pipeline component at real size (PixArt-α, Kandinsky 2.2 and 3), without allocating params.

For each component and dtype, the call a pipeline makes is lowered and compiled with
``jax.ShapeDtypeStruct`` arguments (nothing is allocated), and XLA's buffer assignment
(``compiled.memory_analysis()``) gives the sizes of the arguments (params + inputs), the outputs
and the temporaries. Peak = arguments + outputs - aliased + temporaries: what the device holds
while that one program runs. The calls of ``--model pixart`` (the default):

- T5-XXL text encoder: encode a CFG batch (prompt and negative prompt) of 2 x 120 tokens;
  float32, bfloat16, and int8 weight-only (``jaxgen.quantize``, bfloat16 compute);
- PixArt-XL-2 transformer: one denoising step, CFG batch 2, latents (2, res/8, res/8, 4), 120
  caption tokens, then the guidance combination;
- VAE (AutoencoderKL) decode of one latent to a res x res image.

The calls of ``--model kandinsky-2-2`` (the combined text-to-image pipeline, one image, guidance on),
float32 and bfloat16, each image size of ``--resolution`` (default 512 and 768):

- CLIP ViT-bigG image encoder: embed one black 224x224 image (the zero-image negative embedding);
- CLIP ViT-bigG text encoder with projection: encode 2 x 77 tokens (text_embeds and hidden states);
- PriorTransformer: one step on the 2 guidance rows (embedding 1280, 77 text tokens), then the guidance;
- UNet (2.2: image embeddings, no text): one step on 2 rows of (res/8, res/8, 4) latents, then the
  guidance on the epsilon half;
- MoVQ (VQModel) decode, not quantized, of one latent to a res x res image.

Its summary: the pipeline's peak when the image encoder is loaded alone, embeds the black image and is
freed before the other four load (max over the phases of the params resident then + the phase's
program beyond the params it reads), against all five resident (as diffusers keeps them), and the
headroom on a 16 GiB chip.

The calls of ``--model kandinsky-3`` (``Kandinsky3Pipeline``, one image, guidance on), each image size of
``--resolution`` (default 1024):

- Flan-UL2's T5 encoder (8.7B): encode the prompt row, 1 x 128 tokens (the unconditional half is zero
  embeddings with an all-zero mask: not encoded); float32, bfloat16, and int8 weight-only
  (``jaxgen.quantize``, bfloat16 compute);
- Kandinsky3UNet (3.06B): one step on the 2 rows [zeros; text] of (res/8, res/8, 4) latents with 128
  text tokens, then the guidance ``(g + 1) text - g uncond``; float32 and bfloat16;
- MoVQ (VQModel, 0.27B) decode of one latent to res x res (not quantized) and, for img2img, encode of one
  res x res image; float32 and bfloat16.

Its summary, in bfloat16, four loading plans for a 16 GiB chip: (a) the T5 (bf16), UNet and MoVQ all
resident; (b) the bf16 T5 loaded alone, encoding, freed before the UNet and MoVQ load; (c) the int8 T5
resident with the others; (d) the int8 T5 loaded alone then freed. For each, the peak of each phase
(text, denoise, decode, and img2img's encode: the params resident then + the phase's program beyond
the params it reads), the text-to-image and img2img peaks and their headroom.

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
    python benchmarks/memory.py --model kandinsky-2-2 --json benchmarks/memory-kandinsky22-cpu.json
    python benchmarks/memory.py --model kandinsky-3 --resolution 512 1024 --json benchmarks/memory-kandinsky3-cpu.json
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
KANDINSKY_22 = ("kandinsky-community__kandinsky-2-2-prior", "kandinsky-community__kandinsky-2-2-decoder")
CLIP_LEN = 77  # CLIP's tokenizer max length (the prior's text)
KANDINSKY_GUIDANCE = 4.0  # the combined pipeline's prior_guidance_scale and guidance_scale
KANDINSKY_3 = "kandinsky-community__kandinsky-3"
K3_TEXT_LEN = 128  # Kandinsky3Pipeline pads the prompt to 128 tokens (the UNet sees at most as many)
K3_GUIDANCE = 3.0  # (g + 1) text - g uncond = uncond + (g + 1) (text - uncond)
CHIP_BYTES = 16 * GIB


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


def _load(cls: Any, config_file: Path, dtype: Any) -> tuple[Any, dict, Any]:
    """``cls.from_config`` of a real config file -> (module, config dict, abstract params in ``dtype``)."""
    config = json.loads(config_file.read_text())
    module = cls.from_config(config, dtype=dtype)
    return module, config, _abstract_params(module, dtype)


def _row(component: str, call: str, dtype_name: str, params: Any, fn: Callable, *inputs: Any, **extra: Any) -> dict:
    """One table row: ``fn(params, *inputs)`` compiled on the abstract arguments. ``extra_bytes``: the
    program's peak beyond the params it reads (jit drops unused arguments, e.g. a VAE's encoder when it
    decodes, so peak - param_bytes would count them as freed); the inputs are assumed all read."""
    from jaxgen.quantize import param_bytes

    stats = _compile_stats(fn, params, *inputs)
    return {"component": component, "call": call, "dtype": dtype_name, **extra, "param_bytes": param_bytes(params),
            **stats, "extra_bytes": stats["peak_bytes"] - stats["argument_bytes"] + param_bytes(inputs)}


def _guided(prediction: Any, scale: float, channels: int | None = None) -> Any:
    """Classifier-free guidance on [uncond; cond] rows, in float32; ``channels``: the first ones of the
    last axis only (epsilon before a learned variance)."""
    import jax.numpy as jnp

    eps = (prediction if channels is None else prediction[..., :channels]).astype(jnp.float32)
    uncond, cond = jnp.split(eps, 2)
    return uncond + scale * (cond - uncond)


def _resident(rows: list[dict]) -> int:
    """Peak with every row's component resident: all their params, plus the largest program's
    inputs, outputs and temporaries (each phase's peak holds its own params; the others sit beside it)."""
    return sum(r["param_bytes"] for r in rows) + max(r["extra_bytes"] for r in rows)


def text_encoder_row(configs: Path, dtype_name: str) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxgen.models import T5EncoderModel

    quantized = dtype_name == "int8"
    dtype = jnp.float32 if dtype_name == "float32" else jnp.bfloat16
    module, _, params = _load(T5EncoderModel, configs / "text_encoder" / "config.json", dtype)
    if quantized:
        params = _abstract_params(module, dtype, quantized=True)
        module = module.clone(quantized=True)
    ids = jax.ShapeDtypeStruct((CFG_BATCH, TEXT_LEN), jnp.int32)
    return _row("text_encoder (T5-XXL)", f"encode {CFG_BATCH}x{TEXT_LEN} tokens",
                "int8 weights, bfloat16 compute" if quantized else dtype_name, params,
                lambda p, i, m: module.apply({"params": p}, i, m).last_hidden_state, ids, ids)


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

    dtype = jnp.dtype(dtype_name)
    module, config, params = _load(PixArtTransformer2DModel, configs / "transformer" / "config.json", dtype)
    side = resolution // 8
    s = jax.ShapeDtypeStruct
    latents = s((CFG_BATCH, side, side, config["in_channels"]), dtype)
    caption = s((CFG_BATCH, TEXT_LEN, config["caption_channels"]), dtype)
    mask = s((CFG_BATCH, TEXT_LEN), jnp.int32)
    timestep = s((CFG_BATCH,), jnp.int32)
    added = {"resolution": s((CFG_BATCH, 2), jnp.float32), "aspect_ratio": s((CFG_BATCH, 1), jnp.float32)}

    def step(p, x, c, t, a, m):  # learned sigma: the first half is epsilon
        return _guided(module.apply({"params": p}, x, c, t, a, encoder_attention_mask=m).sample, guidance_scale,
                       config["in_channels"])

    tokens = (side // config["patch_size"]) ** 2
    call = f"1 step, CFG batch {CFG_BATCH}, {side}x{side} latents ({tokens} tokens)"
    if attention == "splash":
        call += ", splash attention (flash; interpret-mode estimate off TPU)"
    with _forced_attention(attention):
        return _row("transformer (PixArt-XL-2)", call, dtype_name, params, step, latents, caption, timestep, added, mask)


def vae_row(configs: Path, dtype_name: str, resolution: int) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxgen.models import AutoencoderKL

    dtype = jnp.dtype(dtype_name)
    module, config, params = _load(AutoencoderKL, configs / "vae" / "config.json", dtype)
    z = jax.ShapeDtypeStruct((1, resolution // 8, resolution // 8, config["latent_channels"]), dtype)
    return _row("vae (AutoencoderKL)", f"decode 1 image {resolution}x{resolution}", dtype_name, params,
                lambda p, z: module.apply({"params": p}, z, method="decode").sample, z)


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
        # without the text encoder: prompt embeddings given, or encoded elsewhere
        out.append({"pipeline": label, "all_resident_peak_bytes": _resident([t5, tr, vae]),
                    "without_text_encoder_peak_bytes": _resident([tr, vae])})
    return out


def kandinsky_row(component: str, prior_dir: Path, decoder_dir: Path, dtype_name: str,
                  resolution: int | None = None) -> dict:
    """One call of Kandinsky 2.2's combined text-to-image pipeline (one image, guidance on: 2 rows),
    as its pipelines make it; ``resolution``: the image size (the UNet's and the MoVQ's calls)."""
    import jax
    import jax.numpy as jnp

    from jaxgen.models import PriorTransformer, UNet2DConditionModel, VQModel
    from jaxgen.text.clip import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    dtype, f32, i32, s = jnp.dtype(dtype_name), jnp.float32, jnp.int32, jax.ShapeDtypeStruct
    movq_config = json.loads((decoder_dir / "movq" / "config.json").read_text())
    factor = 2 ** (len(movq_config["block_out_channels"]) - 1)
    side = None if resolution is None else -(-resolution // factor**2) * factor  # the pipelines' latent_size
    cls, folder = {"image_encoder": (CLIPVisionModelWithProjection, prior_dir), "prior": (PriorTransformer, prior_dir),
                   "text_encoder": (CLIPTextModelWithProjection, prior_dir), "unet": (UNet2DConditionModel, decoder_dir),
                   "movq": (VQModel, decoder_dir)}[component]
    module, config, params = _load(cls, folder / component / "config.json", dtype)
    if component == "image_encoder":  # prior pipeline's _image_embeds
        size = config["image_size"]
        label, call = "CLIP ViT-bigG vision", f"embed 1 black {size}x{size} image (the zero-image negative)"
        fn = lambda p, x: module.apply({"params": p}, x.astype(dtype)).image_embeds.astype(f32)
        inputs = (s((1, size, size, config["num_channels"]), f32),)
    elif component == "text_encoder":  # encode_texts(..., outputs=("text_embeds", "last_hidden_state"), use_mask=False)
        label, call = "CLIP ViT-bigG text, projection", f"encode {CFG_BATCH}x{CLIP_LEN} tokens"
        fn = lambda p, i: (lambda o: (o.text_embeds, o.last_hidden_state))(module.apply({"params": p}, i))
        inputs = (s((CFG_BATCH, CLIP_LEN), i32),)
    elif component == "prior":  # PriorDenoiser.predict, then the guidance
        dim, tokens = config["embedding_dim"], config["num_embeddings"]
        label, call = "PriorTransformer", f"1 step, CFG batch {CFG_BATCH}, embedding {dim}, {tokens} text tokens"
        fn = lambda p, x, t, e, h, m: _guided(
            module.apply({"params": p}, x.astype(dtype), t, e, h, m).predicted_image_embedding, KANDINSKY_GUIDANCE)
        inputs = (s((CFG_BATCH, dim), f32), s((CFG_BATCH,), i32), s((CFG_BATCH, dim), dtype),
                  s((CFG_BATCH, tokens, dim), dtype), s((CFG_BATCH, tokens), i32))
    elif component == "unet":  # KandinskyDenoiser.predict (2.2: image_embeds, no encoder_hidden_states), the guidance
        channels = movq_config["latent_channels"]
        label = "Kandinsky 2.2 UNet2DConditionModel"
        call = f"1 step, CFG batch {CFG_BATCH}, {side}x{side} latents ({resolution}x{resolution}), image_embeds only"
        fn = lambda p, x, t, e: _guided(
            module.apply({"params": p}, x, t, None, added_cond_kwargs={"image_embeds": e}).sample, KANDINSKY_GUIDANCE,
            channels)
        inputs = (s((CFG_BATCH, side, side, channels), f32), s((CFG_BATCH,), i32),
                  s((CFG_BATCH, config["encoder_hid_dim"]), dtype))
    else:  # decode_movq
        label, call = "MoVQ VQModel", f"decode 1 image {resolution}x{resolution}, not quantized"
        fn = lambda p, z: module.apply({"params": p}, z.astype(dtype), force_not_quantize=True,
                                       method="decode").sample.astype(f32)
        inputs = (s((1, side, side, config["latent_channels"]), f32),)
    count = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
    return _row(f"{component} ({label}, {count / 1e9:.2f}B)", call, dtype_name, params, fn, *inputs,
                resolution=resolution, param_count=count)


def kandinsky_summary(rows: list[dict]) -> list[dict]:
    """Kandinsky 2.2 text-to-image peaks per dtype and image size: the image encoder loaded alone (its
    zero-image embedding), freed, then the text encoder, prior, UNet and MoVQ resident through phases
    1-4; against all five resident (diffusers keeps them); and the headroom on a 16 GiB chip."""
    out = []
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        for resolution in sorted({r["resolution"] for r in rows if r["resolution"] is not None}):
            pick = {r["component"].split()[0]: r for r in rows
                    if r["dtype"] == dtype and r["resolution"] in (None, resolution)}
            names = ["image_encoder", "text_encoder", "prior", "unet", "movq"]
            if not all(n in pick for n in names):
                continue
            loaded = [pick[n] for n in names[1:]]
            params = sum(r["param_bytes"] for r in loaded)
            phases = {"image_encoder": _resident([pick["image_encoder"]]),
                      **{n: params + pick[n]["extra_bytes"] for n in names[1:]}}
            peak, naive = max(phases.values()), _resident([pick[n] for n in names])
            out.append({"dtype": dtype, "resolution": resolution, "phase_peak_bytes": phases,
                        "peak_bytes": peak, "peak_phase": max(phases, key=phases.get), "all_resident_peak_bytes": naive,
                        "headroom_16_gib_bytes": CHIP_BYTES - peak, "all_resident_headroom_16_gib_bytes": CHIP_BYTES - naive})
    return out


def kandinsky3_row(component: str, folder: Path, dtype_name: str, resolution: int | None = None) -> dict:
    """One call of Kandinsky 3's pipeline (``Kandinsky3Pipeline``, one image, guidance on): ``component`` is
    "text_encoder" (Flan-UL2's T5 encoder on the 1 prompt row of 128 tokens: the unconditional row is zero
    embeddings, not encoded; ``dtype_name`` "int8": int8 weights, bfloat16 compute), "unet" (one step on
    the 2 rows [zeros; text], latents (2, res/8, res/8, 4) float32 as the loop carries them, 128 tokens,
    then the guidance), "movq" (decode of one latent to res x res, not quantized) or "movq_encode" (one
    res x res image to latents: img2img)."""
    import jax
    import jax.numpy as jnp

    from jaxgen.models import VQModel
    from jaxgen.models.kandinsky3_unet import Kandinsky3UNet
    from jaxgen.text.t5 import T5EncoderModel

    quantized = dtype_name == "int8"
    dtype, f32, i32, s = (jnp.bfloat16 if quantized else jnp.dtype(dtype_name)), jnp.float32, jnp.int32, jax.ShapeDtypeStruct
    cls, sub = {"text_encoder": (T5EncoderModel, "text_encoder"), "unet": (Kandinsky3UNet, "unet"),
                "movq": (VQModel, "movq"), "movq_encode": (VQModel, "movq")}[component]
    module, config, params = _load(cls, folder / sub / "config.json", dtype)
    factor = 2 ** (len(json.loads((folder / "movq" / "config.json").read_text())["block_out_channels"]) - 1)
    side = None if resolution is None else -(-resolution // factor**2) * factor  # downscale_height_and_width
    count = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))  # before quantization
    if component == "text_encoder":
        if quantized:
            params, module = _abstract_params(module, dtype, quantized=True), module.clone(quantized=True)
        label, call = "Flan-UL2 T5 encoder", f"encode 1x{K3_TEXT_LEN} tokens (the prompt row)"
        fn = lambda p, i, m: module.apply({"params": p}, i, m).last_hidden_state
        inputs = (s((1, K3_TEXT_LEN), i32), s((1, K3_TEXT_LEN), i32))
    elif component == "unet":
        label = "Kandinsky3UNet"
        call = f"1 step, CFG batch {CFG_BATCH}, {side}x{side} latents ({resolution}x{resolution}), {K3_TEXT_LEN} tokens"
        fn = lambda p, x, t, e, m: _guided(module.apply({"params": p}, x.astype(dtype), t, e, m).sample, K3_GUIDANCE + 1)
        inputs = (s((CFG_BATCH, side, side, config["in_channels"]), f32), s((CFG_BATCH,), i32),
                  s((CFG_BATCH, K3_TEXT_LEN, config["encoder_hid_dim"]), dtype), s((CFG_BATCH, K3_TEXT_LEN), i32))
    elif component == "movq":  # decode_movq
        label, call = "MoVQ VQModel", f"decode 1 image {resolution}x{resolution}, not quantized"
        fn = lambda p, z: module.apply({"params": p}, z.astype(dtype), force_not_quantize=True,
                                       method="decode").sample.astype(f32)
        inputs = (s((1, side, side, config["latent_channels"]), f32),)
    else:  # encode_movq
        label, call = "MoVQ VQModel", f"encode 1 image {resolution}x{resolution} (img2img)"
        fn = lambda p, x: module.apply({"params": p}, x.astype(dtype), method="encode").latents.astype(f32)
        inputs = (s((1, resolution, resolution, config["in_channels"]), f32),)
    return _row(f"{component} ({label}, {count / 1e9:.2f}B)", call,
                "int8 weights, bfloat16 compute" if quantized else dtype_name, params, fn, *inputs,
                resolution=resolution, param_count=count)


# Kandinsky 3's loading plans: (name, the T5's dtype row, where the T5 is: "resident" with the UNet and MoVQ from
# the start; "alone": loaded alone and freed before the UNet and MoVQ load; "visiting": in host memory, placed
# next to the resident UNet and MoVQ for the text phase only (jaxgen's ``text_encoder_offload``))
K3_PLANS = (("a: all resident, T5 bf16", "bfloat16", "resident"), ("b: T5 bf16 alone, freed", "bfloat16", "alone"),
            ("c: all resident, T5 int8", "int8 weights, bfloat16 compute", "resident"),
            ("d: T5 int8 alone, freed", "int8 weights, bfloat16 compute", "alone"),
            ("e: T5 bf16 visiting (jaxgen default, 24-40 GiB chips)", "bfloat16", "visiting"),
            ("f: T5 int8 visiting (jaxgen default, 16 GiB chips)", "int8 weights, bfloat16 compute", "visiting"))


def kandinsky3_summary(rows: list[dict]) -> list[dict]:
    """Kandinsky 3 peaks in bfloat16 per image size and loading plan (``K3_PLANS``): per phase (text, img2img's
    encode, denoise, decode) the params resident then + the phase's program beyond the params it reads;
    text-to-image's peak (text, denoise, decode), img2img's (the encode too), the headroom on 16 GiB."""
    out = []
    for resolution in sorted({r["resolution"] for r in rows if r["resolution"] is not None}):
        pick = {(r["component"].split()[0], r["dtype"]): r for r in rows if r["resolution"] in (None, resolution)}
        unet, movq, encode = (pick.get((n, "bfloat16")) for n in ("unet", "movq", "movq_encode"))
        for plan, t5_dtype, where in K3_PLANS:
            t5 = pick.get(("text_encoder", t5_dtype))
            if not (t5 and unet and movq):
                continue
            later = unet["param_bytes"] + movq["param_bytes"] + (t5["param_bytes"] if where == "resident" else 0)
            text = {"resident": later, "alone": t5["param_bytes"], "visiting": later + t5["param_bytes"]}[where]
            phases = {"text": text + t5["extra_bytes"],
                      "denoise": later + unet["extra_bytes"], "decode": later + movq["extra_bytes"]}
            if encode:
                phases["encode"] = later + encode["extra_bytes"]
            t2i = max(v for k, v in phases.items() if k != "encode")
            img2img = max(phases.values())
            out.append({"plan": plan, "dtype": "bfloat16", "t5": t5_dtype, "resolution": resolution,
                        "phase_peak_bytes": phases, "peak_bytes": t2i, "peak_phase": max(phases, key=phases.get),
                        "img2img_peak_bytes": img2img, "headroom_16_gib_bytes": CHIP_BYTES - t2i,
                        "img2img_headroom_16_gib_bytes": CHIP_BYTES - img2img})
    return out


def pixart_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for component in args.components:
        for dtype in args.dtypes:
            if dtype == "int8" and component != "text_encoder":
                continue
            if component == "text_encoder":
                row = text_encoder_row(args.configs, dtype)
            elif component == "transformer":
                row = transformer_row(args.configs, dtype, args.resolution[0])
            else:
                row = vae_row(args.configs, dtype, args.resolution[0])
            print(f"# {row['component']} {row['dtype']}: compiled in {row['compile_s']} s", file=sys.stderr, flush=True)
            rows.append(row)
    if "transformer" in args.components and not args.no_flash_estimate:
        dtype = "bfloat16" if "bfloat16" in args.dtypes else args.dtypes[0]
        rows.append(transformer_row(args.configs, dtype, args.resolution[0], attention="splash"))
    return rows


def kandinsky_rows(args: argparse.Namespace) -> list[dict]:
    prior_dir, decoder_dir = (args.configs / name for name in KANDINSKY_22)
    rows = []
    for component in args.components:
        for dtype in args.dtypes:
            for resolution in args.resolution if component in ("unet", "movq") else [None]:
                rows.append(kandinsky_row(component, prior_dir, decoder_dir, dtype, resolution))
                print(f"# {rows[-1]['component']} {dtype} {resolution or ''}: compiled in {rows[-1]['compile_s']} s",
                      file=sys.stderr, flush=True)
    return rows


def kandinsky3_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for component in args.components:
        for dtype in args.dtypes:
            if dtype == "int8" and component != "text_encoder":
                continue
            for resolution in [None] if component == "text_encoder" else args.resolution:
                rows.append(kandinsky3_row(component, args.configs / KANDINSKY_3, dtype, resolution))
                print(f"# {rows[-1]['component']} {dtype} {resolution or ''}: compiled in {rows[-1]['compile_s']} s",
                      file=sys.stderr, flush=True)
    return rows


def print_kandinsky3_summary(summary: list[dict]) -> None:
    print("\nbfloat16 peak GiB of each phase with what is resident then (params + the phase's program beyond the params "
          "it reads; text: the T5 on the prompt row; encode: img2img's MoVQ encode):\n")
    print("| plan | image | text | denoise | decode | encode | text-to-image peak GiB | 16 GiB chip: headroom GiB "
          "| img2img peak GiB | img2img headroom GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        phases = " | ".join(_gib(s["phase_peak_bytes"].get(k)) for k in ("text", "denoise", "decode", "encode"))
        print(f"| {s['plan']} | {s['resolution']}x{s['resolution']} | {phases} | {s['peak_bytes'] / GIB:.2f} | "
              f"{s['headroom_16_gib_bytes'] / GIB:.2f} | {s['img2img_peak_bytes'] / GIB:.2f} | "
              f"{s['img2img_headroom_16_gib_bytes'] / GIB:.2f} |")


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def print_pixart_summary(summary: list[dict]) -> None:
    print("\n| pipeline dtype | peak GiB, all components resident | peak GiB after the text encoder is dropped |")
    print("|---|---|---|")
    for s in summary:
        print(f"| {s['pipeline']} | {s['all_resident_peak_bytes'] / GIB:.2f} | {s['without_text_encoder_peak_bytes'] / GIB:.2f} |")


def print_kandinsky_summary(summary: list[dict]) -> None:
    print("\nPeak GiB of each phase with what is resident then (phase 0: the image encoder alone; 1-4: text encoder,"
          " prior, UNet and MoVQ params + the phase's program beyond the params it reads):\n")
    print("| dtype | image | 0 image encoder | 1 text encoder | 2 prior | 3 unet | 4 movq | peak GiB | 16 GiB chip: "
          "headroom GiB | naive, all five resident GiB | naive headroom GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summary:
        phases = " | ".join(f"{v / GIB:.2f}" for v in s["phase_peak_bytes"].values())
        print(f"| {s['dtype']} | {s['resolution']}x{s['resolution']} | {phases} | {s['peak_bytes'] / GIB:.2f} | "
              f"{s['headroom_16_gib_bytes'] / GIB:.2f} | {s['all_resident_peak_bytes'] / GIB:.2f} | "
              f"{s['all_resident_headroom_16_gib_bytes'] / GIB:.2f} |")


# model: (configs, resolutions, components, dtypes, rows, summary, print summary, title, JSON head)
MODELS = {
    "pixart": (DEFAULT_CONFIGS, [1024], ["text_encoder", "transformer", "vae"], ["float32", "bfloat16", "int8"],
               pixart_rows, pipeline_summary, print_pixart_summary,
               lambda a: f"PixArt-α components ({a.configs.name}), {a.resolution[0]}x{a.resolution[0]}",
               lambda a: {"resolution": a.resolution[0], "text_len": TEXT_LEN, "cfg_batch": CFG_BATCH,
                          "configs": a.configs.name}),
    "kandinsky-2-2": (REPO / "tests" / "configs", [512, 768], ["image_encoder", "text_encoder", "prior", "unet", "movq"],
                      ["float32", "bfloat16"], kandinsky_rows, kandinsky_summary, print_kandinsky_summary,
                      lambda a: f"Kandinsky 2.2 text-to-image ({', '.join(KANDINSKY_22)}), 1 image, guidance on, "
                                f"{' and '.join(f'{r}x{r}' for r in a.resolution)}",
                      lambda a: {"model": "kandinsky-2-2", "resolutions": a.resolution, "text_len": CLIP_LEN,
                                 "cfg_batch": CFG_BATCH, "configs": list(KANDINSKY_22), "chip_bytes": CHIP_BYTES}),
    "kandinsky-3": (REPO / "tests" / "configs", [1024], ["text_encoder", "unet", "movq", "movq_encode"],
                    ["float32", "bfloat16", "int8"], kandinsky3_rows, kandinsky3_summary, print_kandinsky3_summary,
                    lambda a: f"Kandinsky 3 ({KANDINSKY_3}), 1 image, guidance on, "
                              f"{' and '.join(f'{r}x{r}' for r in a.resolution)}",
                    lambda a: {"model": "kandinsky-3", "resolutions": a.resolution, "text_len": K3_TEXT_LEN,
                               "cfg_batch": CFG_BATCH, "guidance_scale": K3_GUIDANCE, "configs": KANDINSKY_3,
                               "chip_bytes": CHIP_BYTES}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="pixart")
    parser.add_argument("--configs", type=Path, default=None,
                        help="pixart: the model's folder (default the 1024-MS configs); kandinsky-2-2, kandinsky-3: "
                             "the folder holding the 2.2 prior and decoder folders, or the kandinsky-3 folder "
                             "(default tests/configs)")
    parser.add_argument("--resolution", type=int, nargs="+", default=None,
                        help="image size: pixart one (default 1024), kandinsky-2-2 one or more (default 512 768), "
                             "kandinsky-3 one or more (default 1024)")
    parser.add_argument("--components", nargs="+", default=None,
                        help="pixart: text_encoder transformer vae; kandinsky-2-2: image_encoder text_encoder prior "
                             "unet movq; kandinsky-3: text_encoder unet movq movq_encode (default all)")
    parser.add_argument("--dtypes", nargs="+", default=None,
                        help="float32, bfloat16 (default both), int8 for pixart's and kandinsky-3's text encoder only "
                             "(weight-only, bfloat16 compute; their default includes it)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-flash-estimate", action="store_true",
                        help="pixart: skip the transformer row with splash (flash) attention instead of XLA's")
    parser.add_argument("--concurrency-scheduler", action="store_true",
                        help="keep XLA:CPU's default concurrency-optimised scheduler (more memory)")
    args = parser.parse_args()
    configs, resolutions, components, dtypes, rows_of, summarise, print_summary, title, json_head = MODELS[args.model]
    args.configs = args.configs or configs
    args.resolution = args.resolution or resolutions
    args.components = args.components or components
    args.dtypes = args.dtypes or dtypes
    if unknown := set(args.components) - set(components):
        parser.error(f"--model {args.model} has no components {sorted(unknown)}; it has {components}")
    if unknown := set(args.dtypes) - set(dtypes):
        parser.error(f"--model {args.model} takes --dtypes among {dtypes}, not {sorted(unknown)}")
    if args.model == "pixart" and len(args.resolution) != 1:
        parser.error("--model pixart takes one --resolution")

    flags = os.environ.get("XLA_FLAGS", "")
    if not args.concurrency_scheduler and "concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_enable_concurrency_optimized_scheduler=false".strip()
    import jax

    rows = rows_of(args)
    device = jax.devices()[0]
    print(f"{title(args)}; memory analysis of the compiled programs on {device.platform} ({platform.machine()}), "
          f"jax {jax.__version__}"
          + (", XLA:CPU concurrency-optimised scheduler off" if "scheduler=false" in os.environ.get("XLA_FLAGS", "") else "")
          + "\n")
    print("| component | call | dtype | params GiB | temp GiB | peak GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['component']} | {r['call']} | {r['dtype']} | {r['param_bytes'] / GIB:.2f} | "
              f"{r['temp_bytes'] / GIB:.2f} | {r['peak_bytes'] / GIB:.2f} |")
    summary = summarise(rows)
    if summary:
        print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps({
            **json_head(args), "backend": device.platform, "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "rows": rows, "pipeline": summary,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
