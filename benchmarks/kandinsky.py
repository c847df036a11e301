"""Kandinsky 2.1, 2.2 and 3 speed: jaxgen against diffusers (PyTorch) on the real-size architectures, one run.

Random weights (speed does not depend on their values; ``random_weights.py``), real configs from
``tests/configs/kandinsky-community__kandinsky-2-{1,1-prior,2-prior,2-decoder,2-controlnet-depth}`` and
``kandinsky-community__kandinsky-3``,
same machine and process, float32 and bfloat16 (params and compute, on both sides). Kandinsky 2.1's
four parts (``--only``; the default):

- ``prior``: one prior step with classifier-free guidance: the PriorTransformer (1.0B) on 2 rows for
  1 image (text embeds (2, 768), hidden states (2, 77, 768), mask (2, 77)), the guidance, the UnCLIP
  step. Seconds per step.
- ``unet``: one decoder step at ``--resolution`` (512: latents (1, 64, 64, 4)) with guidance: the
  UNet (1.2B) on 2 rows (M-CLIP hidden states (2, 77, 1024), text_embeds (2, 768), image_embeds
  (2, 768)), the guidance on the epsilon half, the learned variance dropped, the DDIM step.
- ``movq``: the MoVQ decode of (1, 64, 64, 4) latents to a 512 x 512 image (not quantized).
- ``pipeline``: seconds per image of the whole thing, text encoders included: the prior pipeline
  (CLIP text, the prior loop, the zero-image embedding from CLIP vision) then the decoder pipeline
  (M-CLIP, the UNet loop, the MoVQ, output_type "np"), ``--pipeline-steps`` steps each, guidance
  4, timed on the second call (the first, which compiles, is reported apart). The tokenizers are
  tiny ones built here (the Hub is unreachable; as tests/conftest.py builds them): only their ids
  must be below the real vocab sizes; the prompt is padded to 77 tokens anyway.

Kandinsky 2.2's three (``--only prior22,unet22,controlnet``), the same method as 2.1's step parts:

- ``prior22``: one prior step with guidance: the 2.2 PriorTransformer (1.0B, embedding 1280) on 2 rows
  (CLIP bigG text embeds (2, 1280), hidden states (2, 77, 1280), mask (2, 77)), the guidance, the
  UnCLIP step; diffusers' ``KandinskyV22PriorPipeline`` loop body is 2.1's.
- ``unet22``: one decoder step with guidance of the 2.2 UNet (1.2B; ``addition_embed_type`` "image",
  ``encoder_hid_dim_type`` "image_proj"): no text (``encoder_hidden_states`` None), image_embeds
  (2, 1280) only; the guidance, variance and DDIM step as ``unet``'s (``KandinskyV22Pipeline``).
- ``controlnet``: the same with the ControlNet-depth UNet (``addition_embed_type`` "image_hint",
  ``in_channels`` 8: the hint, (2, 512, 512, 3) in [0, 1], NHWC for jaxgen and NCHW for torch, the
  same in both rows, is encoded to 4 channels that join the latents; ``KandinskyV22ControlnetPipeline``).

Kandinsky 3's two (``--only unet3,movq3``; ``--resolution`` defaults to 1024 when only these run):

- ``unet3``: one step with guidance of the Kandinsky3UNet (3.06B): 2 rows of (res/8, res/8, 4) latents,
  Flan-UL2 hidden states (2, 64, 4096) and their mask (``k3_inputs``: the unconditional row zero
  embeddings with an all-zero mask, the prompt row 63 tokens + 1 padded, as ``Kandinsky3Pipeline`` cuts
  its 128-token padding to the longest prompt + 1), ``(g + 1) text - g uncond`` with g = 3, the DDPM step
  (the pipeline's scheduler). jaxgen's side is the shipping loop (``sampling.denoise``,
  ``ClassifierFreeGuidance`` with scale g + 1, the same combination) with the pipeline's
  ``Kandinsky3Denoiser`` (``jaxgen.pipelines.kandinsky3``); diffusers' side the loop body of
  ``Kandinsky3Pipeline.__call__``.
- ``movq3``: the Kandinsky 3 MoVQ (0.27B; 2.1's architecture at twice the width) decode of one latent
  (1, res/8, res/8, 4) to res x res, not quantized, latents not scaled (``decode_movq`` / ``movq.decode``).

FLOPs at the real size, 1024 x 1024 (XLA's cost analysis of the compiled programs on abstract shapes,
``benchmarks/memory.py --model kandinsky-3``, nothing allocated; PyTorch's ``FlopCounterMode`` on meta
tensors agrees within 1.3%): the UNet step on 2 rows of 128 x 128 latents (128 text tokens) is 6.4
TFLOP, the MoVQ decode 34.1 TFLOP (the issue's "about 34 TFLOP" is the decode), the MoVQ encode
(img2img) 17.3, the Flan-UL2 encoder on 1 x 128 tokens 2.2. At an H200's 989 TFLOP/s (dense bf16) the
floors are 6.5 ms per step, 34.5 ms per decode: ~0.2 s per 1024 px image at the pipeline's 25 steps.
At 512 px: 1.7 TFLOP per step, 7.7 per decode.

jaxgen runs what its pipelines ship. Steps: ``jaxgen.pipelines.sampling.denoise`` (one compiled
loop over the steps) with ``PriorDenoiser`` / ``KandinskyDenoiser``, the inputs laid out and the
static arguments given as ``DiffusionPipeline.denoise`` does (``shipping_denoise``), compiled ahead
(``lower().compile()``; the step count is traced, so the one-step warm-up runs the timed program;
2.2's UNets run in a 2.1 ``KandinskyPipeline`` used for its scheduler and mesh only: the denoiser
and the loop are the ones 2.2's pipelines share); the decode is the jitted ``decode_movq``; the
pipeline part calls ``KandinskyPriorPipeline`` and ``KandinskyPipeline`` built from the same
(module, params) pairs. diffusers runs the loop bodies of its pipelines (one warm-up step first),
``movq.decode``, and the two 2.1 pipelines themselves. Both sides take the same conditioning rows
(``prior_inputs``, ``decoder_inputs``). Per dtype, each side builds its models once (on first use),
runs every part, frees each model once no later part needs it, and all of them before the other
side builds its own. Torch runs on "cuda" when there is one (synchronised before every clock read),
JAX on its default backend (``block_until_ready``).

FLOPs per step come from jaxgen's compiled program (``cost_analysis``; XLA counts a loop body once,
and the loop body is one step); the floor is those FLOPs at the best rate of a large matmul measured
here (JAX's or PyTorch's, before and after each dtype's runs); "of matmul rate" is each side's
achieved FLOP/s (those FLOPs over its time) as a fraction of that rate. On a GPU, JAX's default
precision lets float32 matmuls and convolutions run in TF32, PyTorch's matmuls do not (its cuDNN
convolutions do): the JSON records both settings. The JSON is rewritten after every measurement (a
run killed by a timeout keeps what it measured); ``--time-budget`` skips, and records as skipped,
what is left once it is spent (checked before each measurement). Progress lines go to stderr.

On the H200 (a 10-minute limit per command; 2.1's expected to take 4-6 minutes, 2.2's about as long
(12 random models of 1.0-1.2B built on the host), mostly XLA compiles and random weights on the host;
the budget stops new measurements at 7 minutes):

    python benchmarks/kandinsky.py --dtypes bfloat16,float32 --steps 10 --time-budget 420 --json benchmarks/kandinsky-h200.json
    python benchmarks/kandinsky.py --only prior22,unet22,controlnet --dtypes bfloat16,float32 --steps 10 --time-budget 420 --json benchmarks/kandinsky22-h200.json

Kandinsky 3 at real size and 1024 x 1024 (the 3.06B UNet: 12.2 GB a side in float32, each side's models
freed before the other side builds its own; random weights for 3.3B params on the host per dtype and
side, ~1-2 minutes of the run):

    python benchmarks/kandinsky.py --only unet3,movq3 --dtypes bfloat16,float32 --steps 10 --time-budget 420 --json benchmarks/kandinsky3-h200.json

On 2 CPU cores (AMD EPYC, no AVX-512): ``--tiny`` is the smoke test (~50 s; ``--tiny --only
prior22,unet22,controlnet`` ~25 s); at real size ``--only prior,movq --steps 2 --dtypes float32``
(~4 min; the UNet at 512 px is 15-20 s per step there, and the whole pipeline holds ~14 GB per side
in float32) and ``--only prior22,unet22,controlnet --steps 2 --dtypes float32`` (one model of ~5 GB
held at a time). PyTorch's bfloat16 on a CPU without bfloat16 instructions runs at ~1 GFLOP/s (add
``--skip-torch`` for bfloat16 there). Kandinsky 3 does not fit there at real size (two 12 GB float32
UNets in 24 GB, and 6.4 TFLOP a step): ``--unet3-width-divisor 2 --resolution 256`` (``reduced_unet3``: the
same architecture at half the width, 0.77B, 4 levels of 3 blocks, heads of 64, the text 4096 wide; the
real MoVQ at 256 px):

    python benchmarks/kandinsky.py --only unet3,movq3 --unet3-width-divisor 2 --resolution 256 --steps 2 --dtypes float32 --torch-threads 1 --json benchmarks/kandinsky3-cpu.json
    python benchmarks/kandinsky.py --only unet3,movq3 --unet3-width-divisor 2 --resolution 256 --steps 2 --dtypes bfloat16 --skip-torch --json benchmarks/kandinsky3-cpu-bf16.json

(``--torch-threads 1`` because another process loaded the machine then: PyTorch's two spinning OpenMP
threads made its UNet step 7x slower) and ``--tiny --only unet3,movq3`` is their smoke test (~100 s, both
dtypes, both sides).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
CONFIGS = REPO / "tests" / "configs"
DECODER_DIR = CONFIGS / "kandinsky-community__kandinsky-2-1"
PRIOR_DIR = CONFIGS / "kandinsky-community__kandinsky-2-1-prior"
PRIOR22_DIR = CONFIGS / "kandinsky-community__kandinsky-2-2-prior"
DECODER22_DIR = CONFIGS / "kandinsky-community__kandinsky-2-2-decoder"
CONTROLNET_DIR = CONFIGS / "kandinsky-community__kandinsky-2-2-controlnet-depth"
K3_DIR = CONFIGS / "kandinsky-community__kandinsky-3"
# the step parts: (model, its scheduler's config), keys of Setup.configs
STEPS = {"prior": ("prior", "prior_scheduler"), "unet": ("unet", "scheduler"),
         "prior22": ("prior22", "prior22_scheduler"), "unet22": ("unet22", "scheduler22"),
         "controlnet": ("controlnet", "controlnet_scheduler"), "unet3": ("unet3", "scheduler3")}
PARTS = ("prior", "unet", "movq", "pipeline", "prior22", "unet22", "controlnet", "unet3", "movq3")
DEFAULT_PARTS, PARTS22, PARTS3 = PARTS[:4], PARTS[4:7], PARTS[7:]  # Kandinsky 2.1's, 2.2's, 3's
MOVQS = {"movq": "movq", "movq3": "movq3"}  # the decode parts: their MoVQ model
PIPELINE_MODELS = ("prior_text_encoder", "image_encoder", "prior", "text_encoder", "unet", "movq")
PART_MODELS = {**{part: (model,) for part, (model, _) in STEPS.items()}, **{part: (m,) for part, m in MOVQS.items()},
               "pipeline": PIPELINE_MODELS}
# 2.2's models: the classes of 2.1's; 3's MoVQ: a VQModel too (its UNet is a class of its own)
KINDS = {"prior22": "prior", "unet22": "unet", "controlnet": "unet", "movq3": "movq"}
UNITS = {**{part: "s/decode" for part in MOVQS}, "pipeline": "s/image", **{part: "s/step" for part in STEPS}}
TEXT_LEN = 77  # every Kandinsky 2.x tokenizer pads to 77
GUIDANCE = 4.0  # the default guidance scale of both pipelines
TEXT3_LEN, PROMPT3_TOKENS = 64, 63  # Kandinsky 3's text: 128 padded, cut to the longest prompt + 1
GUIDANCE3 = 3.0  # Kandinsky3Pipeline's default: (g + 1) text - g uncond, i.e. uncond + (g + 1) (text - uncond)
PROMPT = "a photo of a cat"
TOKENIZER_NOTE = ("tokenizers: tiny stand-ins built here (the Hub is unreachable); their ids are below the real "
                  "vocab sizes and prompts are padded to 77 tokens, so the models do the real work")
# dense datasheet peaks, FLOP/s, by a substring of JAX's device_kind (first match): bfloat16 on tensor cores / MXUs;
# float32 on GPUs as TF32 tensor cores (what JAX's default matmul precision uses there; PyTorch's matmuls do not)
PEAKS = (("H200", {"bfloat16": 989e12, "float32": 495e12}), ("H100 PCIe", {"bfloat16": 756e12, "float32": 378e12}),
         ("H100", {"bfloat16": 989e12, "float32": 495e12}), ("A100", {"bfloat16": 312e12, "float32": 156e12}),
         ("TPU v4", {"bfloat16": 275e12}), ("TPU v5 lite", {"bfloat16": 197e12}), ("TPU v5", {"bfloat16": 459e12}),
         ("TPU v6 lite", {"bfloat16": 918e12}))
_START = time.perf_counter()
_COMPILES: list[float] = []  # backend compile durations, from jax.monitoring


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def _read(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


@dataclasses.dataclass(frozen=True)
class Setup:
    """The architectures (config dicts, diffusers/transformers keys, by diffusers' component names;
    the prior pipeline's text and image encoders as ``prior_text_encoder``, ``image_encoder``) and the
    image size."""

    label: str
    configs: dict
    resolution: int

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(h, w, C) of the 2.x decoders' latents (diffusers' ``get_new_h_w``; C: the MoVQ's latent channels,
        which every 2.x UNet denoises, the ControlNet's encoded hint joining them inside the UNet)."""
        return self.latents_of("movq")

    def latents_of(self, movq: str) -> tuple[int, int, int]:
        """(h, w, C) of the latents the MoVQ ``movq`` decodes (Kandinsky 3's ``downscale_height_and_width``
        is 2.x's ``get_new_h_w``: 1024 px -> 128)."""
        from jaxgen.pipelines.kandinsky.common import latent_size

        factor = 2 ** (len(self.configs[movq]["block_out_channels"]) - 1)
        return (*latent_size(self.resolution, self.resolution, factor), self.configs[movq]["latent_channels"])


def real_setup(resolution: int, parts: list[str]) -> Setup:
    """The real configs (all of them; the label names the models of ``parts``' versions). The 2.2 MoVQ's
    config is the 2.1 one, the schedulers' the same files too; each part reads its own version's."""
    configs = {
        "prior": _read(PRIOR_DIR / "prior" / "config.json"),
        "prior_text_encoder": _read(PRIOR_DIR / "text_encoder" / "config.json"),
        "image_encoder": _read(PRIOR_DIR / "image_encoder" / "config.json"),
        "prior_scheduler": _read(PRIOR_DIR / "scheduler" / "scheduler_config.json"),
        "unet": _read(DECODER_DIR / "unet" / "config.json"),
        "movq": _read(DECODER_DIR / "movq" / "config.json"),
        "text_encoder": _read(DECODER_DIR / "text_encoder" / "config.json"),
        "scheduler": _read(DECODER_DIR / "scheduler" / "scheduler_config.json"),
        "prior22": _read(PRIOR22_DIR / "prior" / "config.json"),
        "prior22_scheduler": _read(PRIOR22_DIR / "scheduler" / "scheduler_config.json"),
        "unet22": _read(DECODER22_DIR / "unet" / "config.json"),
        "scheduler22": _read(DECODER22_DIR / "scheduler" / "scheduler_config.json"),
        "controlnet": _read(CONTROLNET_DIR / "unet" / "config.json"),
        "controlnet_scheduler": _read(CONTROLNET_DIR / "scheduler" / "scheduler_config.json"),
        "unet3": _read(K3_DIR / "unet" / "config.json"),
        "movq3": _read(K3_DIR / "movq" / "config.json"),
        "scheduler3": _read(K3_DIR / "scheduler" / "scheduler_config.json"),
    }
    versions = {"2.1": "prior 1.0B, UNet 1.2B, MoVQ 68M, M-CLIP, CLIP ViT-L text and vision",
                "2.2": "prior 1.0B, UNet 1.2B, ControlNet-depth UNet 1.2B", "3": "UNet 3.06B, MoVQ 0.27B"}
    used = sorted({"2.2" if part in PARTS22 else "3" if part in PARTS3 else "2.1" for part in parts})
    return Setup(f"Kandinsky {' and '.join(used)}, real configs ({'; '.join(f'{v}: {versions[v]}' for v in used)})",
                 configs, resolution)


def tiny_setup(resolution: int, parts: list[str]) -> Setup:
    """Tiny configs of the same architectures (a smoke test); the real schedulers."""
    embed, text_width = 32, 24  # prior embedding = CLIP projection = UNet cross-attention; M-CLIP width
    embed22 = 48  # 2.2's prior embedding = CLIP projection = the UNet's image-embedding width
    clip = dict(hidden_size=embed, projection_dim=embed, intermediate_size=37, num_attention_heads=4,
                num_hidden_layers=2, hidden_act="quick_gelu")
    configs = real_setup(resolution, parts).configs
    configs.update(
        prior=dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, embedding_dim=embed,
                   num_embeddings=TEXT_LEN, additional_embeddings=4),
        prior_text_encoder=dict(clip, vocab_size=64, max_position_embeddings=TEXT_LEN, eos_token_id=1, pad_token_id=1,
                                bos_token_id=0),
        image_encoder=dict(clip, image_size=32, patch_size=8),
        unet=dict(sample_size=8, in_channels=4, out_channels=8, block_out_channels=[32, 64], layers_per_block=1,
                  down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
                  up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
                  mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=8, norm_num_groups=8,
                  cross_attention_dim=embed, encoder_hid_dim=text_width, encoder_hid_dim_type="text_image_proj",
                  addition_embed_type="text_image", resnet_time_scale_shift="scale_shift"),
        movq=dict(in_channels=3, out_channels=3, block_out_channels=[32, 32, 64, 64], layers_per_block=1,
                  latent_channels=4, down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
                  up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3, norm_num_groups=32,
                  num_vq_embeddings=32, vq_embed_dim=4, norm_type="spatial"),
        text_encoder=dict(vocab_size=64, hidden_size=text_width, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=37, max_position_embeddings=81, pad_token_id=1, type_vocab_size=1,
                          layer_norm_eps=1e-5, transformerDimensions=text_width, numDims=embed),
    )
    # 2.2: no text in the decoder; the image embedding (embed22 wide) is projected to the cross-attention
    # context and added to the time embedding; the ControlNet's hint joins the latents (in_channels 4 + 4)
    configs["prior22"] = dict(configs["prior"], embedding_dim=embed22)
    configs["unet22"] = dict(configs["unet"], encoder_hid_dim=embed22, encoder_hid_dim_type="image_proj",
                             addition_embed_type="image")
    configs["controlnet"] = dict(configs["unet22"], in_channels=8, addition_embed_type="image_hint")
    # 3: a 3-level UNet (jaxgen's Kandinsky3UNetConfig.tiny: text width 20, cross-attention 24), the tiny MoVQ
    configs["unet3"] = dict(in_channels=4, time_embedding_dim=32, groups=4, attention_head_dim=8, layers_per_block=2,
                            block_out_channels=[16, 32, 32], cross_attention_dim=24, encoder_hid_dim=20)
    configs["movq3"] = dict(configs["movq"])
    return Setup("tiny configs of the same architectures (smoke test)", configs, resolution)


def reduced_unet3(setup: Setup, divisor: int) -> Setup:
    """``setup`` with Kandinsky 3's UNet ``divisor`` times narrower (a CPU stand-in for the 3.0B one): the
    level widths, the time-embedding and cross-attention widths and the group count divided, the
    head width kept (64) where it divides every attention width (``divisor`` 2), else 64 * 2 / divisor;
    the levels, blocks per level, text width (4096, Flan-UL2's) and the layout of the program unchanged.
    ``divisor`` 1: ``setup`` itself."""
    if divisor == 1:
        return setup
    cfg = setup.configs["unet3"]
    narrow = lambda n: n // divisor
    unet3 = dict(cfg, block_out_channels=[narrow(n) for n in cfg["block_out_channels"]],
                 time_embedding_dim=narrow(cfg["time_embedding_dim"]), cross_attention_dim=narrow(cfg["cross_attention_dim"]),
                 groups=max(1, narrow(cfg["groups"])), attention_head_dim=cfg["attention_head_dim"] * 2 // max(2, divisor))
    label = f"{setup.label}; Kandinsky 3's UNet {divisor}x narrower (block_out_channels {unet3['block_out_channels']})"
    return dataclasses.replace(setup, label=label, configs={**setup.configs, "unet3": unet3})


def tokenizers(folder: Path) -> dict:
    """{"clip": the prior's CLIP tokenizer, "xlmr": the decoder's XLM-RoBERTa tokenizer}: tests/conftest.py's
    tiny ones where they can be built (pytest and sentencepiece installed), else letter-level stand-ins."""
    env = {k: os.environ.get(k) for k in ("XLA_FLAGS", "JAXGEN_COMPILATION_CACHE")}
    try:  # conftest sets these two with setdefault; jax has read its flags already, but keep them as they were
        from tests.conftest import make_clip_tokenizer, make_xlm_roberta_tokenizer

        return {"clip": make_clip_tokenizer(folder / "clip", max_length=TEXT_LEN),
                "xlmr": make_xlm_roberta_tokenizer(folder / "xlmr"), "source": "tests/conftest.py"}
    except Exception as e:  # noqa: BLE001 - pytest or sentencepiece missing, or training failed
        log(f"tests.conftest's tokenizers unavailable ({type(e).__name__}: {e}): letter-level stand-ins")
        return {**_fallback_tokenizers(folder), "source": "letter-level stand-ins"}
    finally:
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _fallback_tokenizers(folder: Path) -> dict:
    from transformers import CLIPTokenizer, XLMRobertaTokenizerFast

    letters = "abcdefghijklmnopqrstuvwxyz"
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    clip = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=TEXT_LEN)
    pieces = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in letters] + [("\u2581" + c, -3.5) for c in letters] + [("<mask>", 0.0)]
    return {"clip": clip, "xlmr": XLMRobertaTokenizerFast(vocab=pieces, model_max_length=512)}


def _random(shape: tuple, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _prompt_mask(tokens: int) -> np.ndarray:
    """A (1, 77) int32 tokenizer mask with ``tokens`` real tokens."""
    return (np.arange(TEXT_LEN) < tokens).astype(np.int32)[None]


Pairs = dict[str, tuple[np.ndarray, np.ndarray]]  # conditioning name -> (positive, negative) host rows, one image


def prior_inputs(setup: Setup, model: str) -> Pairs:
    """The prior's conditioning for one image: CLIP text embeds (1, D), hidden states (1, 77, D) (D: the
    embedding width, the CLIP text width of both versions) and the tokenizer mask, prompt and negative."""
    dim = setup.configs[model]["embedding_dim"]
    return {"proj_embedding": (_random((1, dim), 2), _random((1, dim), 3)),
            "encoder_hidden_states": (_random((1, TEXT_LEN, dim), 4), _random((1, TEXT_LEN, dim), 5)),
            "attention_mask": (_prompt_mask(7), _prompt_mask(2))}


def decoder_inputs(setup: Setup, part: str) -> Pairs:
    """The UNet's conditioning for one image, in jaxgen's layout (the hint NHWC). 2.1: M-CLIP hidden states
    and text embeds, image embeds; 2.2: image embeds only (no text: encoder_hidden_states None), and for
    the ControlNet the depth hint in [0, 1] at 8x the latents' size, the same in both halves (as diffusers'
    pipeline repeats it)."""
    cfg = setup.configs[STEPS[part][0]]
    pair = lambda shape, seed: (_random(shape, seed), _random(shape, seed + 1))
    if part == "unet":
        return {"encoder_hidden_states": pair((1, TEXT_LEN, cfg["encoder_hid_dim"]), 2),
                "text_embeds": pair((1, setup.configs["text_encoder"]["numDims"]), 4),
                "image_embeds": pair((1, cfg["cross_attention_dim"]), 6)}
    out = {"image_embeds": pair((1, cfg["encoder_hid_dim"]), 6)}
    if cfg["addition_embed_type"] == "image_hint":
        h, w, _ = setup.latent_shape
        hint = np.random.default_rng(8).random((1, 8 * h, 8 * w, 3), dtype=np.float32)
        out["hint"] = (hint, hint)
    return out


def k3_inputs(setup: Setup) -> Pairs:
    """Kandinsky 3's UNet conditioning for one image, as diffusers' ``Kandinsky3Pipeline`` builds it: Flan-UL2
    hidden states (1, 64, 4096) of a prompt of 63 tokens (the 128-token padding cut to the longest prompt + 1:
    one padded token, its embedding zeroed) and its mask; the unconditional row all zero embeddings and an
    all-zero mask. (jaxgen's pipeline pads these to 128 masked tokens and passes the length, ``padded_context``:
    the same output.)"""
    width = setup.configs["unet3"]["encoder_hid_dim"]
    mask = (np.arange(TEXT3_LEN) < PROMPT3_TOKENS).astype(np.int32)[None]
    text = _random((1, TEXT3_LEN, width), 2) * mask[..., None]
    return {"encoder_hidden_states": (text, np.zeros_like(text)), "encoder_attention_mask": (mask, np.zeros_like(mask))}


def _flops(compiled: Any) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - a backend without cost analysis
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def _record_compile(event: str, duration: float, **kwargs: Any) -> None:
    if event == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(duration)


# ----------------------------------------------------------------------------- jaxgen


def shipping_denoise(pipe: Any, denoiser: Any, params: Any, latents: Any, state: Any, cond: Any,
                     steps: int, scale: float = GUIDANCE) -> tuple[tuple, dict]:
    """``sampling.denoise``'s arguments as ``DiffusionPipeline.denoise`` passes them with guidance on
    (``uncond + scale (text - uncond)``), the progress bar disabled and no callback: ``(args, static keywords)``."""
    import jax
    import jax.numpy as jnp

    from jaxgen import sharding
    from jaxgen.pipelines import sampling
    from jaxgen.pipelines.pipeline_utils import as_key

    scheduler, key = pipe.scheduler, jax.random.split(as_key(0))[1]
    args = (denoiser, scheduler, params, latents, state, cond, jnp.float32(scale), key, jnp.int32(steps))
    eta = 0.0 if sampling.accepts(scheduler.step, "eta") else None
    return args, dict(guidance=sampling.ClassifierFreeGuidance(), post_step=None, eta=eta, show_progress=False,
                      callback=None, callback_steps=1, batch_sharding=sharding.batch_sharding(pipe.mesh))


def guidance_cond(pipe: Any, pairs: Pairs, dtype: Any) -> dict:
    """``pairs`` as ``denoise`` takes them: [negative; positive] rows on the mesh, the embeddings in ``dtype``
    (the hint stays float32, as ``KandinskyDecoderBase.sample`` passes its per-image conditioning)."""
    cast = lambda name, x: np.issubdtype(x.dtype, np.floating) and name != "hint"
    return {name: pipe.guidance_rows(positive, negative, 1, dtype if cast(name, positive) else None)
            for name, (positive, negative) in pairs.items()}


class Side:
    """What both halves share: the models, built on first use and freed once no later part needs them, and
    the step parts' dispatch."""

    name: str
    models: dict

    def step(self, part: str) -> dict:
        """One guided step of a prior (``prior_step``), a 2.x decoder UNet (``decoder_step``) or Kandinsky 3's
        UNet (``k3_step``)."""
        model, scheduler = STEPS[part]
        if KINDS.get(model, model) == "prior":
            return self.prior_step(model, scheduler)
        if model == "unet3":
            return self.k3_step(model, scheduler)
        return self.decoder_step(part, model, scheduler)

    def release(self, keep: set[str]) -> None:
        for name in [name for name in self.models if name not in keep]:
            del self.models[name]
        gc.collect()

    def close(self) -> None:
        self.release(set())


class JaxSide(Side):
    """jaxgen's half of one dtype: each model built once, on first use, then the measurements."""

    name = "jaxgen"

    def __init__(self, setup: Setup, dtype_name: str, steps: int) -> None:
        import jax.numpy as jnp

        self.setup, self.dtype_name, self.dtype, self.steps = setup, dtype_name, jnp.dtype(dtype_name), steps
        self.models: dict[str, tuple] = {}
        self.tokenizers: dict | None = None

    def model_class(self, name: str) -> Any:
        """jaxgen's class of the component ``name`` (a subclass for another family overrides this)."""
        from jaxgen.models.kandinsky3_unet import Kandinsky3UNet
        from jaxgen.models.prior_transformer import PriorTransformer
        from jaxgen.models.unet_2d_condition import UNet2DConditionModel
        from jaxgen.models.vq_model import VQModel
        from jaxgen.text.clip import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
        from jaxgen.text.multilingual_clip import MultilingualCLIP

        classes = {"prior": PriorTransformer, "unet": UNet2DConditionModel, "unet3": Kandinsky3UNet, "movq": VQModel,
                   "text_encoder": MultilingualCLIP, "prior_text_encoder": CLIPTextModelWithProjection,
                   "image_encoder": CLIPVisionModelWithProjection}
        return classes[KINDS.get(name, name)]

    def model(self, name: str) -> tuple:
        """(module, params) of a component, random, in this side's dtype."""
        import jax

        from random_weights import jax_random_params

        if name not in self.models:
            start = time.perf_counter()
            module = self.model_class(name).from_config(self.setup.configs[name], dtype=self.dtype)
            params = jax.block_until_ready(jax_random_params(module, self.dtype))
            size = sum(x.size for x in jax.tree_util.tree_leaves(params))
            log(f"jaxgen {self.dtype_name}: built {name} ({size / 1e6:.0f}M params) in {time.perf_counter() - start:.1f} s")
            self.models[name] = (module, params)
        return self.models[name]

    def prior_pipe(self, full: bool = False, prior: str = "prior", scheduler: str = "prior_scheduler") -> Any:
        from jaxgen.pipelines.kandinsky import KandinskyPriorPipeline
        from jaxgen.schedulers.unclip import UnCLIPScheduler

        parts = {"prior": self.model(prior), "scheduler": UnCLIPScheduler.from_config(self.setup.configs[scheduler])}
        if full:
            parts.update(text_encoder=self.model("prior_text_encoder"), image_encoder=self.model("image_encoder"),
                         tokenizer=self.tokenizers["clip"])
        pipe = KandinskyPriorPipeline(**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def decoder_pipe(self, parts: tuple[str, ...], unet: str = "unet", scheduler: str = "scheduler",
                     movq: str = "movq") -> Any:
        """A ``KandinskyPipeline`` of ``parts``, its UNet the model ``unet`` (2.2's and 3's too: the step and
        decode parts use the pipeline for its scheduler, rows and mesh only), its MoVQ ``movq``; DDIM, or
        DDPM for Kandinsky 3's scheduler (``scheduler3``, ``Kandinsky3Pipeline``'s)."""
        from jaxgen.pipelines.kandinsky import KandinskyPipeline
        from jaxgen.schedulers.ddim import DDIMScheduler
        from jaxgen.schedulers.ddpm import DDPMScheduler

        components = {name: self.model({"unet": unet, "movq": movq}.get(name, name)) for name in parts}
        if "text_encoder" in parts:
            components["tokenizer"] = self.tokenizers["xlmr"]
        scheduler_class = DDPMScheduler if scheduler == "scheduler3" else DDIMScheduler
        pipe = KandinskyPipeline(scheduler=scheduler_class.from_config(self.setup.configs[scheduler]), **components)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _time_loop(self, pipe: Any, args: tuple, options: dict) -> dict:
        """Compile ``sampling.denoise`` ahead, warm up with one step, time ``self.steps`` steps."""
        import jax
        import jax.numpy as jnp

        from jaxgen.pipelines import sampling

        with pipe._mesh_context():
            start = time.perf_counter()
            lowered = sampling.denoise.lower(*args, **options)
            compiled = lowered.compile()
            compile_s = time.perf_counter() - start
            dynamic = args[2:8]
            jax.block_until_ready(compiled(*dynamic, jnp.int32(1)))  # latents: an array or a pytree of them
            start = time.perf_counter()
            jax.block_until_ready(compiled(*dynamic, jnp.int32(self.steps)))
            seconds = (time.perf_counter() - start) / self.steps
        return {"seconds": seconds, "compile_s": compile_s, "flops": _flops(compiled), "flops_lowered": _flops(lowered)}

    def prior_step(self, model: str, scheduler: str) -> dict:
        """One guided prior step, inputs as ``KandinskyPriorPipeline.sample_embeds`` lays them out for one image."""
        from jaxgen.pipelines.kandinsky.prior import PriorDenoiser

        pipe = self.prior_pipe(prior=model, scheduler=scheduler)
        module, params = self.model(model)
        dim = module.config.embedding_dim
        state = pipe.prepare_timesteps(max(self.steps, 2), None, None, (1, dim))
        latents = pipe.shard_rows(_random((1, dim), 1) * pipe.scheduler.init_noise_sigma, 1)
        cond = guidance_cond(pipe, prior_inputs(self.setup, model), module.dtype)
        return self._time_loop(pipe, *shipping_denoise(pipe, PriorDenoiser(module), params, latents, state, cond,
                                                       self.steps))

    def decoder_step(self, part: str, model: str, scheduler: str) -> dict:
        """One guided decoder step, inputs as ``KandinskyDecoderBase.sample`` lays them out for one image."""
        from jaxgen.pipelines.kandinsky.common import KandinskyDenoiser

        pipe = self.decoder_pipe(("unet",), unet=model, scheduler=scheduler)
        module, params = self.model(model)
        shape = (1, *self.setup.latent_shape)
        state = pipe.prepare_timesteps(self.steps, None, None, shape)
        latents = pipe.shard_rows(_random(shape, 1) * pipe.scheduler.init_noise_sigma, 1)
        cond = guidance_cond(pipe, decoder_inputs(self.setup, part), module.dtype)
        denoiser = KandinskyDenoiser(module, self.setup.latent_shape[-1])
        return self._time_loop(pipe, *shipping_denoise(pipe, denoiser, params, latents, state, cond, self.steps))

    def k3_step(self, model: str, scheduler: str) -> dict:
        """One guided Kandinsky 3 step: the shipping loop with a ``Kandinsky3UNet`` denoiser
        (``k3_denoiser``), DDPM, the guidance ``(g + 1) text - g uncond`` as ``uncond + (g + 1)(text - uncond)``,
        the rows as ``Kandinsky3Pipeline`` builds them (``k3_inputs``)."""
        pipe = self.decoder_pipe(("unet",), unet=model, scheduler=scheduler)
        module, params = self.model(model)
        shape = (1, *self.setup.latents_of("movq3"))
        state = pipe.prepare_timesteps(self.steps, None, None, shape)
        latents = pipe.shard_rows(_random(shape, 1) * pipe.scheduler.init_noise_sigma, 1)
        from jaxgen.pipelines.kandinsky3 import padded_context

        pairs = k3_inputs(self.setup)  # padded to 128 tokens as the pipeline passes them (one loop for all lengths)
        padded = [padded_context(e, m) for e, m in zip(pairs["encoder_hidden_states"], pairs["encoder_attention_mask"])]
        names = ("encoder_hidden_states", "encoder_attention_mask", "context_length")
        pairs = {name: tuple(np.asarray(p[i]) for p in padded) for i, name in enumerate(names)}
        cond = guidance_cond(pipe, pairs, module.dtype)
        denoiser = k3_denoiser(module)
        result = self._time_loop(pipe, *shipping_denoise(pipe, denoiser, params, latents, state, cond, self.steps,
                                                         GUIDANCE3 + 1.0))
        return {**result, "denoiser": f"{type(denoiser).__module__}.{type(denoiser).__qualname__}"}

    def movq(self, name: str = "movq") -> dict:
        """``decode_movq`` (what ``KandinskyDecoderBase.decode_latents`` runs) of the MoVQ ``name``, compiled ahead."""
        from jaxgen.pipelines.kandinsky.common import decode_movq

        pipe = self.decoder_pipe(("movq",), movq=name)
        module, params = self.model(name)
        latents = pipe.shard_rows(_random((1, *self.setup.latents_of(name)), 1), 1)
        with pipe._mesh_context():
            return time_compiled(decode_movq, (module,), (params, latents), _decode_reps(self.steps))

    def pipeline(self, prior_steps: int, decoder_steps: int) -> dict:
        """``KandinskyPriorPipeline`` then ``KandinskyPipeline``, one image; the second call timed."""
        prior = self.prior_pipe(full=True)
        decoder = self.decoder_pipe(("text_encoder", "unet", "movq"))

        def call() -> np.ndarray:
            embeds = prior(PROMPT, num_inference_steps=prior_steps, guidance_scale=GUIDANCE, rng=0)
            return decoder(PROMPT, embeds.image_embeds, embeds.negative_image_embeds, height=self.setup.resolution,
                           width=self.setup.resolution, num_inference_steps=decoder_steps, guidance_scale=GUIDANCE,
                           rng=0, output_type="np").images

        return _time_pipeline(call, lambda: None)


def k3_denoiser(unet: Any) -> Any:
    """The pipeline's ``sampling.Denoiser`` of a ``Kandinsky3UNet`` (``jaxgen.pipelines.kandinsky3``)."""
    from jaxgen.pipelines.kandinsky3 import Kandinsky3Denoiser

    return Kandinsky3Denoiser(unet)


def time_compiled(fn: Any, static: tuple, args: tuple, reps: int, check: Callable[[Any], dict] | None = None) -> dict:
    """A jitted ``fn`` compiled ahead (``fn.lower(*static, *args).compile()``; ``static``: its static leading
    arguments, e.g. the module), one warm-up call, then ``reps`` calls timed: seconds per call, the compile
    time, XLA's FLOP counts of the compiled and lowered programs, the output's shape (each output's, for a tuple),
    and what ``check(output)`` returns, if given (after the clock stops)."""
    import jax

    start = time.perf_counter()
    lowered = fn.lower(*static, *args)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    start = time.perf_counter()
    for _ in range(reps):
        out = compiled(*args)
    jax.block_until_ready(out)
    seconds = (time.perf_counter() - start) / reps
    shape = list(out.shape) if hasattr(out, "shape") else [list(x.shape) for x in out]
    return {"seconds": seconds, "compile_s": compile_s, "flops": _flops(compiled), "flops_lowered": _flops(lowered),
            "output_shape": shape, **(check(out) if check else {})}


def _decode_reps(steps: int) -> int:
    """Decodes timed: ``steps``, at most 3 on a CPU (seconds each there at 512 px)."""
    import jax

    return max(1, min(3, steps) if jax.default_backend() == "cpu" else steps)


def _time_pipeline(call: Callable[[], np.ndarray], sync: Callable[[], None]) -> dict:
    """The first call (compiles; XLA compiles counted) and the second (timed) of a whole-pipeline call."""
    compiles = len(_COMPILES)
    start = time.perf_counter()
    images = call()
    sync()
    first = time.perf_counter() - start
    new = _COMPILES[compiles:]
    start = time.perf_counter()
    images = call()
    sync()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "first_call_s": first, "first_call_programs_compiled": len(new),
            "first_call_compile_s": sum(new), "first_call_longest_compiles_s": sorted(new)[::-1][:4],
            "output_shape": list(np.shape(images)),
            "output_finite": bool(np.isfinite(np.asarray(images, np.float32)).all())}


# ----------------------------------------------------------------------------- diffusers


class TorchSide(Side):
    """diffusers' half of one dtype, on "cuda" when there is one: each model built once, then the measurements."""

    name = "diffusers"

    def __init__(self, setup: Setup, dtype_name: str, steps: int) -> None:
        import diffusers
        import torch
        import transformers

        diffusers.utils.logging.set_verbosity_error()  # "modules that should be kept in float32: []" after .to(dtype)
        transformers.utils.logging.set_verbosity_error()
        self.setup, self.dtype_name, self.steps = setup, dtype_name, steps
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.models: dict[str, Any] = {}
        self.tokenizers: dict | None = None

    def sync(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()

    def builder(self, name: str) -> Callable[[], Any]:
        """A constructor of diffusers' (or transformers') model ``name`` (a subclass for another family overrides
        this)."""
        import diffusers
        import transformers
        from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP

        cfg = self.setup.configs[name]
        mclip = lambda: MultilingualCLIP(MCLIPConfig(
            transformerDimSize=cfg["transformerDimensions"], imageDimSize=cfg["numDims"],
            **{k: v for k, v in cfg.items() if k not in ("transformerDimensions", "numDims", "architectures", "model_type")}))
        builders = {
            "prior": lambda: diffusers.PriorTransformer.from_config(cfg),
            "unet": lambda: diffusers.UNet2DConditionModel.from_config(cfg),
            "unet3": lambda: diffusers.Kandinsky3UNet.from_config(cfg),
            "movq": lambda: diffusers.VQModel.from_config(cfg),
            "text_encoder": mclip,
            "prior_text_encoder": lambda: transformers.CLIPTextModelWithProjection(transformers.CLIPTextConfig.from_dict(cfg)),
            "image_encoder": lambda: transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig.from_dict(cfg)),
        }
        return builders[KINDS.get(name, name)]

    def model(self, name: str) -> Any:
        from random_weights import torch_random_module

        if name not in self.models:
            start = time.perf_counter()
            self.models[name] = torch_random_module(self.builder(name), self.dtype, self.device)
            size = sum(p.numel() for p in self.models[name].parameters())
            log(f"diffusers {self.dtype_name}: built {name} ({size / 1e6:.0f}M params) in {time.perf_counter() - start:.1f} s")
        return self.models[name]

    def _tensor(self, shape: tuple, seed: int) -> Any:
        import torch

        return torch.from_numpy(_random(shape, seed)).to(self.device, self.dtype)

    def _rows(self, pairs: Pairs) -> dict:
        """``pairs`` as diffusers' pipelines lay them out: [negative; positive], images NCHW, floating ones in
        this side's dtype, masks bool."""
        import torch

        out = {}
        for name, (positive, negative) in pairs.items():
            rows = np.concatenate([negative, positive])
            rows = np.ascontiguousarray(rows.transpose(0, 3, 1, 2)) if rows.ndim == 4 else rows
            tensor = torch.from_numpy(rows).to(self.device)
            out[name] = tensor.to(self.dtype) if tensor.is_floating_point() else tensor.bool()
        return out

    def _time_steps(self, loop: Callable[[int], Any]) -> dict:
        """``loop(limit)`` runs the first ``limit`` steps of a ``self.steps``-step schedule: one to warm up, then all."""
        loop(1)
        self.sync()
        start = time.perf_counter()
        loop(self.steps)
        self.sync()
        return {"seconds": (time.perf_counter() - start) / self.steps}

    def prior_step(self, model: str, scheduler_config: str) -> dict:
        """The loop body of ``KandinskyPriorPipeline.__call__`` (``KandinskyV22PriorPipeline``'s is the same)
        for one image with guidance."""
        import diffusers
        import torch

        prior = self.model(model)
        scheduler = diffusers.UnCLIPScheduler.from_config(self.setup.configs[scheduler_config])
        dim = self.setup.configs[model]["embedding_dim"]
        cond = self._rows(prior_inputs(self.setup, model))
        start_latents = self._tensor((1, dim), 1) * scheduler.init_noise_sigma
        generator = torch.Generator(self.device).manual_seed(0)

        @torch.no_grad()
        def loop(limit: int) -> Any:
            scheduler.set_timesteps(max(self.steps, 2), device=self.device)
            timesteps = scheduler.timesteps
            latents = start_latents
            for i, t in enumerate(timesteps[:limit]):
                predicted = prior(torch.cat([latents] * 2), timestep=t, **cond).predicted_image_embedding
                uncond, text = predicted.chunk(2)
                predicted = uncond + GUIDANCE * (text - uncond)
                prev = None if i + 1 == timesteps.shape[0] else timesteps[i + 1]
                latents = scheduler.step(predicted, timestep=t, sample=latents, generator=generator,
                                         prev_timestep=prev).prev_sample
            return latents

        return self._time_steps(loop)

    def decoder_step(self, part: str, model: str, scheduler_config: str) -> dict:
        """The loop body of ``KandinskyPipeline.__call__`` (2.1), ``KandinskyV22Pipeline.__call__`` or
        ``KandinskyV22ControlnetPipeline.__call__`` (2.2: no text, ``encoder_hidden_states=None``) for one
        image with guidance."""
        import diffusers
        import torch

        unet = self.model(model)
        scheduler = diffusers.DDIMScheduler.from_config(self.setup.configs[scheduler_config])
        h, w, c = self.setup.latent_shape
        added = self._rows(decoder_inputs(self.setup, part))
        hidden = added.pop("encoder_hidden_states", None)
        start_latents = self._tensor((1, c, h, w), 1) * scheduler.init_noise_sigma
        learned = getattr(scheduler.config, "variance_type", None) in ("learned", "learned_range")
        generator = torch.Generator(self.device).manual_seed(0)

        @torch.no_grad()
        def loop(limit: int) -> Any:
            scheduler.set_timesteps(self.steps, device=self.device)
            latents = start_latents
            for t in scheduler.timesteps[:limit]:
                out = unet(sample=torch.cat([latents] * 2), timestep=t, encoder_hidden_states=hidden,
                           added_cond_kwargs=added, return_dict=False)[0]
                noise, variance = out.split(latents.shape[1], dim=1)
                uncond, text = noise.chunk(2)
                _, variance_text = variance.chunk(2)
                out = torch.cat([uncond + GUIDANCE * (text - uncond), variance_text], dim=1)
                if not learned:
                    out, _ = out.split(latents.shape[1], dim=1)
                latents = scheduler.step(out, t, latents, generator=generator).prev_sample
            return latents

        return self._time_steps(loop)

    def k3_step(self, model: str, scheduler_config: str) -> dict:
        """The loop body of ``Kandinsky3Pipeline.__call__`` for one image with guidance: the UNet on the 2
        rows [zero embeddings, all-zero mask; text], ``(g + 1) text - g uncond``, the DDPM step."""
        import diffusers
        import torch

        unet = self.model(model)
        scheduler = diffusers.DDPMScheduler.from_config(self.setup.configs[scheduler_config])
        h, w, c = self.setup.latents_of("movq3")
        cond = self._rows(k3_inputs(self.setup))  # the mask .bool(), as the pipeline's
        start_latents = self._tensor((1, c, h, w), 1) * scheduler.init_noise_sigma
        generator = torch.Generator(self.device).manual_seed(0)

        @torch.no_grad()
        def loop(limit: int) -> Any:
            scheduler.set_timesteps(self.steps, device=self.device)
            latents = start_latents
            for t in scheduler.timesteps[:limit]:
                noise = unet(torch.cat([latents] * 2), t, return_dict=False, **cond)[0]
                uncond, text = noise.chunk(2)
                noise = (GUIDANCE3 + 1.0) * text - GUIDANCE3 * uncond
                latents = scheduler.step(noise, t, latents, generator=generator).prev_sample
            return latents

        return self._time_steps(loop)

    def movq(self, name: str = "movq") -> dict:
        """``movq.decode(latents, force_not_quantize=True)`` of the MoVQ ``name``, as ``KandinskyPipeline`` and
        ``Kandinsky3Pipeline`` decode."""
        import torch

        movq = self.model(name)
        h, w, c = self.setup.latents_of(name)
        latents = self._tensor((1, c, h, w), 1)
        with torch.no_grad():
            movq.decode(latents, force_not_quantize=True)
            self.sync()
            reps = _decode_reps(self.steps)
            start = time.perf_counter()
            for _ in range(reps):
                out = movq.decode(latents, force_not_quantize=True)["sample"]
            self.sync()
        return {"seconds": (time.perf_counter() - start) / reps, "output_shape": list(out.shape)}

    def pipeline(self, prior_steps: int, decoder_steps: int) -> dict:
        """diffusers' ``KandinskyPriorPipeline`` then ``KandinskyPipeline``, one image; the second call timed."""
        import diffusers
        import torch

        cfg = self.setup.configs
        prior = diffusers.KandinskyPriorPipeline(
            prior=self.model("prior"), image_encoder=self.model("image_encoder"), text_encoder=self.model("prior_text_encoder"),
            tokenizer=self.tokenizers["clip"], scheduler=diffusers.UnCLIPScheduler.from_config(cfg["prior_scheduler"]),
            image_processor=None)
        decoder = diffusers.KandinskyPipeline(
            text_encoder=self.model("text_encoder"), tokenizer=self.tokenizers["xlmr"], unet=self.model("unet"),
            scheduler=diffusers.DDIMScheduler.from_config(cfg["scheduler"]), movq=self.model("movq"))
        for pipe in (prior, decoder):
            pipe.set_progress_bar_config(disable=True)

        def call() -> np.ndarray:
            generator = torch.Generator(self.device).manual_seed(0)
            embeds = prior(PROMPT, num_inference_steps=prior_steps, guidance_scale=GUIDANCE, generator=generator)
            return decoder(PROMPT, embeds.image_embeds, embeds.negative_image_embeds, height=self.setup.resolution,
                           width=self.setup.resolution, num_inference_steps=decoder_steps, guidance_scale=GUIDANCE,
                           generator=generator, output_type="np").images

        return _time_pipeline(call, self.sync)

    def release(self, keep: set[str]) -> None:
        import torch

        super().release(keep)
        if self.device == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- the run


class Recorder:
    """Collects the measurements, rewrites the JSON after each, and keeps the time budget."""

    def __init__(self, path: Path | None, meta: dict, budget: float | None) -> None:
        self.path, self.meta, self.budget = path, meta, budget
        self.rates: dict[str, dict] = {}
        self.measurements: list[dict] = []

    def over_budget(self) -> bool:
        return self.budget is not None and time.perf_counter() - _START > self.budget

    def add(self, part: str, dtype: str, side: str, result: dict) -> None:
        self.measurements.append({"part": part, "dtype": dtype, "side": side, **result})
        self.flush()

    def rows(self) -> list[dict]:
        """One row per (part, dtype): both sides, the FLOPs (jaxgen's compiled program), the floor."""
        rows: dict[tuple, dict] = {}
        for m in self.measurements:
            row = rows.setdefault((m["part"], m["dtype"]), {"part": m["part"], "dtype": m["dtype"], "unit": UNITS[m["part"]]})
            row[m["side"]] = {k: v for k, v in m.items() if k not in ("part", "dtype", "side")}
        for row in rows.values():
            ours, rate = row.get("jaxgen") or {}, self.rates.get(row["dtype"], {}).get("best")
            flops = ours.get("flops")
            if flops and rate:
                row.update(flops=flops, matmul_flops_per_s=rate, floor_s=flops / rate)
                for side in ("jaxgen", "diffusers"):
                    seconds = (row.get(side) or {}).get("seconds")
                    if seconds:
                        row[side]["fraction_of_matmul_rate"] = flops / seconds / rate
        return list(rows.values())

    def flush(self) -> None:
        if self.path is not None:
            data = {**self.meta, "elapsed_s": time.perf_counter() - _START, "matmul_rates": self.rates,
                    "rows": self.rows(), "measurements": self.measurements}
            self.path.write_text(json.dumps(data, indent=2) + "\n")


def matmul_rates(dtype: str, earlier: dict | None = None) -> dict:
    """FLOP/s of a large matmul in JAX and in PyTorch (8192 on a GPU, 2048 on a CPU); "best": the highest
    of these and of ``earlier`` (the same dtype measured before: on a shared machine the load varies)."""
    import jax

    from pixart import matmul_rate, torch_matmul_rate

    cpu = jax.default_backend() == "cpu"
    size = 2048 if cpu else 8192
    # PyTorch's bfloat16 matmul on a CPU without bfloat16 instructions takes a minute at 2048: probe first
    probe = torch_matmul_rate(dtype, 256) if cpu else None
    torch_rate = probe if probe and 2 * size**3 / probe > 10.0 else torch_matmul_rate(dtype, size)
    out = {"size": size, "jax": matmul_rate(dtype, size), "torch": torch_rate}
    log(f"matmul {dtype} {size}: jax {out['jax'] / 1e9:.1f}, torch {out['torch'] / 1e9:.1f} GFLOP/s")
    out["best"] = max(out["jax"], out["torch"], (earlier or {}).get("best", 0.0))
    out["measurements"] = (earlier or {}).get("measurements", []) + [{"jax": out["jax"], "torch": out["torch"]}]
    return out


def run_side(side: Side, parts: list[str], pipeline_steps: tuple[int, int], recorder: Recorder) -> None:
    """Every part on one side, in order, each model freed once no later part needs it; an error or the
    spent budget is recorded instead of a result."""
    try:
        for i, part in enumerate(parts):
            if recorder.over_budget():
                log(f"{side.name} {side.dtype_name} {part}: skipped (time budget spent)")
                recorder.add(part, side.dtype_name, side.name, {"skipped": "time budget spent"})
                continue
            log(f"{side.name} {side.dtype_name} {part}: start")
            try:
                if part in STEPS:
                    result = side.step(part)
                else:
                    result = side.pipeline(*pipeline_steps) if part == "pipeline" else side.movq(MOVQS[part])
            except Exception as e:  # noqa: BLE001 - one part failing (e.g. out of memory) must not lose the rest
                log(f"{side.name} {side.dtype_name} {part}: FAILED\n{traceback.format_exc()}")
                result = {"error": f"{type(e).__name__}: {e}"[:2000]}
            if "seconds" in result:
                extra = f", compile {result['compile_s']:.1f} s" if "compile_s" in result else ""
                if "first_call_s" in result:
                    extra = (f", first call {result['first_call_s']:.1f} s ({result['first_call_programs_compiled']} "
                             f"XLA programs compiled, {result['first_call_compile_s']:.1f} s)")
                log(f"{side.name} {side.dtype_name} {part}: {result['seconds']:.4f} {UNITS[part]}{extra}")
            recorder.add(part, side.dtype_name, side.name, result)
            side.release({model for later in parts[i + 1:] for model in PART_MODELS[later]})
    finally:
        side.close()


def _flops_check(rows: list[dict]) -> None:
    """Warn where the compiled program's FLOP count is far from the lowered (unoptimised) one's: custom
    calls (cuDNN attention, cuBLAS) may go uncounted on a GPU."""
    for row in rows:
        ours = row.get("jaxgen") or {}
        a, b = ours.get("flops"), ours.get("flops_lowered")
        if a and b and abs(a - b) > 0.1 * max(a, b):
            log(f"note: {row['part']} {row['dtype']}: compiled program {a / 1e9:.1f} GFLOP, lowered {b / 1e9:.1f} GFLOP")


def start_run(args: argparse.Namespace) -> None:
    """What every benchmark sets before it measures: JAX's GPU memory not preallocated (the GPU is shared with
    PyTorch) and no persistent compilation cache (compile times from scratch, every run), unless set already; the
    backends started with those; XLA's compile durations recorded (``_COMPILES``); ``--torch-threads``."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with PyTorch
    os.environ.setdefault("JAXGEN_COMPILATION_CACHE", "off")  # compile times from scratch, every run
    import jax

    jax.devices()  # backends start with the flags above, before tests.conftest is imported
    jax.monitoring.register_event_duration_secs_listener(_record_compile)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)


def device_peak(dtype: str) -> float | None:
    """The datasheet peak (``PEAKS``) of JAX's first device in ``dtype``, FLOP/s; None where unknown."""
    import jax

    kind = jax.devices()[0].device_kind
    return next((peaks.get(dtype) for name, peaks in PEAKS if name in kind), None)


def environment_meta(dtypes: list[str] | None = None) -> dict:
    """The JSON's record of where a run ran: both libraries' devices, the host, the devices' datasheet peaks in
    ``dtypes`` (only where given), the versions, XLA's flags, PyTorch's TF32 settings, JAX's default matmul
    precision and the 1-minute load average at the start."""
    import diffusers
    import jax
    import torch

    torch_device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    return {
        "jax_device": f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})",
        "torch_device": torch_device, "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        **({} if dtypes is None else {"device_peaks": {d: device_peak(d) for d in dtypes}}),
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "diffusers": diffusers.__version__},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "torch_tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "load_average_start": os.getloadavg()[0],
    }


def measure(recorder: Recorder, setup: Any, args: argparse.Namespace, sides: tuple[type, type],
            run: Callable[[Any], None], torch_dtypes: list[str],
            flop_counter: Callable[[Any, str, str], float | None] | None = None) -> list[dict]:
    """Every dtype of ``args.dtypes`` in turn: PyTorch's FLOP counts of each part of ``args.only`` (where
    ``flop_counter(setup, part, dtype)`` is given; in the JSON as ``torch_flop_counter``, by dtype and part), the
    matmul rates, then ``run(side)`` for jaxgen's side and diffusers' (``sides``, each built as ``side_class(setup,
    dtype, args.steps)``; diffusers' only for ``torch_dtypes``), the rates again (the best of both). Returns the rows,
    FLOPs checked, the load average at the end recorded."""
    counts: dict[str, dict] = {}
    if flop_counter is not None:
        recorder.meta["torch_flop_counter"] = counts  # FlopCounterMode on meta tensors, by dtype and part
    for dtype in args.dtypes:
        if flop_counter is not None:
            counts[dtype] = {part: flop_counter(setup, part, dtype) for part in args.only}
        recorder.rates[dtype] = matmul_rates(dtype)
        for side_class in sides[:1] + (sides[1:] if dtype in torch_dtypes else ()):
            run(side_class(setup, dtype, args.steps))
        recorder.rates[dtype] = matmul_rates(dtype, recorder.rates[dtype])  # again: the best of both
        recorder.flush()
    rows = recorder.rows()
    _flops_check(rows)
    recorder.meta["load_average_end"] = os.getloadavg()[0]
    return rows


def report(recorder: Recorder, rows: list[dict], head: str, torch_dtypes: list[str] | None = None, notes: str = "",
           flops_table: Callable[[], None] | None = None) -> None:
    """The summary line (``head``, then the environment: the devices, the dtypes diffusers ran where given, the
    host, the versions, ``notes``, the load averages, the whole run's time), the table, ``flops_table()`` where
    given, and the JSON once more."""
    meta, versions = recorder.meta, recorder.meta["versions"]
    ran = "" if torch_dtypes is None else f" (diffusers dtypes: {', '.join(torch_dtypes) or 'none'})"
    print(f"\n{head}; jax {meta['jax_device']}, torch {meta['torch_device']}{ran}; host {meta['host']}; jax "
          f"{versions['jax']}, torch {versions['torch']}, diffusers {versions['diffusers']}; {notes}1-min load average "
          f"{meta['load_average_start']:.1f} at the start, {meta['load_average_end']:.1f} at the end; whole run "
          f"{time.perf_counter() - _START:.0f} s\n")
    print_table(rows)
    if flops_table is not None:
        print()
        flops_table()
    recorder.flush()


def flop_counts(args: argparse.Namespace, setup: Any, xla_counter: Callable[[Any, str, str], dict],
                torch_counter: Callable[[Any, str, str], float | None]) -> list[dict]:
    """``--flops-only``'s counts of every part of ``args.only`` in every dtype, nothing run: XLA's
    (``xla_counter(setup, part, dtype)``: flops, flops_lowered, compile_s, on abstract shapes), PyTorch's
    (``torch_counter``, on meta tensors), and the floor at the device's datasheet peak where known."""
    out = []
    for dtype in args.dtypes:
        for part in args.only:
            xla = xla_counter(setup, part, dtype)
            counted, peak = torch_counter(setup, part, dtype), device_peak(dtype)
            out.append({"part": part, "dtype": dtype, "rows": setup.describe(part), **xla, "torch_flops": counted,
                        "device_peak": peak, "floor_at_peak_s": xla["flops"] / peak if xla["flops"] and peak else None})
            log(f"{part} {dtype}: XLA {_fmt(xla['flops'] and xla['flops'] / 1e9, '.1f')} GFLOP (compile "
                f"{xla['compile_s']:.1f} s), FlopCounterMode {_fmt(counted and counted / 1e9, '.1f')} GFLOP")
    return out


def print_flop_counts(counts: list[dict], rows: str = "rows", compiled: str = "GFLOP (XLA compiled)") -> None:
    """The table of ``flop_counts``; ``rows`` and ``compiled``: the headers of the work and XLA's count."""
    print(f"| part | dtype | {rows} | {compiled} | GFLOP (XLA lowered) | GFLOP (FlopCounterMode, diffusers) "
          "| device peak TFLOP/s | floor at peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in counts:
        g = lambda v: _fmt(v and v / 1e9, ".1f")
        print(f"| {r['part']} | {r['dtype']} | {r['rows']} | {g(r['flops'])} | {g(r['flops_lowered'])} | {g(r['torch_flops'])} "
              f"| {_fmt(r['device_peak'] and r['device_peak'] / 1e12, '.0f')} | {_fmt(r['floor_at_peak_s'], '.4g')} |")


def list_arguments(doc: str, parts: tuple[str, ...], default: tuple[str, ...] | None = None, default_note: str = "all",
                   torch_dtypes: bool = True) -> argparse.ArgumentParser:
    """A parser (described by ``doc``'s first paragraph) with the options every benchmark takes first: --only
    (``parts``; ``default``, all of them unless given, ``default_note`` in its help), --dtypes and, where
    ``torch_dtypes``, --torch-dtypes."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(default or parts), help=f"comma-separated parts, of "
                        f"{','.join(parts)} (default: {default_note})")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated, run in this order")
    if torch_dtypes:
        parser.add_argument("--torch-dtypes", default=None, help="the dtypes diffusers runs too (default: all of "
                            "--dtypes; the others run jaxgen only)")
    return parser


def run_arguments(parser: argparse.ArgumentParser, threads_note: str = "", flops_only: str | None = None) -> None:
    """The options every benchmark takes last: --tiny, --flops-only where ``flops_only`` is given (what follows
    "count the FLOPs" in its help), --skip-torch, --torch-threads (``threads_note`` ends its help), --time-budget,
    --json."""
    parser.add_argument("--tiny", action="store_true", help="tiny configs of the same architectures: a smoke test")
    if flops_only is not None:
        parser.add_argument("--flops-only", action="store_true", help=f"count the FLOPs{flops_only} (XLA on abstract "
                            "shapes, PyTorch on meta tensors) and the floor at the device's peak; run nothing")
    parser.add_argument("--skip-torch", action="store_true", help="jaxgen only")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads on CPU (default: "
                        f"torch's own; 1 helps on a machine other processes load{threads_note})")
    parser.add_argument("--time-budget", type=float, default=None, help="seconds since start after which the "
                        "remaining measurements are skipped (and recorded as skipped)")
    parser.add_argument("--json", type=Path, default=None)


def parse_lists(parser: argparse.ArgumentParser, parts: tuple[str, ...]) -> argparse.Namespace:
    """The parsed arguments, --only and --dtypes as lists (and --torch-dtypes where the script has it: all of
    --dtypes by default, none with --skip-torch), checked against ``parts`` and the two dtypes."""
    args = parser.parse_args()
    args.only = [p for p in args.only.split(",") if p]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    torch_dtypes = []
    if hasattr(args, "torch_dtypes"):
        args.torch_dtypes = args.dtypes if args.torch_dtypes is None else [d for d in args.torch_dtypes.split(",") if d]
        torch_dtypes = args.torch_dtypes = [] if args.skip_torch else args.torch_dtypes
    if unknown := set(args.only) - set(parts) or set(args.dtypes + torch_dtypes) - {"float32", "bfloat16"}:
        parser.error(f"unknown parts or dtypes: {sorted(unknown)}")
    return args


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _seconds(side: dict | None) -> str:
    if not side:
        return "-"
    if "seconds" in side:
        return f"{side['seconds']:.4g}"
    return "skipped" if "skipped" in side else "error"


def print_table(rows: list[dict]) -> None:
    print("| part | dtype | unit | jaxgen | diffusers | speed-up | jaxgen compile s | GFLOP | best matmul GFLOP/s "
          "| floor | jaxgen / floor | of matmul rate (jaxgen / diffusers) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ours, ref = r.get("jaxgen") or {}, r.get("diffusers") or {}
        speedup = f"{ref['seconds'] / ours['seconds']:.2f}x" if "seconds" in ours and "seconds" in ref else "-"
        compile_s = ours.get("compile_s", ours.get("first_call_s"))
        compile_note = "" if "compile_s" in ours or compile_s is None else " (first call)"
        floor = r.get("floor_s")
        ratio = f"{ours['seconds'] / floor:.2f}" if floor and "seconds" in ours else "-"
        fraction = lambda side: _fmt(side.get("fraction_of_matmul_rate"), ".0%")
        print(f"| {r['part']} | {r['dtype']} | {r['unit']} | {_seconds(r.get('jaxgen'))} | {_seconds(r.get('diffusers'))} "
              f"| {speedup} | {_fmt(compile_s, '.1f')}{compile_note} | {_fmt(r.get('flops') and r['flops'] / 1e9, '.1f')} "
              f"| {_fmt(r.get('matmul_flops_per_s') and r['matmul_flops_per_s'] / 1e9, '.0f')} | {_fmt(floor, '.4g')} "
              f"| {ratio} | {fraction(ours)} / {fraction(ref)} |")


def _parse() -> argparse.Namespace:
    parser = list_arguments(__doc__, PARTS, DEFAULT_PARTS, f"Kandinsky 2.1's, {','.join(DEFAULT_PARTS)}", torch_dtypes=False)
    parser.add_argument("--steps", type=int, default=None, help="steps timed (after a one-step warm-up; default "
                        "10, 3 with --tiny); the schedules have this many steps; decodes timed: as many (at most 3 on "
                        "a CPU)")
    parser.add_argument("--pipeline-steps", default=None, help="PRIOR,DECODER steps of the pipeline part (default: "
                        "--steps for both, so that it reuses the step parts' compiled loops: the schedule length is "
                        "part of the program)")
    parser.add_argument("--resolution", type=int, default=None, help="image side in pixels (default 512, 1024 when "
                        "every part is Kandinsky 3's; 64 with --tiny)")
    parser.add_argument("--unet3-width-divisor", type=int, default=1, help="Kandinsky 3's UNet this many times "
                        "narrower (2 or 4: a CPU stand-in for the 3.0B model; see reduced_unet3; default 1, real size)")
    run_arguments(parser, ": OpenMP's spinning threads starve")
    args = parse_lists(parser, PARTS)
    args.resolution = args.resolution or (64 if args.tiny else 1024 if set(args.only) <= set(PARTS3) else 512)
    args.steps = args.steps or (3 if args.tiny else 10)
    steps = args.pipeline_steps.split(",") if args.pipeline_steps else [args.steps, args.steps]
    args.pipeline_steps = tuple(int(s) for s in steps)
    return args


def _meta3(args: argparse.Namespace, setup: Setup) -> dict:
    """Kandinsky 3's settings, when its parts run: guidance, text rows, the UNet's reduction, the latents."""
    if not set(args.only) & set(PARTS3):
        return {}
    return {"kandinsky3": {"guidance_scale": GUIDANCE3, "text_tokens": TEXT3_LEN, "prompt_tokens": PROMPT3_TOKENS,
                           "unet3_width_divisor": args.unet3_width_divisor,
                           "latent_shape": list(setup.latents_of("movq3"))}}


def _meta(args: argparse.Namespace, setup: Setup, tokenizer_source: str) -> dict:
    return {
        "setup": setup.label, "resolution": setup.resolution, "latent_shape": list(setup.latent_shape),
        "configs": setup.configs, "parts": args.only, "dtypes": args.dtypes, "steps_timed": args.steps,
        "pipeline_steps": {"prior": args.pipeline_steps[0], "decoder": args.pipeline_steps[1]},
        "guidance_scale": GUIDANCE, "cfg_rows": 2, **_meta3(args, setup),
        "tokenizers": f"{TOKENIZER_NOTE} ({tokenizer_source})", **environment_meta(),
    }


def main() -> None:
    args = _parse()
    import tempfile

    start_run(args)
    setup = reduced_unet3((tiny_setup if args.tiny else real_setup)(args.resolution, args.only), args.unet3_width_divisor)
    with tempfile.TemporaryDirectory() as folder:
        toks = tokenizers(Path(folder))
        recorder = Recorder(args.json, _meta(args, setup, toks["source"]), args.time_budget)
        log(f"{setup.label}, {args.resolution}px, latents {setup.latent_shape}; parts {args.only}; dtypes {args.dtypes}")

        def run(side: Side) -> None:
            side.tokenizers = toks
            run_side(side, args.only, args.pipeline_steps, recorder)

        rows = measure(recorder, setup, args, (JaxSide, TorchSide), run, [] if args.skip_torch else args.dtypes)
    pipeline = (f"; pipeline {args.pipeline_steps[0]} prior + {args.pipeline_steps[1]} decoder steps"
                if "pipeline" in args.only else "")
    k3 = (f" (Kandinsky 3: {GUIDANCE3}, as (g + 1) text - g uncond; {TEXT3_LEN} text tokens, {PROMPT3_TOKENS} "
          f"unpadded, the uncond row zeros)" if set(args.only) & set(PARTS3) else "")
    report(recorder, rows, f"{setup.label}; {args.resolution}x{args.resolution}, latents {tuple(setup.latent_shape)}, "
           f"guidance {GUIDANCE}{k3} (2 rows per image); {args.steps} steps timed{pipeline}",
           notes=f"{recorder.meta['tokenizers']}; ")


if __name__ == "__main__":
    main()
