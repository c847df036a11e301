"""UniDiffuser speed: jaxgen against diffusers (PyTorch) on the real-size architecture (thu-ml/unidiffuser-v1), one run.

Random weights (speed does not depend on their values; ``random_weights.py``), real configs from
``tests/configs/thu-ml__unidiffuser-v1`` (the U-ViT ``unet``, 953M; the GPT-2 caption decoder ``text_decoder``, 125M;
the DPMSolverMultistep ``scheduler``), same machine and process, float32 and bfloat16 (params and compute, on both
sides). Three parts (``--only``; all by default):

- ``text2img``: one denoising step at 512 px (the U-ViT's only size: latents (64, 64, 4), the CLIP image embedding
  (1, 512), the prompt's text latent (77, 64), i.e. CLIP text states after the caption decoder's ``encode``
  bottleneck) with data-free guidance at the pipeline's default scale 8: the U-ViT on the image parts given the text
  (text timestep 0), then again with the text replaced by fresh Gaussian noise at the last timestep (1000), combined
  as ``g cond + (1 - g) uncond``, then the DPMSolverMultistep step. Both libraries ship two separate U-ViT calls on
  1 row each (diffusers' ``_get_noise_pred``, jaxgen's ``SeparateUnconditional``), not one call on 2 rows. Seconds
  per step.
- ``joint``: one joint-mode step (image and text sampled together, one timestep): three U-ViT calls (the
  conditional one, then the text-only and image-only unconditional ones), the guidance, the scheduler step.
- ``caption``: the caption decoder's beam search (beam size 5, at most 67 tokens, diffusers'
  ``generate_captions``) from one text latent (1, 77, 64). Seconds per caption. The stop token given is -1, which
  no token has, so that both sides run all 67 tokens (with random weights a search may stop at any step, or never,
  and each side has its own random weights): a real caption usually stops sooner. The work differs by design:
  diffusers' ``generate_beam`` re-runs GPT-2 on the whole prefix + tokens so far for the 5 beams at every step (no
  key/value cache, logits at every position), jaxgen's runs one token per beam on a cache (``prefill`` then
  ``step``, one compiled ``while_loop``). The FLOP table gives both counts.

jaxgen runs what its pipeline ships: ``sampling.denoise`` (one compiled loop over the steps) with
``UniDiffuserDenoiser`` and ``SeparateUnconditional``, the parts, rows and static arguments laid out as
``UniDiffuserPipeline.sample`` / ``DiffusionPipeline.denoise`` do (``harness.shipping_denoise``), in a
``UniDiffuserPipeline`` holding only the U-ViT and the scheduler (used for its scheduler, rows and mesh), compiled
ahead (the step count is traced, so the one-step warm-up runs the timed program); the caption is
``generate_captions``' compiled beam search (``_beam_search_fn``; the best-beam slice after it is not timed),
compiled ahead (``harness.time_compiled``). diffusers runs its pipeline's loop body, ``UniDiffuserPipeline.
_get_noise_pred`` itself (bound to a stand-in holding the U-ViT and the sizes) then ``scheduler.step``, one warm-up
step first, and ``text_decoder.generate_captions`` (warmed up by a 2-token ``generate_beam``; 1 caption timed on a
CPU: minutes each at real size). Per dtype, each side builds a model on first use and frees it after its part,
jaxgen first.

FLOPs: per step from jaxgen's compiled loop (``cost_analysis``; XLA counts a loop body once, and the loop body is one
step); per caption, the compiled search (prefill + one step) plus 65 more steps (one ``_beam_step`` compiled
alone). PyTorch's ``FlopCounterMode`` counts diffusers' work on meta tensors as a cross-check (matmuls and attention
only; nothing allocated): ``_get_noise_pred``, and the 67 GPT-2 passes ``generate_beam`` makes. The floor is jaxgen's
FLOPs at the best rate of a large matmul measured here (``harness.matmul_rates``); where the device's datasheet peak
is known (``harness.PEAKS``) the FLOP table also gives the floor at that peak. ``--flops-only`` prints the counts
without running anything. The JSON is rewritten after every measurement; ``--time-budget`` skips what is left once
it is spent. Progress lines go to stderr. Timing, recording and tables are ``harness.py``'s.

On an H200 (both dtypes; random weights for ~1.1B params per side and dtype on the host, XLA compiles):

    python benchmarks/unidiffuser.py --dtypes bfloat16,float32 --steps 10 --time-budget 420 --json benchmarks/unidiffuser-h200.json

On 2 CPU cores: ``--tiny`` is the smoke test (~105 s: all parts, both dtypes, both sides); at real size, float32
(~9 minutes on a loaded machine: ~70 s per text2img step a side, ~150 s per diffusers caption; PyTorch on 1 thread,
whose 2 spinning OpenMP threads starve when other processes load the cores; bfloat16 is for jaxgen only there,
``--torch-dtypes float32`` or ``""``: PyTorch's bfloat16 matmuls run at ~1 GFLOP/s on a CPU without bfloat16
instructions; ``joint`` is ~110 s per step a side):

    python benchmarks/unidiffuser.py --only text2img,caption --dtypes float32 --steps 1 --torch-threads 1 --time-budget 420 --json benchmarks/unidiffuser-cpu.json
    python benchmarks/unidiffuser.py --flops-only --dtypes bfloat16  # the real-size counts, ~75 s
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - the shared timing, recording and table helpers (it puts the repository on sys.path)
from harness import CONFIGS, decode_reps, log, nchw, random_array, read_config, xla_flops  # noqa: E402

CONFIG_DIR = CONFIGS / "thu-ml__unidiffuser-v1"
PARTS = ("text2img", "joint", "caption")
MODES = {"text2img": "text2img", "joint": "joint"}  # the step parts: their pipeline mode
UNITS = {"text2img": "s/step", "joint": "s/step", "caption": "s/caption"}
GUIDANCE = 8.0  # UniDiffuserPipeline's default guidance_scale
DATA_TYPE = 1  # the pipeline's default data_type (v1's token for its non-public training data)
BEAMS, ENTRY_LENGTH = 5, 67  # generate_beam's defaults, which generate_captions uses
NEVER_EOS = -1  # the stop token given to both searches: no token has it, so both run ENTRY_LENGTH tokens
MODEL_PARTS = {"text2img": "unet", "joint": "unet", "caption": "text_decoder"}


@dataclasses.dataclass(frozen=True)
class Setup:
    """The architectures (config dicts by diffusers' component names: unet, text_decoder, vae, scheduler)."""

    label: str
    configs: dict

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.configs["vae"]["block_out_channels"]) - 1)

    @property
    def resolution(self) -> int:
        """The U-ViT's one image size: its ``sample_size`` times the VAE's factor (512)."""
        return self.configs["unet"]["sample_size"] * self.vae_scale_factor

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """One row of each part, NHWC: img_vae (1, h, w, C), img_clip (1, 1, D), text (1, L, text_dim)."""
        u = self.configs["unet"]
        return {"img_vae": (1, u["sample_size"], u["sample_size"], u["in_channels"]), "img_clip": (1, 1, u["clip_img_dim"]),
                "text": (1, u["num_text_tokens"], u["text_dim"])}

    def features_shape(self) -> tuple[int, int, int]:
        """The caption decoder's input: one text latent (1, prefix_length, prefix_hidden_dim)."""
        d = self.configs["text_decoder"]
        return (1, d["prefix_length"], d["prefix_hidden_dim"])

    def describe(self, part: str) -> str:
        s = self.shapes()
        if part == "caption":
            return f"{BEAMS} beams x {ENTRY_LENGTH} tokens from text latent {self.features_shape()[1:]}"
        calls = 2 if part == "text2img" else 3
        return f"{calls} U-ViT calls x 1 row: {s['img_vae'][1:]} + clip {s['img_clip'][2:]} + text {s['text'][1:]}"


def real_configs() -> dict:
    return {name: read_config(CONFIG_DIR / name / ("scheduler_config.json" if name == "scheduler" else "config.json"))
            for name in ("unet", "text_decoder", "vae", "scheduler")}


def tiny_configs() -> dict:
    """Tiny configs of the same architectures (jaxgen's ``tiny()`` ones: 8x8x4 latents, 5 text tokens, a 2-layer
    GPT-2), the real VAE factor and scheduler."""
    configs = real_configs()
    configs["unet"] = dict(configs["unet"], text_dim=8, clip_img_dim=12, num_text_tokens=5, num_attention_heads=4,
                           attention_head_dim=8, num_layers=2, sample_size=8)
    configs["text_decoder"] = dict(configs["text_decoder"], prefix_length=5, prefix_inner_dim=16, prefix_hidden_dim=8,
                                   vocab_size=60, n_positions=96, n_embd=32, n_layer=2, n_head=4, n_inner=None)
    return configs


def host_inputs(setup: Setup, part: str) -> dict[str, np.ndarray]:
    """Host float32 rows, NHWC: the parts of a step (the text latent is the condition in text2img, noise in
    joint: the same shape either way), or the caption's text latent ``features``."""
    if part == "caption":
        return {"features": random_array(setup.features_shape(), 4)}
    return {name: random_array(shape, seed) for seed, (name, shape) in enumerate(setup.shapes().items(), 1)}


# ----------------------------------------------------------------------------- jaxgen


def _jax_class(name: str) -> Any:
    from jaxgen.models.unidiffuser_model import UniDiffuserModel
    from jaxgen.models.unidiffuser_text_decoder import UniDiffuserTextDecoder

    return {"unet": UniDiffuserModel, "text_decoder": UniDiffuserTextDecoder}[name]


def loop_pipeline(unet: tuple, scheduler_config: dict) -> Any:
    """A ``UniDiffuserPipeline`` of only the U-ViT and the scheduler (the text encoder / decoder size check, the
    one thing its ``__init__`` adds, skipped): the step parts use it for its scheduler, rows and mesh."""
    from jaxgen.pipelines.pipeline_utils import DiffusionPipeline
    from jaxgen.pipelines.unidiffuser import UniDiffuserPipeline
    from jaxgen.schedulers.dpmsolver_multistep import DPMSolverMultistepScheduler

    pipe = UniDiffuserPipeline.__new__(UniDiffuserPipeline)
    DiffusionPipeline.__init__(pipe, unet=unet, scheduler=DPMSolverMultistepScheduler.from_config(scheduler_config))
    pipe.mode = None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def beam_search(module: Any) -> Any:
    """``generate_captions``' jitted search for ``module``: (params, features, eos, temperature) -> (tokens, lengths)."""
    import jax.numpy as jnp

    from jaxgen.models.unidiffuser_text_decoder import _beam_search_fn

    return _beam_search_fn(type(module), module.config, jnp.dtype(module.dtype).name, BEAMS, ENTRY_LENGTH)


def beam_step_flops(module: Any, params: Any, features_shape: tuple) -> tuple[float | None, float | None]:
    """XLA's FLOPs of one step of the search (``_beam_step`` compiled alone on abstract state; ``params`` may be
    abstract): (compiled, lowered). XLA counts the search's loop body once; the search runs ENTRY_LENGTH - 1 steps."""
    import jax
    import jax.numpy as jnp

    from jaxgen.models.unidiffuser_text_decoder import _beam_step

    cfg, spec = module.config, jax.ShapeDtypeStruct
    b, prefix = features_shape[:2]
    kv = spec((b * BEAMS, prefix + ENTRY_LENGTH, cfg.n_head, cfg.head_dim), module.dtype)
    state = (spec((), jnp.int32), spec((b, BEAMS, ENTRY_LENGTH), jnp.int32), spec((b, BEAMS), jnp.float32),
             spec((b, BEAMS), jnp.int32), spec((b, BEAMS), jnp.bool_), tuple((kv, kv) for _ in range(cfg.n_layer)))
    step = jax.jit(lambda p, s, eos, temp: _beam_step(module, {"params": p}, s, eos, temp))
    lowered = step.lower(params, state, spec((), jnp.int32), spec((), jnp.float32))
    return xla_flops(lowered.compile()), xla_flops(lowered)


def caption_flops(program: dict, step: tuple) -> dict:
    """The whole search's FLOPs: the program's count (prefill, one step, the sort) plus ENTRY_LENGTH - 2 more steps."""
    total = lambda whole, one: whole + (ENTRY_LENGTH - 2) * one if whole and one else None
    return {"flops": total(program["flops"], step[0]), "flops_lowered": total(program["flops_lowered"], step[1]),
            "flops_program": program["flops"], "flops_per_token_step": step[0]}


class JaxSide(harness.JaxSide):
    """jaxgen's half of one dtype: ``harness.JaxSide``'s timing with UniDiffuser's models and pipeline."""

    def model_class(self, name: str) -> Any:
        return _jax_class(name)

    def measure(self, part: str) -> dict:
        return self.caption() if part == "caption" else self.uvit_step(MODES[part])

    def uvit_step(self, mode: str) -> dict:
        """One guided step in the shipping loop, parts and rows as ``UniDiffuserPipeline.sample`` lays them out."""
        from jaxgen.pipelines.sampling import SeparateUnconditional
        from jaxgen.pipelines.unidiffuser import UniDiffuserDenoiser

        pipe = loop_pipeline(self.model("unet"), self.setup.configs["scheduler"])
        module, params = self.model("unet")
        x = host_inputs(self.setup, mode)
        sampled = ("img_vae", "img_clip", "text") if mode == "joint" else ("img_vae", "img_clip")
        sigma = getattr(pipe.scheduler, "init_noise_sigma", 1.0)
        latents = {k: pipe.shard_rows(x[k] * sigma, 1) for k in sampled}
        cond = {k: pipe.shard_rows(x[k], 1) for k in x if k not in sampled}
        state = pipe.prepare_timesteps(self.steps, None, None, (1, sum(int(np.prod(x[k].shape[1:])) for k in sampled)))
        denoiser = UniDiffuserDenoiser(module, mode, int(pipe.scheduler.config["num_train_timesteps"]), DATA_TYPE, 1)
        args, options = harness.shipping_denoise(pipe, denoiser, params, latents, state, cond, self.steps, GUIDANCE)
        options["guidance"] = SeparateUnconditional()  # what UniDiffuserPipeline.sample passes with guidance on
        return self._time_loop(pipe, args, options)

    def caption(self) -> dict:
        """``generate_captions``' beam search from one float32 text latent (as ``decode_text_latents`` passes the
        sampled latents), compiled ahead; the stop token -1: all ENTRY_LENGTH tokens."""
        import jax

        module, params = self.model("text_decoder")
        features = jax.device_put(host_inputs(self.setup, "caption")["features"])
        lengths = lambda out: {"caption_tokens": int(np.asarray(out[1]).max())}
        result = harness.time_compiled(beam_search(module), (), (params, features, NEVER_EOS, 1.0),
                                       decode_reps(self.steps), check=lengths)
        return {**result, **caption_flops(result, beam_step_flops(module, params, features.shape))}


def jax_abstract_flops(setup: Setup, part: str, dtype_name: str) -> dict:
    """XLA's FLOP count of a part on abstract params and inputs (nothing allocated): a step's guided U-ViT calls
    (``predict`` and ``predict_unconditional``; no scheduler), or the whole caption search."""
    import jax
    import jax.numpy as jnp

    from jaxgen.pipelines.unidiffuser import UniDiffuserDenoiser

    dtype = jnp.dtype(dtype_name)
    name = MODEL_PARTS[part]
    module = _jax_class(name).from_config(setup.configs[name], dtype=dtype)
    spec = jax.ShapeDtypeStruct
    params = jax.tree_util.tree_map(lambda s: spec(s.shape, dtype if jnp.issubdtype(s.dtype, jnp.floating) else s.dtype),
                                    module.param_shapes())
    start = time.perf_counter()
    if part == "caption":
        features = spec(setup.features_shape(), jnp.float32)
        lowered = beam_search(module).lower(params, features, NEVER_EOS, 1.0)
        program = {"flops": xla_flops(lowered.compile()), "flops_lowered": xla_flops(lowered)}
        out = caption_flops(program, beam_step_flops(module, params, features.shape))
        return {**out, "compile_s": time.perf_counter() - start}
    mode = MODES[part]
    denoiser = UniDiffuserDenoiser(module, mode, int(setup.configs["scheduler"]["num_train_timesteps"]), DATA_TYPE, 1)
    x = {k: spec(s, jnp.float32) for k, s in setup.shapes().items()}
    sampled = {k: v for k, v in x.items() if mode == "joint" or k != "text"}
    cond = {k: v for k, v in x.items() if k not in sampled}
    call = jax.jit(lambda p, x, t, c, key: (denoiser.predict(p, x, t, c), denoiser.predict_unconditional(p, x, t, c, key)))
    lowered = call.lower(params, sampled, spec((1,), jnp.int32), cond, jax.random.key(0))
    compiled = lowered.compile()
    return {"flops": xla_flops(compiled), "flops_lowered": xla_flops(lowered), "compile_s": time.perf_counter() - start}


# ----------------------------------------------------------------------------- diffusers


def _torch_builder(setup: Setup, name: str) -> Any:
    from diffusers.pipelines.deprecated.unidiffuser import UniDiffuserModel, UniDiffuserTextDecoder

    cls = {"unet": UniDiffuserModel, "text_decoder": UniDiffuserTextDecoder}[name]
    return lambda: cls.from_config(setup.configs[name])


def loop_body(setup: Setup, unet: Any, scheduler: Any) -> Any:
    """diffusers' ``UniDiffuserPipeline`` loop-body methods (``_get_noise_pred``, ``_split``, ``_combine``, their
    joint forms, ``prepare_extra_step_kwargs``) bound to a stand-in holding the U-ViT, the scheduler and the sizes
    its properties would read from the other components."""
    from diffusers.pipelines.deprecated.unidiffuser import UniDiffuserPipeline

    names = ("_get_noise_pred", "_split", "_combine", "_split_joint", "_combine_joint", "prepare_extra_step_kwargs")
    body = type("UniDiffuserLoopBody", (), {n: getattr(UniDiffuserPipeline, n) for n in names})()
    u = setup.configs["unet"]
    body.unet, body.scheduler, body.vae_scale_factor = unet, scheduler, setup.vae_scale_factor
    body.num_channels_latents, body.image_encoder_projection_dim = u["in_channels"], u["clip_img_dim"]
    body.text_encoder_seq_len, body.text_intermediate_dim = u["num_text_tokens"], u["text_dim"]
    return body


def torch_step_inputs(setup: Setup, mode: str, to_tensor: Any, body: Any) -> tuple[dict, Any]:
    """(the parts as diffusers holds them: img_vae NCHW, img_clip, text; the flattened latents its loop steps)."""
    parts = {k: to_tensor(nchw(v)) for k, v in host_inputs(setup, mode).items()}
    if mode == "joint":
        return parts, body._combine_joint(parts["img_vae"], parts["img_clip"], parts["text"])
    return parts, body._combine(parts["img_vae"], parts["img_clip"])


class TorchSide(harness.TorchSide):
    """diffusers' half of one dtype: ``harness.TorchSide``'s timing with UniDiffuser's models and loop body."""

    def builder(self, name: str) -> Callable[[], Any]:
        return _torch_builder(self.setup, name)

    def measure(self, part: str) -> dict:
        return self.caption() if part == "caption" else self.uvit_step(MODES[part])

    def uvit_step(self, mode: str) -> dict:
        """The loop body of ``UniDiffuserPipeline.__call__``: ``_get_noise_pred`` (the U-ViT calls and the guidance),
        then ``scheduler.step`` with the pipeline's extra step arguments."""
        import diffusers
        import torch

        scheduler = diffusers.DPMSolverMultistepScheduler.from_config(self.setup.configs["scheduler"])
        body = loop_body(self.setup, self.model("unet"), scheduler)
        parts, start = torch_step_inputs(self.setup, mode, self._to_tensor, body)
        start = start * scheduler.init_noise_sigma
        generator = torch.Generator(self.device).manual_seed(0)
        extra = body.prepare_extra_step_kwargs(generator, 0.0)
        size, top = self.setup.resolution, scheduler.config.num_train_timesteps

        @torch.no_grad()
        def loop(limit: int) -> Any:
            scheduler.set_timesteps(self.steps, device=self.device)
            latents = start
            for t in scheduler.timesteps[:limit]:
                noise = body._get_noise_pred(mode, latents, t, parts["text"], parts["img_vae"], parts["img_clip"], top,
                                             DATA_TYPE, GUIDANCE, generator, self.device, size, size)
                latents = scheduler.step(noise, t, latents, **extra).prev_sample
            return latents

        return self._time_steps(loop)

    def caption(self) -> dict:
        """``text_decoder.generate_captions(features, eos, device)`` on one text latent in this side's dtype (as the
        pipeline's ``decode_text_latents``), after a 2-token ``generate_beam`` warm-up; 1 caption timed on a CPU."""
        import torch

        decoder = self.model("text_decoder")
        features = self._to_tensor(host_inputs(self.setup, "caption")["features"])
        reps = 1 if self.device == "cpu" else decode_reps(self.steps)
        with torch.no_grad():
            decoder.generate_beam(input_embeds=decoder.decode_prefix(features), device=self.device,
                                  eos_token_id=NEVER_EOS, entry_length=2)
            self.sync()
            start = time.perf_counter()
            for _ in range(reps):
                tokens, lengths = decoder.generate_captions(features, NEVER_EOS, device=self.device)
            self.sync()
        return {"seconds": (time.perf_counter() - start) / reps, "reps": reps, "output_shape": list(tokens.shape),
                "caption_tokens": int(lengths.max())}


def torch_meta_flops(setup: Setup, part: str, dtype_name: str) -> float | None:
    """PyTorch's ``FlopCounterMode`` count of diffusers' work on meta tensors (nothing allocated): a step's
    ``_get_noise_pred``, or the GPT-2 passes of ``generate_beam`` (1 row on the prefix, then 5 rows on the prefix
    and the tokens so far, for ENTRY_LENGTH steps: what its loop runs when no beam stops)."""
    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    diffusers.utils.logging.set_verbosity_error()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    try:
        with torch.device("meta"):
            model = _torch_builder(setup, MODEL_PARTS[part])().to(dtype).eval()
        meta = lambda x: torch.from_numpy(x).to("meta", dtype)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            if part == "caption":
                prefix = model.decode_prefix(meta(host_inputs(setup, part)["features"]))
                width = prefix.shape[-1]
                for i in range(ENTRY_LENGTH):
                    model.transformer(inputs_embeds=torch.empty((1 if i == 0 else BEAMS, prefix.shape[1] + i, width),
                                                                device="meta", dtype=dtype))
            else:
                scheduler = diffusers.DPMSolverMultistepScheduler.from_config(setup.configs["scheduler"])
                body = loop_body(setup, model, scheduler)
                parts, latents = torch_step_inputs(setup, MODES[part], meta, body)
                body._get_noise_pred(MODES[part], latents, torch.tensor(999, device="meta"), parts["text"],
                                     parts["img_vae"], parts["img_clip"], scheduler.config.num_train_timesteps,
                                     DATA_TYPE, GUIDANCE, None, "meta", setup.resolution, setup.resolution)
        return float(counter.get_total_flops())
    except Exception as e:  # noqa: BLE001 - an op without a meta kernel: the count is a cross-check only
        log(f"torch FlopCounterMode {part} {dtype_name}: unavailable ({type(e).__name__}: {e})")
        return None


# ----------------------------------------------------------------------------- the run


def flops_only(args: argparse.Namespace, setup: Setup) -> None:
    """The FLOP counts of every part and dtype, nothing run: XLA on abstract shapes, PyTorch on meta tensors, and
    the floor at the device's datasheet peak where known."""
    import jax

    out = harness.flop_counts(args, setup, jax_abstract_flops, torch_meta_flops)
    print(f"\n{setup.label}; {setup.resolution}x{setup.resolution}; FLOPs per step (the guided U-ViT calls; the "
          f"scheduler arithmetic not counted) and per caption; device {jax.devices()[0].device_kind}\n")
    harness.print_flop_counts(out, "work", "GFLOP (XLA compiled, jaxgen)")
    if args.json:
        args.json.write_text(json.dumps({"setup": setup.label, "configs": setup.configs, "counts": out,
                                         "jax_device": jax.devices()[0].device_kind}, indent=2) + "\n")


def _parse() -> argparse.Namespace:
    parser = harness.list_arguments(__doc__, PARTS)
    parser.add_argument("--steps", type=int, default=None, help="steps timed (after a one-step warm-up; default 10, 3 "
                        "with --tiny); the schedules have this many steps; jaxgen's captions timed: as many (at most 3 "
                        "on a CPU), diffusers': 1 on a CPU")
    harness.run_arguments(parser, flops_only="")
    args = harness.parse_lists(parser, PARTS)
    args.steps = args.steps or (3 if args.tiny else 10)
    return args


def _meta(args: argparse.Namespace, setup: Setup) -> dict:
    return {
        "setup": setup.label, "resolution": setup.resolution, "configs": setup.configs, "parts": args.only,
        "work": {part: setup.describe(part) for part in args.only}, "dtypes": args.dtypes,
        "torch_dtypes": args.torch_dtypes, "steps_timed": args.steps, "guidance_scale": GUIDANCE,
        "data_type": DATA_TYPE, "caption": {"beam_size": BEAMS, "entry_length": ENTRY_LENGTH, "eos_token_id": NEVER_EOS},
        **harness.environment_meta(args.dtypes),
    }


def main() -> None:
    args = _parse()
    harness.start_run(args)
    label = ("tiny configs of the same architectures (smoke test)" if args.tiny else
             "UniDiffuser v1, real configs (thu-ml/unidiffuser-v1: U-ViT 953M, caption decoder GPT-2 125M)")
    setup = Setup(label, tiny_configs() if args.tiny else real_configs())
    log(f"{setup.label}, {setup.resolution}px; parts {args.only}; dtypes {args.dtypes} (diffusers: {args.torch_dtypes})")
    if args.flops_only:
        flops_only(args, setup)
        return
    recorder = harness.Recorder(args.json, _meta(args, setup), args.time_budget, UNITS)
    run = lambda side: harness.run_side(side, args.only, recorder)
    rows = harness.measure(recorder, setup, args, (JaxSide, TorchSide), run, args.torch_dtypes, torch_meta_flops)
    head = (f"{setup.label}; {setup.resolution}x{setup.resolution}; guidance {GUIDANCE} (data-free), data_type "
            f"{DATA_TYPE}; captions: {BEAMS} beams, {ENTRY_LENGTH} tokens (stop token {NEVER_EOS}); {args.steps} steps "
            f"timed")
    harness.report(recorder, rows, head, args.torch_dtypes,
                   flops_table=lambda: harness.print_flops_table(setup, rows, recorder.meta["torch_flop_counter"]))


if __name__ == "__main__":
    main()
