"""DeepFloyd IF speed and memory: jaxgen against diffusers (PyTorch) on the real-size UNets.

Random weights (speed does not depend on their values), same machine, one run. Measures seconds
per denoising step of stage I (IF-I-XL, 4.3B) and stage II (an IF-II-L-like 1.2B UNet: the real
IF-II-L config is not available, see ``if_ii_l_like_config``), each step being the UNet on a
classifier-free-guidance batch of 2 (T5 embeddings (2, 77, 4096)), the guidance on the epsilon half
and the DDPM learned-range step with dynamic thresholding, as diffusers' IF pipelines run it. jaxgen
runs the loop its IF pipelines ship: ``jaxgen.pipelines.sampling.denoise`` with the ``IFDenoiser``
adapter and classifier-free guidance, the jitted function and static arguments the pipelines pass
(``shipping_loop``), compiled ahead (compile time reported apart; the step count is traced, so the
one-step warm-up runs the timed program); diffusers runs its UNet2DConditionModel + DDPMScheduler
loop. Each side builds, runs and frees its copy before the other builds its own (IF-I-XL is 17 GB
in float32). FLOPs per step are read from the compiled program (``cost_analysis``) and compared
with the floor: those FLOPs at the best rate of a large matmul on this machine (JAX's or PyTorch's,
whichever is faster).

Peak memory of the whole cascade in bfloat16 (T5-XXL, stage I, stage II, the x4 upscaler's CLIP
text encoder, UNet and VAE, IF's safety checker) without allocating it: param bytes from
``param_shapes()`` plus XLA's buffer assignment (``memory_analysis()``) of each call compiled on
abstract arguments at the native sizes; then what a 16 GiB chip needs with everything resident,
with T5 freed after encoding (``text_encoder=None``), with int8 T5, and with T5 split over a
``model`` mesh axis (``jaxgen.sharding.make_mesh(model=n)``).

XLA:CPU's default concurrency-optimised scheduler converts every bfloat16 kernel far ahead of use
(12 GiB of temporaries for one IF-I-XL step); this script turns it off
(``--xla_cpu_enable_concurrency_optimized_scheduler=false`` unless XLA_FLAGS sets it), for the
timings too, so that a bfloat16 stage I fits this machine. Prints Markdown tables and writes JSON.

    python benchmarks/if.py --json benchmarks/if-cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import _abstract_params as _abstract, _compile_stats, _flops  # noqa: E402  (shared helpers)
from pixart import matmul_rate, torch_matmul_rate  # noqa: E402
from random_weights import jax_random_params, torch_random_module  # noqa: E402

CONFIGS = REPO / "tests" / "configs"
IF_I = CONFIGS / "DeepFloyd__IF-I-XL-v1.0"
IF_II = CONFIGS / "DeepFloyd__IF-II-L-v1.0"
UPSCALER = CONFIGS / "stabilityai__stable-diffusion-x4-upscaler"
GIB = 2**30
CHIP_BYTES = 16 * GIB
TEXT_LEN = 77  # IF's and the upscaler's max_length
CFG_BATCH = 2
IF_II_LABEL = "reconstructed IF-II-L-like (1.2B) config, not the real one"


def _timed_cpu(fn: Callable) -> tuple[float, float]:
    """Wall seconds of ``fn()`` and the cores this process kept busy meanwhile (CPU seconds / wall seconds):
    below the machine's core count when other work shared the machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu / wall


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def if_ii_l_like_config() -> dict:
    """A stage-II UNet config (diffusers config.json keys) rebuilt from what is known of IF-II-L.

    Known (tests/configs/README.md, "Gaps and caveats" 1; diffusers' scripts/convert_if.py):
    5 levels of ResnetDownsample / SimpleCrossAttn blocks, layers_per_block [2, 2, 3, 5, 5],
    class_embed_type "timestep" (noise level), addition_embed_type "text", encoder_hid_dim 4096,
    time_embedding_dim = the last level's width, gelu time-embedding activation, resnet_skip_time_act,
    output scale factors 1/0.7071, only_cross_attention. Chosen here (unknown): block_out_channels
    128 x (1, 2, 4, 8, 10) = 1.185B parameters (IF-II-L's published count is 1.2B), attention at the
    two coarsest levels, cross_attention_dim = the last level's width, 64-channel heads.
    """
    channels = [128, 256, 512, 1024, 1280]
    attention = (False, False, False, True, True)
    down = ["SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attention]
    up = ["SimpleCrossAttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attention)]
    return {
        "_class_name": "UNet2DConditionModel", "_note": IF_II_LABEL,
        "sample_size": 256, "in_channels": 6, "out_channels": 6, "block_out_channels": channels,
        "layers_per_block": [2, 2, 3, 5, 5], "down_block_types": down, "up_block_types": up,
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "act_fn": "gelu", "attention_head_dim": 64,
        "cross_attention_dim": channels[-1], "encoder_hid_dim": 4096, "addition_embed_type": "text",
        "addition_embed_type_num_heads": 64, "cross_attention_norm": "group_norm",
        "resnet_time_scale_shift": "scale_shift", "class_embed_type": "timestep",
        "time_embedding_dim": channels[-1], "time_embedding_act_fn": "gelu", "resnet_skip_time_act": True,
        "resnet_out_scale_factor": 1 / 0.7071, "mid_block_scale_factor": 1 / 0.7071, "only_cross_attention": True,
    }


@dataclasses.dataclass(frozen=True)
class Stage:
    """One IF stage: its UNet config (diffusers keys), scheduler config and guidance scale.
    ``noise_level``: stage II's (the low-res image joins the sample, the noise level is the class label)."""

    name: str
    label: str
    unet: dict
    scheduler: dict
    guidance: float
    noise_level: int | None = None


def stages(tiny: bool = False) -> dict[str, Stage]:
    """The two stages; ``tiny``: with tiny IF-like UNets (the tests' configs) instead, a smoke test."""
    strip = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}
    out = {
        "I": Stage("stage I", "IF-I-XL (4.3B), real config", strip(_read(IF_I / "unet" / "config.json")),
                   strip(_read(IF_I / "scheduler" / "scheduler_config.json")), guidance=7.0),
        "II": Stage("stage II", IF_II_LABEL, strip(if_ii_l_like_config()),
                    strip(_read(IF_II / "scheduler" / "scheduler_config.json")), guidance=4.0, noise_level=250),
    }
    if tiny:
        from jaxgen.models.unet_2d_condition import UNet2DConditionModelConfig

        unet_ii = UNet2DConditionModelConfig.tiny(  # as tests/test_unet_2d_condition.py's IF_II
            in_channels=6, out_channels=6, layers_per_block=(1, 1, 2), class_embed_type="timestep",
            only_cross_attention=True, time_embedding_dim=32, time_embedding_act_fn="gelu", resnet_skip_time_act=True,
            resnet_out_scale_factor=1 / 0.7071, mid_block_scale_factor=1 / 0.7071)
        tiny_unets = {"I": UNet2DConditionModelConfig.tiny(), "II": unet_ii}
        out = {k: dataclasses.replace(v, label=f"tiny {k}-like test config", unet=tiny_unets[k].to_dict())
               for k, v in out.items()}
    return out


# ----------------------------------------------------------------------------- IF's sampling loop, jaxgen


def shipping_loop(unet: Any, scheduler: Any) -> tuple[tuple, dict]:
    """``sampling.denoise``'s static arguments as IF's pipelines pass them (``_IFPipelineBase._sample``
    through ``DiffusionPipeline.denoise``): ``(IFDenoiser(unet), scheduler)`` to lead the call, and
    classifier-free guidance and ``eta`` (None: DDPM's ``step`` takes none) as keywords. Left at their
    defaults: the progress bar (a host callback per step, on unless disabled) and the rows' mesh
    sharding (``batch_sharding``: a no-op constraint on one device)."""
    from jaxgen.pipelines import sampling
    from jaxgen.pipelines.deepfloyd_if import IFDenoiser

    eta = 0.0 if sampling.accepts(scheduler.step, "eta") else None
    return (IFDenoiser(unet), scheduler), {"guidance": sampling.ClassifierFreeGuidance(), "eta": eta}


def _jaxgen_inputs(stage: Stage, resolution: int, dtype: Any, abstract: bool = False) -> tuple[Any, dict]:
    """The images (1, H, W, 3) float32 and ``cond`` as ``_IFPipelineBase._sample`` lays it out for one
    image with guidance (``guidance_rows``: [uncond; cond] rows): ``encoder_hidden_states`` (2, 77, D)
    in the UNet's dtype, and for stage II ``extra_channels`` (2, H, W, 3) float32 (the noised upscaled
    image, the same in both rows) and ``class_labels`` (2,) int32 (the noise level)."""
    import jax
    import jax.numpy as jnp

    noise = lambda shape, k: jax.random.normal(jax.random.key(k), shape, jnp.float32)
    x = noise((1, resolution, resolution, 3), 1)
    cond = {"encoder_hidden_states": noise((CFG_BATCH, TEXT_LEN, stage.unet["encoder_hid_dim"]), 2).astype(dtype)}
    if stage.noise_level is not None:
        cond["extra_channels"] = jnp.concatenate([noise((1, resolution, resolution, 3), 3)] * CFG_BATCH)
        cond["class_labels"] = jnp.full((CFG_BATCH,), stage.noise_level, jnp.int32)
    if abstract:
        x, cond = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (x, cond))
    return x, cond


def bench_jaxgen(stage: Stage, resolution: int, dtype_name: str, steps: int) -> dict:
    """``sampling.denoise`` as IF's pipelines call it, compiled ahead (``lower().compile()``: compile
    time, FLOPs, temporaries), warmed up with one step (the step count is traced: the same program),
    then timed over ``steps`` steps."""
    import jax
    import jax.numpy as jnp

    from jaxgen.models import UNet2DConditionModel
    from jaxgen.pipelines import sampling
    from jaxgen.schedulers import DDPMScheduler

    dtype = jnp.dtype(dtype_name)
    unet = UNet2DConditionModel.from_config(stage.unet, dtype=dtype)
    scheduler = DDPMScheduler.from_config(stage.scheduler)
    init_s = time.perf_counter()
    params = jax.block_until_ready(jax_random_params(unet, dtype))
    init_s = time.perf_counter() - init_s
    x, cond = _jaxgen_inputs(stage, resolution, dtype)
    static, options = shipping_loop(unet, scheduler)
    args = (params, x, scheduler.set_timesteps(steps), cond, jnp.float32(stage.guidance), jax.random.key(4))
    start = time.perf_counter()
    compiled = sampling.denoise.lower(*static, *args, jnp.int32(steps), **options).compile()
    compile_s = time.perf_counter() - start
    compiled(*args, jnp.int32(1)).block_until_ready()  # warm-up
    loop_s, cores = _timed_cpu(lambda: compiled(*args, jnp.int32(steps)).block_until_ready())
    out = {"step_s": loop_s / steps, "cores_busy": cores, "compile_s": compile_s, "init_s": init_s,
           "flops_per_step": _flops(compiled),  # XLA's cost analysis counts a loop body once
           "temp_bytes": int(compiled.memory_analysis().temp_size_in_bytes)}
    del params, args, compiled
    gc.collect()
    return out


def bench_diffusers(stage: Stage, resolution: int, dtype_name: str, steps: int) -> dict:
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    start = time.perf_counter()
    unet = torch_random_module(lambda: UNet2DConditionModel.from_config(stage.unet), dtype)
    init_s = time.perf_counter() - start
    scheduler = DDPMScheduler.from_config(stage.scheduler)
    x0 = torch.randn(1, 3, resolution, resolution)
    embeds = torch.randn(CFG_BATCH, TEXT_LEN, stage.unet["encoder_hid_dim"]).to(dtype)
    upscaled = torch.randn(1, 3, resolution, resolution)
    noise_level = None if stage.noise_level is None else torch.full((CFG_BATCH,), stage.noise_level)
    generator = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def loop(n: int):  # diffusers' IFPipeline / IFSuperResolutionPipeline denoising loop
        scheduler.set_timesteps(n)
        x = x0.clone()
        for t in scheduler.timesteps:
            sample = x if noise_level is None else torch.cat([x, upscaled], dim=1)
            model_input = scheduler.scale_model_input(torch.cat([sample, sample]), t)
            out = unet(model_input.to(dtype), t, encoder_hidden_states=embeds, class_labels=noise_level,
                       return_dict=False)[0].float()
            uncond, text = out.chunk(2)
            uncond, _ = uncond.split(x.shape[1], dim=1)
            text, variance = text.split(x.shape[1], dim=1)
            eps = uncond + stage.guidance * (text - uncond)
            x = scheduler.step(torch.cat([eps, variance], dim=1), t, x, generator=generator, return_dict=False)[0]
        return x

    loop(1)  # warm-up
    loop_s, cores = _timed_cpu(lambda: loop(steps))
    del unet
    gc.collect()
    return {"step_s": loop_s / steps, "cores_busy": cores, "init_s": init_s}


# ----------------------------------------------------------------------------- memory of the cascade


def _row(component: str, call: str, module: Any, params: Any, fn: Callable, *args: Any, dtype: str = "bfloat16") -> dict:
    import jax

    from jaxgen.quantize import param_bytes

    row = {"component": component, "call": call, "dtype": dtype, "param_bytes": param_bytes(params),
           "params": sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)),
           **_compile_stats(fn, params, *args)}
    row["model_split_bytes"] = _split_bytes(module, params)
    print(f"# memory: {component} ({call}) compiled in {row['compile_s']} s", file=sys.stderr, flush=True)
    return row


def _split_bytes(module: Any, params: Any) -> int:
    """Bytes of the params that ``jaxgen.sharding``'s rules split over the ``model`` axis (the rest replicate)."""
    import jax
    import jax.numpy as jnp

    from jaxgen.sharding import param_logical_axes

    axes = param_logical_axes(module, params)
    leaves, tree = jax.tree_util.tree_flatten(params)
    total = 0
    for leaf, ax in zip(leaves, tree.flatten_up_to(axes)):
        if any(a in ("heads", "mlp") for a in ax):
            total += int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize
    return total


def memory_rows(stage_ii_resolution: int = 256) -> list[dict]:
    """Every call of the bfloat16 cascade at its native size, compiled on abstract params."""
    import jax
    import jax.numpy as jnp

    from jaxgen.models import AutoencoderKL, CLIPTextModel, IFSafetyChecker, T5EncoderModel, UNet2DConditionModel
    from jaxgen.models.autoencoder_kl import tile_sizes
    from jaxgen.pipelines import sampling
    from jaxgen.pipelines.pipeline_utils import decode_latents, decode_latents_tiled
    from jaxgen.pipelines.stable_diffusion_upscale import UpscaleDenoiser
    from jaxgen.schedulers import DDIMScheduler, DDPMScheduler

    bf16 = jnp.bfloat16
    s = jax.ShapeDtypeStruct
    ids = s((CFG_BATCH, TEXT_LEN), jnp.int32)
    key = jax.random.key(0)
    rows = []

    t5 = T5EncoderModel.from_config(_read(IF_I / "text_encoder" / "config.json"), dtype=bf16)
    encode = lambda m: (lambda p, i, k: m.apply({"params": p}, i, k).last_hidden_state)
    rows.append(_row("text_encoder (T5-XXL)", f"encode {CFG_BATCH}x{TEXT_LEN} tokens", t5, _abstract(t5, bf16),
                     encode(t5), ids, ids))
    t5q = t5.clone(quantized=True)
    rows.append(_row("text_encoder (T5-XXL)", f"encode {CFG_BATCH}x{TEXT_LEN} tokens", t5q, _abstract(t5, bf16, True),
                     encode(t5q), ids, ids, dtype="int8 weights, bfloat16 compute"))

    for key_name, resolution in (("I", 64), ("II", stage_ii_resolution)):
        stage = stages()[key_name]
        unet = UNet2DConditionModel.from_config(stage.unet, dtype=bf16)
        scheduler = DDPMScheduler.from_config(stage.scheduler)
        x, cond = _jaxgen_inputs(stage, resolution, bf16, abstract=True)
        static, options = shipping_loop(unet, scheduler)
        rows.append(_row(f"{stage.name} unet ({stage.label})",
                         f"sampling loop (FLOPs: 1 step), CFG batch {CFG_BATCH}, {resolution}x{resolution}",
                         unet, _abstract(unet, bf16), functools.partial(sampling.denoise, *static, **options),
                         x, scheduler.set_timesteps(1), cond, jnp.float32(stage.guidance), key, jnp.int32(1)))

    clip = CLIPTextModel.from_config(_read(UPSCALER / "text_encoder" / "config.json"), dtype=bf16)
    rows.append(_row("stage III text_encoder (CLIP ViT-H text)", f"encode {CFG_BATCH}x{TEXT_LEN} tokens", clip,
                     _abstract(clip, bf16), lambda p, i: clip.apply({"params": p}, i).last_hidden_state, ids))

    up = UNet2DConditionModel.from_config(_read(UPSCALER / "unet" / "config.json"), dtype=bf16)
    ddim = DDIMScheduler.from_config(_read(UPSCALER / "scheduler" / "scheduler_config.json"))
    side = 256  # stage II's output: the upscaler's UNet runs at the low-res size, the VAE decodes x4

    # the shipping loop and decodes of StableDiffusionUpscalePipeline (its step: DDIM, guidance 9)
    up_loop = functools.partial(sampling.denoise, UpscaleDenoiser(up), ddim, guidance=sampling.ClassifierFreeGuidance(),
                                eta=0.0)
    up_cond = {"encoder_hidden_states": s((CFG_BATCH, TEXT_LEN, clip.config.hidden_size), bf16),
               "extra_channels": s((CFG_BATCH, side, side, 3), bf16),
               "class_labels": jnp.full((CFG_BATCH,), 20, jnp.int32)}
    rows.append(_row("stage III unet (x4 upscaler)", f"sampling loop (FLOPs: 1 step), CFG batch {CFG_BATCH},"
                     f" {side}x{side} latents", up, _abstract(up, bf16), up_loop, s((1, side, side, 4), jnp.float32),
                     ddim.set_timesteps(1), up_cond, jnp.float32(9.0), key, jnp.int32(1)))

    vae = AutoencoderKL.from_config(_read(UPSCALER / "vae" / "config.json"), dtype=bf16)
    sample_tile, latent_tile = tile_sizes(vae.config)
    rows.append(_row("stage III vae (x4 upscaler)", f"decode {4 * side}x{4 * side}, whole", vae, _abstract(vae, bf16),
                     functools.partial(decode_latents, vae), s((1, side, side, 4), jnp.float32)))
    rows.append(_row("stage III vae (x4 upscaler)", f"decode {4 * side}x{4 * side}, in {latent_tile}x{latent_tile}-latent"
                     " tiles (enable_vae_tiling)", vae, _abstract(vae, bf16),
                     functools.partial(decode_latents_tiled, vae, tile_sample_min_size=sample_tile,
                                       tile_latent_min_size=latent_tile), s((1, side, side, 4), jnp.float32)))

    checker = IFSafetyChecker.from_config(_read(IF_I / "safety_checker" / "config.json"), dtype=bf16)
    size = checker.config.image_size
    rows.append(_row("safety_checker (CLIP ViT-L vision)", f"score 1 image {size}x{size}", checker,
                     _abstract(checker, bf16), lambda p, c: checker.apply({"params": p}, c, method="scores"),
                     s((1, size, size, 3), bf16)))
    return rows


def cascade_summary(rows: list[dict]) -> list[dict]:
    """Whole-cascade peaks in bfloat16 (the VAE decoding tiled) for five ways of holding the components.

    A phase's peak is its program's (params + inputs + outputs + temporaries); a component resident
    beside it adds its param bytes. On a ``model`` mesh axis of size n each component's params that
    ``jaxgen.sharding``'s rules split count 1/n per chip (today: T5's; the UNets have no rules and
    replicate); temporaries are counted whole (an upper bound).
    """
    pick = lambda prefix, dtype="bfloat16": next(r for r in rows if r["component"].startswith(prefix) and r["dtype"] == dtype
                                                and "whole" not in r["call"])
    t5 = pick("text_encoder")
    t5q = pick("text_encoder", "int8 weights, bfloat16 compute")
    rest = [pick("stage I "), pick("stage II "), pick("stage III text"), pick("stage III unet"), pick("stage III vae"),
            pick("safety")]
    extra = lambda r: r["peak_bytes"] - r["param_bytes"]  # the phase's inputs, outputs and temporaries

    def resident(components: list[dict], model: int = 1) -> int:
        params = sum(r["param_bytes"] - r["model_split_bytes"] + r["model_split_bytes"] // model for r in components)
        return params + max(extra(r) for r in components)

    out = [
        {"scenario": "everything resident", "peak_bytes": resident([t5] + rest)},
        {"scenario": "T5 loaded first, prompts encoded, T5 freed (text_encoder=None), then the stages resident",
         "peak_bytes": max(t5["peak_bytes"], resident(rest))},
        {"scenario": "everything resident, int8 T5 (jaxgen.quantize)", "peak_bytes": resident([t5q] + rest)},
    ]
    for n in (2, 4, 8):
        out.append({"scenario": f"everything resident, make_mesh(model={n}): per chip of {n}", "peak_bytes": resident([t5] + rest, n)})
    out.append({"scenario": "one component on the chip at a time (each loaded for its phase, as enable_model_cpu_offload)",
                "peak_bytes": max(r["peak_bytes"] for r in [t5] + rest)})
    for r in out:
        r["headroom_16_gib_bytes"] = CHIP_BYTES - r["peak_bytes"]
        r["fits_16_gib"] = "no" if r["peak_bytes"] > CHIP_BYTES else ("tight" if r["peak_bytes"] > 0.95 * CHIP_BYTES else "yes")
    return out


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage1-dtypes", nargs="*", default=["bfloat16"],
                        help="float32 needs ~18 GB for each side's copy of IF-I-XL (run one side at a time)")
    parser.add_argument("--stage2-dtypes", nargs="*", default=["float32", "bfloat16"])
    parser.add_argument("--stage1-resolution", type=int, default=64)
    parser.add_argument("--stage2-resolution", type=int, default=128, help="native: 256")
    parser.add_argument("--steps", type=int, default=1, help="denoising steps timed, after a warm-up run")
    parser.add_argument("--tiny", action="store_true",
                        help="tiny IF-like UNets (the tests' configs) in the speed comparison: a smoke test of "
                             "minutes on 2 CPU cores (the memory tables stay real-size: add --skip-memory)")
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--concurrency-scheduler", action="store_true",
                        help="keep XLA:CPU's default concurrency-optimised scheduler (12 GiB more for a bf16 stage I)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    flags = os.environ.get("XLA_FLAGS", "")
    if not args.concurrency_scheduler and "concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_enable_concurrency_optimized_scheduler=false".strip()
    import jax
    import torch

    device = f"{jax.devices()[0].device_kind} x{jax.device_count()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    all_stages = stages(args.tiny)
    rates: dict[str, float] = {}
    speed = []
    plan = [("I", args.stage1_resolution, d) for d in args.stage1_dtypes] + \
           [("II", args.stage2_resolution, d) for d in args.stage2_dtypes]
    for key, resolution, dtype in ([] if args.skip_speed else plan):
        stage = all_stages[key]
        print(f"# speed: {stage.name} {dtype} {resolution}x{resolution}", file=sys.stderr, flush=True)
        ours = bench_jaxgen(stage, resolution, dtype, args.steps)
        ref = None if args.skip_torch else bench_diffusers(stage, resolution, dtype, args.steps)
        if dtype not in rates:
            rates[dtype] = max(matmul_rate(dtype), torch_matmul_rate(dtype))  # the best matmul this machine does
        flops = ours["flops_per_step"]
        speed.append({"stage": stage.name, "unet": stage.label, "resolution": resolution, "dtype": dtype,
                      "jaxgen": ours, "diffusers": ref, "flops_per_step": flops,
                      "matmul_flops_per_s": rates[dtype], "floor_step_s": flops / rates[dtype]})
    memory = [] if args.skip_memory else memory_rows()
    summary = cascade_summary(memory) if memory else []

    print(f"\nDeepFloyd IF, random weights, CFG batch {CFG_BATCH}, T5 embeddings ({CFG_BATCH}, {TEXT_LEN}, 4096); "
          f"device: {device}; torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}\n")
    if speed:
        print("| stage | UNet | size | dtype | jaxgen s/step | diffusers s/step | speed-up | jaxgen compile s | "
              "GFLOP/step | best matmul GFLOP/s | floor s/step | jaxgen / floor | cores busy (jaxgen / diffusers) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in speed:
            o, d = r["jaxgen"], r["diffusers"]
            speedup = f"{d['step_s'] / o['step_s']:.2f}x" if d else "-"
            print(f"| {r['stage']} | {r['unet']} | {r['resolution']}x{r['resolution']} | {r['dtype']} | {o['step_s']:.2f} | "
                  f"{d['step_s'] if d else float('nan'):.2f} | {speedup} | {o['compile_s']:.1f} | {r['flops_per_step'] / 1e9:.0f} | "
                  f"{r['matmul_flops_per_s'] / 1e9:.0f} | {r['floor_step_s']:.2f} | {o['step_s'] / r['floor_step_s']:.2f} | "
                  f"{o['cores_busy']:.1f} / {d['cores_busy'] if d else float('nan'):.1f} |")
    if memory:
        print("\nMemory of each call of the bfloat16 cascade at native size (XLA buffer assignment on "
              f"{jax.devices()[0].platform}; nothing allocated):\n")
        print("| component | call | dtype | params | params GiB | temp GiB | peak GiB | GFLOP | compile s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in memory:
            print(f"| {r['component']} | {r['call']} | {r['dtype']} | {r['params'] / 1e9:.3f}B | {r['param_bytes'] / GIB:.2f} | "
                  f"{r['temp_bytes'] / GIB:.2f} | {r['peak_bytes'] / GIB:.2f} | {r['flops'] / 1e9:.0f} | {r['compile_s']:.1f} |")
        print("\n| cascade in bfloat16 (T5-XXL, stage I, stage II, x4 upscaler CLIP + UNet + tiled VAE, safety checker) "
              "| peak GiB | 16 GiB chip: headroom GiB | fits |")
        print("|---|---|---|---|")
        for r in summary:
            print(f"| {r['scenario']} | {r['peak_bytes'] / GIB:.2f} | {r['headroom_16_gib_bytes'] / GIB:.2f} | {r['fits_16_gib']} |")
    if args.json:
        args.json.write_text(json.dumps({
            "device": device, "torch": torch.__version__, "jax": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "steps_timed": args.steps, "cfg_batch": CFG_BATCH,
            "text_len": TEXT_LEN, "stage_ii_config": if_ii_l_like_config(), "speed": speed, "memory": memory,
            "cascade": summary,
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
