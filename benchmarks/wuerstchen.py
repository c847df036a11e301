"""Würstchen v2 speed: jaxgen against diffusers (PyTorch) on the real-size architectures, one run.

Random weights (speed does not depend on their values; ``random_weights.py``), real configs from
``tests/configs/warp-ai__wuerstchen-prior`` and ``tests/configs/warp-ai__wuerstchen``, same machine and process,
float32 and bfloat16 (params and compute, on both sides). Three parts (``--only``; all by default):

- ``prior``: one stage C step with classifier-free guidance: the ``WuerstchenPrior`` (1.0B) on 2B rows of image
  embeddings (ceil(res / 42.67) square, 16 channels: (2, 24, 24, 16) at 1024 px for ``--batch`` 1), the ratio r
  (2B,), CLIP-bigG text hidden states (2B, 77, 1280); ``lerp(uncond, text, 4)`` (``--prior-guidance``, the
  combined pipeline's default), the ``DDPMWuerstchenScheduler`` step. Seconds per step.
- ``decoder``: one stage B step of the ``WuerstchenDiffNeXt`` (1.06B): latents (B, int(e * 10.67), int(e * 10.67),
  4) for embeddings of side e ((1, 256, 256, 4) at 1024 px), ``effnet`` the stage C embeddings (B, e, e, 16), ``clip``
  CLIP-H text hidden states (B, 77, 1024); no guidance (``--decoder-guidance`` 0, the pipelines' default: B rows;
  above 1 it runs 2B rows, the unconditional ones with zero embeddings, as diffusers), the scheduler step.
- ``vqgan``: stage A, the Paella VQ decode (18M) of (B, int(e * 10.67), int(e * 10.67), 4) latents (times its
  ``scale_factor``, not quantized) to res x res images clamped to [0, 1], as ``WuerstchenDecoderPipeline`` decodes.

jaxgen runs what its pipelines ship: ``sampling.denoise`` (one compiled loop over the steps) with the pipelines'
``WuerstchenDenoiser``, the rows and static arguments laid out as ``DiffusionPipeline.denoise`` does
(``harness.shipping_denoise``; ``NoGuidance`` for the unguided decoder), in a ``WuerstchenPriorPipeline`` /
``WuerstchenDecoderPipeline`` used for its scheduler, rows and mesh; compiled ahead (the step count is traced, so
the one-step warm-up runs the timed program); the decode is the pipeline's jitted ``_decode_vqgan``. diffusers runs
the loop bodies of ``WuerstchenPriorPipeline.__call__`` and ``WuerstchenDecoderPipeline.__call__`` (one warm-up
step first) and ``vqgan.decode(latents * scale_factor).sample.clamp(0, 1)``. Both sides take the same host arrays
(NHWC for jaxgen, NCHW for torch). Per dtype, each side builds a model on first use and frees it after its part,
jaxgen first. diffusers' ``WuerstchenDiffNeXt._init_weights`` is skipped while building (it walks every block for
every module: minutes at real size; the weights are overwritten anyway).

FLOPs per step come from jaxgen's compiled program (``cost_analysis``; XLA counts a loop body once, and the loop
body is one step); PyTorch's ``FlopCounterMode`` counts diffusers' models on meta tensors as a cross-check (matmuls
and convolutions only; nothing allocated). The floor is those FLOPs at the best rate of a large matmul measured here
(JAX's or PyTorch's, before and after each dtype's runs), as in ``harness.py``; where the device's datasheet peak
is known (``harness.PEAKS``: H100/H200/A100, TPU v4/v5e/v5p/v6e) the FLOP table also gives the floor at that peak and each
side's achieved FLOP/s as a fraction of it. ``--flops-only`` prints the counts for a resolution without running
anything (abstract shapes: XLA compiles on ``jax.ShapeDtypeStruct``, PyTorch counts on meta tensors), e.g. the
real 1024 px counts on a CPU. The JSON is rewritten after every measurement; ``--time-budget`` skips what is left
once it is spent. Progress lines go to stderr. Timing helpers, the recorder and the tables are ``harness.py``'s.

On an H200 (1024 px, both dtypes; random weights for ~2.1B params per side and dtype on the host, XLA compiles):

    python benchmarks/wuerstchen.py --dtypes bfloat16,float32 --steps 10 --time-budget 420 --json benchmarks/wuerstchen-h200.json

On 2 CPU cores: ``--tiny`` is the smoke test (~65 s, all parts, both dtypes, both sides); at real size, 512 px in
float32 (~6 minutes on a loaded machine; PyTorch on 1 thread, whose 2 spinning OpenMP threads starve when other
processes load the cores; bfloat16 is for jaxgen only there, ``--torch-dtypes float32``: PyTorch's bfloat16
matmuls run at ~1 GFLOP/s on a CPU without bfloat16 instructions):

    python benchmarks/wuerstchen.py --resolution 512 --dtypes float32 --steps 1 --torch-threads 1 --time-budget 330 --json benchmarks/wuerstchen-cpu.json
    python benchmarks/wuerstchen.py --flops-only --dtypes bfloat16 --resolution 1024  # the real-size counts, ~45 s
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - the shared timing, recording and table helpers (it puts the repository on sys.path)
from harness import CONFIGS, decode_reps, log, nchw, random_array, read_config, xla_flops  # noqa: E402

PRIOR_DIR = CONFIGS / "warp-ai__wuerstchen-prior"
DECODER_DIR = CONFIGS / "warp-ai__wuerstchen"
PARTS = ("prior", "decoder", "vqgan")  # each part runs the model of its name
UNITS = {"prior": "s/step", "decoder": "s/step", "vqgan": "s/decode"}
TEXT_LEN = 77  # both CLIP tokenizers pad to 77
PRIOR_GUIDANCE, DECODER_GUIDANCE = 4.0, 0.0  # WuerstchenCombinedPipeline's defaults


@dataclasses.dataclass(frozen=True)
class Setup:
    """The architectures (config dicts by diffusers' component names: prior, decoder, vqgan, each side's
    schedulers'), the pipelines' size settings, the image size, images per call and the guidance scales."""

    label: str
    configs: dict
    resolution: int
    batch: int
    prior_guidance: float = PRIOR_GUIDANCE
    decoder_guidance: float = DECODER_GUIDANCE

    @property
    def embedding_side(self) -> int:
        """Stage C's side: ceil(res / resolution_multiple) (24 at 1024 px)."""
        return math.ceil(self.resolution / self.configs["prior_pipeline"]["resolution_multiple"])

    @property
    def latent_side(self) -> int:
        """Stage B's side: int(embedding side * latent_dim_scale) (256 at 1024 px)."""
        return int(self.embedding_side * self.configs["decoder_pipeline"]["latent_dim_scale"])

    def guidance(self, part: str) -> float:
        return self.prior_guidance if part == "prior" else self.decoder_guidance

    def guided(self, part: str) -> bool:
        return part != "vqgan" and self.guidance(part) > 1.0

    def rows(self, part: str) -> int:
        return self.batch * (2 if self.guided(part) else 1)

    def sample_shape(self, part: str) -> tuple[int, ...]:
        """The (B, h, w, C) rows a part denoises or decodes (one image each), NHWC."""
        if part == "prior":
            return (self.batch, self.embedding_side, self.embedding_side, self.configs["prior"]["c_in"])
        return (self.batch, self.latent_side, self.latent_side, self.configs["decoder"]["c_in"])

    def describe(self, part: str) -> str:
        rows, (_, h, w, c) = self.rows(part), self.sample_shape(part)
        if part == "prior":
            return f"{rows} x ({h}, {w}, {c}) + text ({TEXT_LEN}, {self.configs['prior']['c_cond']})"
        if part == "decoder":
            e, effnet = self.embedding_side, self.configs["decoder"]["effnet_embd"]
            return f"{rows} x ({h}, {w}, {c}) + effnet ({e}, {e}, {effnet}) + clip ({TEXT_LEN}, {self.configs['decoder']['clip_embd']})"
        return f"{rows} x ({h}, {w}, {c}) -> ({self.resolution}, {self.resolution}, 3)"


def real_configs() -> dict:
    return {"prior": read_config(PRIOR_DIR / "prior" / "config.json"),
            "prior_scheduler": read_config(PRIOR_DIR / "scheduler" / "scheduler_config.json"),
            "prior_pipeline": read_config(PRIOR_DIR / "model_index.json"),
            "decoder": read_config(DECODER_DIR / "decoder" / "config.json"),
            "vqgan": read_config(DECODER_DIR / "vqgan" / "config.json"),
            "decoder_scheduler": read_config(DECODER_DIR / "scheduler" / "scheduler_config.json"),
            "decoder_pipeline": read_config(DECODER_DIR / "model_index.json")}


def tiny_configs() -> dict:
    """Tiny configs of the same architectures (jaxgen's ``tiny()`` ones), the real schedulers and sizes."""
    return {**real_configs(),
            "prior": dict(c_in=16, c=32, c_cond=24, c_r=8, depth=2, nhead=4),
            "decoder": dict(c_in=4, c_out=4, c_r=8, patch_size=2, c_cond=24, c_hidden=[16, 32, 32], nhead=[-1, 2, 4],
                            blocks=[1, 1, 2], level_config=["CT", "CTA", "CTA"], inject_effnet=[False, True, True],
                            effnet_embd=16, clip_embd=24, kernel_size=3),
            "vqgan": dict(embed_dim=16, bottleneck_blocks=2, num_vq_embeddings=32)}


Pairs = dict[str, tuple[np.ndarray, "np.ndarray | None"]]  # conditioning name -> (positive, negative or None), NHWC


def conditioning(setup: Setup, part: str) -> Pairs:
    """A part's conditioning for ``batch`` images, host float32 (the negative half only with guidance):
    the prior's text hidden states ``c``; the decoder's ``effnet`` (zeros for the unconditional rows, as the
    pipelines build them) and ``clip``."""
    b, guided, cfg = setup.batch, setup.guided(part), setup.configs[part]
    if part == "vqgan":
        return {}
    if part == "prior":
        return {"c": (random_array((b, TEXT_LEN, cfg["c_cond"]), 2), random_array((b, TEXT_LEN, cfg["c_cond"]), 3) if guided else None)}
    e = setup.embedding_side
    effnet = random_array((b, e, e, cfg["effnet_embd"]), 4)
    return {"effnet": (effnet, np.zeros_like(effnet) if guided else None),
            "clip": (random_array((b, TEXT_LEN, cfg["clip_embd"]), 5), random_array((b, TEXT_LEN, cfg["clip_embd"]), 6) if guided else None)}


def start_latents(setup: Setup, part: str) -> np.ndarray:
    """The rows a part starts from (noise for the steps, stage B latents for the decode), NHWC float32."""
    return random_array(setup.sample_shape(part), 1)


# ----------------------------------------------------------------------------- jaxgen


def _jax_class(name: str) -> Any:
    from jaxgen.models.paella_vq_model import PaellaVQModel
    from jaxgen.models.wuerstchen_diffnext import WuerstchenDiffNeXt
    from jaxgen.models.wuerstchen_prior import WuerstchenPrior

    return {"prior": WuerstchenPrior, "decoder": WuerstchenDiffNeXt, "vqgan": PaellaVQModel}[name]


class JaxSide(harness.JaxSide):
    """jaxgen's half of one dtype: ``harness.JaxSide``'s timing with Würstchen's models and pipelines."""

    def model_class(self, name: str) -> Any:
        return _jax_class(name)

    def measure(self, part: str) -> dict:
        return self.decode() if part == "vqgan" else self.wuerstchen_step(part)

    def wuerstchen_step(self, part: str) -> dict:
        """One step of stage C or B in the shipping loop, rows as the pipelines' ``__call__`` lays them out."""
        from jaxgen.pipelines import sampling
        from jaxgen.pipelines.wuerstchen import WuerstchenDecoderPipeline, WuerstchenDenoiser, WuerstchenPriorPipeline
        from jaxgen.schedulers.ddpm_wuerstchen import DDPMWuerstchenScheduler

        pipe_class = WuerstchenPriorPipeline if part == "prior" else WuerstchenDecoderPipeline
        scheduler = DDPMWuerstchenScheduler.from_config(self.setup.configs[f"{part}_scheduler"])
        pipe = pipe_class(**{part: self.model(part)}, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        module, params = self.model(part)
        batch, shape = self.setup.batch, self.setup.sample_shape(part)
        state = pipe.prepare_timesteps(self.steps, None, None, shape)
        latents = pipe.shard_rows(start_latents(self.setup, part) * pipe.scheduler.init_noise_sigma, batch)
        cond = {name: pipe.guidance_rows(positive, negative, batch, module.dtype)
                for name, (positive, negative) in conditioning(self.setup, part).items()}
        args, options = harness.shipping_denoise(pipe, WuerstchenDenoiser(module), params, latents, state, cond,
                                                 self.steps, self.setup.guidance(part))
        if not self.setup.guided(part):  # what DiffusionPipeline.denoise picks for a scale <= 1
            options["guidance"] = sampling.NoGuidance()
        return self._time_loop(pipe, args, options)

    def decode(self) -> dict:
        """``WuerstchenDecoderPipeline.decode_latents``' jitted program (``_decode_vqgan``), compiled ahead."""
        import jax

        from jaxgen.pipelines.wuerstchen import _decode_vqgan

        module, params = self.model("vqgan")
        latents = jax.device_put(start_latents(self.setup, "vqgan"))
        return harness.time_compiled(_decode_vqgan, (module,), (params, latents), decode_reps(self.steps))


def jax_abstract_flops(setup: Setup, part: str, dtype_name: str) -> dict:
    """XLA's FLOP count of a part's model call (the prior or decoder on its rows, without the guidance and
    scheduler arithmetic, or the decode) compiled on abstract params and inputs: nothing allocated."""
    import jax
    import jax.numpy as jnp

    from jaxgen.pipelines.wuerstchen import _decode_vqgan

    dtype = jnp.dtype(dtype_name)
    module = _jax_class(part).from_config(setup.configs[part], dtype=dtype)
    spec = lambda shape, kind=dtype: jax.ShapeDtypeStruct(tuple(shape), kind)
    params = jax.tree_util.tree_map(lambda s: spec(s.shape, dtype if jnp.issubdtype(s.dtype, jnp.floating) else s.dtype),
                                    module.param_shapes())
    rows, shape = setup.rows(part), setup.sample_shape(part)
    start = time.perf_counter()
    if part == "vqgan":
        lowered = _decode_vqgan.lower(module, params, spec(shape, jnp.float32))
    else:
        cond = {name: spec((rows, *positive.shape[1:])) for name, (positive, _) in conditioning(setup, part).items()}
        call = jax.jit(lambda p, x, r, c: module.apply({"params": p}, x, r, **c))
        lowered = call.lower(params, spec((rows, *shape[1:])), spec((rows,), jnp.float32), cond)
    compiled = lowered.compile()
    return {"flops": xla_flops(compiled), "flops_lowered": xla_flops(lowered), "compile_s": time.perf_counter() - start}


# ----------------------------------------------------------------------------- diffusers


def _torch_builder(setup: Setup, name: str) -> Callable[[], Any]:
    """A constructor of diffusers' model ``name``; the DiffNeXt's ``_init_weights`` skipped while it runs."""
    from diffusers.pipelines.deprecated.wuerstchen import PaellaVQModel, WuerstchenDiffNeXt, WuerstchenPrior

    cls = {"prior": WuerstchenPrior, "decoder": WuerstchenDiffNeXt, "vqgan": PaellaVQModel}[name]

    def build() -> Any:
        with mock.patch.object(WuerstchenDiffNeXt, "_init_weights", lambda self, module: None):
            return cls.from_config(setup.configs[name])

    return build


def torch_call(setup: Setup, part: str, model: Any, to_tensor: Callable[[np.ndarray], Any]) -> Callable[[], Any]:
    """The model call of a part on its rows, as diffusers' pipelines make it: [text; uncond] with guidance."""
    import torch

    cat = lambda pair: to_tensor(nchw(pair[0] if pair[1] is None else np.concatenate(pair)))
    cond = {name: cat(pair) for name, pair in conditioning(setup, part).items()}
    x = to_tensor(nchw(np.concatenate([start_latents(setup, part)] * (setup.rows(part) // setup.batch))))
    if part == "vqgan":
        return lambda: model.decode(x * model.config.scale_factor).sample.clamp(0, 1)
    r = torch.full((x.shape[0],), 0.5, dtype=x.dtype, device=x.device)
    return lambda: model(x, r=r, **cond)


class TorchSide(harness.TorchSide):
    """diffusers' half of one dtype: ``harness.TorchSide``'s timing with Würstchen's models and loop bodies."""

    def builder(self, name: str) -> Callable[[], Any]:
        return _torch_builder(self.setup, name)

    def measure(self, part: str) -> dict:
        return self.decode() if part == "vqgan" else self.wuerstchen_step(part)

    def wuerstchen_step(self, part: str) -> dict:
        """The loop body of ``WuerstchenPriorPipeline.__call__`` / ``WuerstchenDecoderPipeline.__call__``:
        the model on [latents; latents] with guidance, ``lerp(uncond, text, g)``, the scheduler step."""
        import diffusers
        import torch

        model = self.model(part)
        scheduler = diffusers.DDPMWuerstchenScheduler.from_config(self.setup.configs[f"{part}_scheduler"])
        guided, scale = self.setup.guided(part), self.setup.guidance(part)
        pair = lambda p: p[0] if p[1] is None else np.concatenate(p)  # [text; uncond], as the pipelines concatenate
        cond = {name: self._to_tensor(nchw(pair(p))) for name, p in conditioning(self.setup, part).items()}
        start = self._to_tensor(nchw(start_latents(self.setup, part))) * scheduler.init_noise_sigma
        generator = torch.Generator(self.device).manual_seed(0)

        @torch.no_grad()
        def loop(limit: int) -> Any:
            scheduler.set_timesteps(self.steps, device=self.device)
            latents = start
            for t in scheduler.timesteps[:-1][:limit]:
                ratio = t.expand(latents.size(0)).to(self.dtype)
                predicted = model(torch.cat([latents] * 2) if guided else latents,
                                  r=torch.cat([ratio] * 2) if guided else ratio, **cond)
                if guided:
                    text, uncond = predicted.chunk(2)
                    predicted = torch.lerp(uncond, text, scale)
                latents = scheduler.step(model_output=predicted, timestep=ratio, sample=latents,
                                         generator=generator).prev_sample
            return latents

        return self._time_steps(loop)

    def decode(self) -> dict:
        """``vqgan.decode(latents * scale_factor).sample.clamp(0, 1)``, as ``WuerstchenDecoderPipeline``."""
        import torch

        call = torch_call(self.setup, "vqgan", self.model("vqgan"), self._to_tensor)
        with torch.no_grad():
            call()
            self.sync()
            reps = decode_reps(self.steps)
            start = time.perf_counter()
            for _ in range(reps):
                out = call()
            self.sync()
        return {"seconds": (time.perf_counter() - start) / reps, "output_shape": list(out.shape)}


def torch_meta_flops(setup: Setup, part: str, dtype_name: str) -> float | None:
    """PyTorch's ``FlopCounterMode`` count of diffusers' model call of a part (the rows of ``setup.rows``), the
    model and inputs on the meta device: nothing allocated, nothing computed."""
    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    diffusers.utils.logging.set_verbosity_error()  # "modules that should be kept in float32: []" after .to(dtype)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    try:
        with torch.device("meta"):
            model = _torch_builder(setup, part)().to(dtype).eval()
        call = torch_call(setup, part, model, lambda x: torch.from_numpy(x).to("meta", dtype))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            call()
        return float(counter.get_total_flops())
    except Exception as e:  # noqa: BLE001 - an op without a meta kernel: the count is a cross-check only
        log(f"torch FlopCounterMode {part} {dtype_name}: unavailable ({type(e).__name__}: {e})")
        return None


# ----------------------------------------------------------------------------- the run


def flops_only(args: argparse.Namespace, setup: Setup) -> None:
    """The FLOP counts of every part and dtype at ``setup``'s size, nothing run: XLA on abstract shapes, PyTorch
    on meta tensors, and the floor at the device's datasheet peak where known."""
    import jax

    out = harness.flop_counts(args, setup, jax_abstract_flops, torch_meta_flops)
    print(f"\n{setup.label}; {setup.resolution}x{setup.resolution}, embeddings {setup.embedding_side}, latents "
          f"{setup.latent_side}; batch {setup.batch}; FLOPs of one model call per part (the guidance and scheduler "
          f"arithmetic not counted); device {jax.devices()[0].device_kind}\n")
    harness.print_flop_counts(out)
    if args.json:
        args.json.write_text(json.dumps({"setup": setup.label, "resolution": setup.resolution, "batch": setup.batch,
                                         "configs": setup.configs, "jax_device": jax.devices()[0].device_kind,
                                         "counts": out}, indent=2) + "\n")


def _parse() -> argparse.Namespace:
    parser = harness.list_arguments(__doc__, PARTS)
    parser.add_argument("--steps", type=int, default=None, help="steps timed (after a one-step warm-up; default 10, 3 "
                        "with --tiny); the schedules have this many steps; decodes timed: as many (at most 3 on a CPU)")
    parser.add_argument("--resolution", type=int, default=None, help="image side in pixels (default 1024, 128 with "
                        "--tiny); embeddings ceil(res / 42.67), latents int(that * 10.67), which must be multiples of 16")
    parser.add_argument("--batch", type=int, default=1, help="images per call (B; the prior runs 2B rows with guidance)")
    parser.add_argument("--prior-guidance", type=float, default=PRIOR_GUIDANCE, help="stage C guidance scale (CFG above 1)")
    parser.add_argument("--decoder-guidance", type=float, default=DECODER_GUIDANCE, help="stage B guidance scale "
                        "(default 0: no guidance, B rows)")
    harness.run_arguments(parser, flops_only=" at --resolution")
    args = harness.parse_lists(parser, PARTS)
    args.resolution = args.resolution or (128 if args.tiny else 1024)
    args.steps = args.steps or (3 if args.tiny else 10)
    return args


def make_setup(args: argparse.Namespace) -> Setup:
    configs = tiny_configs() if args.tiny else real_configs()
    label = ("tiny configs of the same architectures (smoke test)" if args.tiny else
             "Würstchen v2, real configs (warp-ai/wuerstchen-prior: prior 1.0B; warp-ai/wuerstchen: decoder 1.06B, vqgan 18M)")
    setup = Setup(label, configs, args.resolution, args.batch, args.prior_guidance, args.decoder_guidance)
    dec = configs["decoder"]
    multiple = dec.get("patch_size", 2) * 2 ** (len(dec["c_hidden"]) - 1)
    if setup.latent_side % multiple or setup.latent_side < multiple:
        fits = [n for n in range(1, 65) if int(n * configs["decoder_pipeline"]["latent_dim_scale"]) % multiple == 0][:6]
        sys.exit(f"--resolution {args.resolution}: embeddings {setup.embedding_side}, latents {setup.latent_side}, not a "
                 f"multiple of {multiple}; embedding sides that work: {fits} (e.g. 256, 512, 768, 1024 px)")
    return setup


def _meta(args: argparse.Namespace, setup: Setup) -> dict:
    return {
        "setup": setup.label, "resolution": setup.resolution, "batch": setup.batch,
        "embedding_side": setup.embedding_side, "latent_side": setup.latent_side, "configs": setup.configs,
        "parts": args.only, "rows": {part: setup.describe(part) for part in args.only}, "dtypes": args.dtypes,
        "torch_dtypes": args.torch_dtypes, "steps_timed": args.steps,
        "guidance_scale": {"prior": setup.prior_guidance, "decoder": setup.decoder_guidance},
        **harness.environment_meta(args.dtypes),
    }


def main() -> None:
    args = _parse()
    harness.start_run(args)
    setup = make_setup(args)
    log(f"{setup.label}, {args.resolution}px, embeddings {setup.embedding_side}, latents {setup.latent_side}, batch "
        f"{args.batch}; parts {args.only}; dtypes {args.dtypes} (diffusers: {args.torch_dtypes})")
    if args.flops_only:
        flops_only(args, setup)
        return
    recorder = harness.Recorder(args.json, _meta(args, setup), args.time_budget, UNITS)
    run = lambda side: harness.run_side(side, args.only, recorder)
    rows = harness.measure(recorder, setup, args, (JaxSide, TorchSide), run, args.torch_dtypes, torch_meta_flops)
    guidance = (f"prior guidance {setup.prior_guidance} ({setup.rows('prior')} rows), decoder guidance "
                f"{setup.decoder_guidance} ({setup.rows('decoder')} rows)")
    head = (f"{setup.label}; {args.resolution}x{args.resolution}, embeddings {setup.embedding_side}x"
            f"{setup.embedding_side}, latents {setup.latent_side}x{setup.latent_side}, batch {args.batch}; {guidance}; "
            f"{args.steps} steps timed")
    harness.report(recorder, rows, head, args.torch_dtypes,
                   flops_table=lambda: harness.print_flops_table(setup, rows, recorder.meta["torch_flop_counter"]))


if __name__ == "__main__":
    main()
