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
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402 - the shared timing, recording and table helpers (it puts the repository on sys.path)
from harness import (CONFIGS, decode_reps, environment_meta, list_arguments, log, measure, parse_lists,  # noqa: E402
                     random_array, read_config, report, run_arguments, shipping_denoise, start_run, time_compiled,
                     time_pipeline)

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
        "prior": read_config(PRIOR_DIR / "prior" / "config.json"),
        "prior_text_encoder": read_config(PRIOR_DIR / "text_encoder" / "config.json"),
        "image_encoder": read_config(PRIOR_DIR / "image_encoder" / "config.json"),
        "prior_scheduler": read_config(PRIOR_DIR / "scheduler" / "scheduler_config.json"),
        "unet": read_config(DECODER_DIR / "unet" / "config.json"),
        "movq": read_config(DECODER_DIR / "movq" / "config.json"),
        "text_encoder": read_config(DECODER_DIR / "text_encoder" / "config.json"),
        "scheduler": read_config(DECODER_DIR / "scheduler" / "scheduler_config.json"),
        "prior22": read_config(PRIOR22_DIR / "prior" / "config.json"),
        "prior22_scheduler": read_config(PRIOR22_DIR / "scheduler" / "scheduler_config.json"),
        "unet22": read_config(DECODER22_DIR / "unet" / "config.json"),
        "scheduler22": read_config(DECODER22_DIR / "scheduler" / "scheduler_config.json"),
        "controlnet": read_config(CONTROLNET_DIR / "unet" / "config.json"),
        "controlnet_scheduler": read_config(CONTROLNET_DIR / "scheduler" / "scheduler_config.json"),
        "unet3": read_config(K3_DIR / "unet" / "config.json"),
        "movq3": read_config(K3_DIR / "movq" / "config.json"),
        "scheduler3": read_config(K3_DIR / "scheduler" / "scheduler_config.json"),
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


def _prompt_mask(tokens: int) -> np.ndarray:
    """A (1, 77) int32 tokenizer mask with ``tokens`` real tokens."""
    return (np.arange(TEXT_LEN) < tokens).astype(np.int32)[None]


Pairs = dict[str, tuple[np.ndarray, np.ndarray]]  # conditioning name -> (positive, negative) host rows, one image


def prior_inputs(setup: Setup, model: str) -> Pairs:
    """The prior's conditioning for one image: CLIP text embeds (1, D), hidden states (1, 77, D) (D: the
    embedding width, the CLIP text width of both versions) and the tokenizer mask, prompt and negative."""
    dim = setup.configs[model]["embedding_dim"]
    return {"proj_embedding": (random_array((1, dim), 2), random_array((1, dim), 3)),
            "encoder_hidden_states": (random_array((1, TEXT_LEN, dim), 4), random_array((1, TEXT_LEN, dim), 5)),
            "attention_mask": (_prompt_mask(7), _prompt_mask(2))}


def decoder_inputs(setup: Setup, part: str) -> Pairs:
    """The UNet's conditioning for one image, in jaxgen's layout (the hint NHWC). 2.1: M-CLIP hidden states
    and text embeds, image embeds; 2.2: image embeds only (no text: encoder_hidden_states None), and for
    the ControlNet the depth hint in [0, 1] at 8x the latents' size, the same in both halves (as diffusers'
    pipeline repeats it)."""
    cfg = setup.configs[STEPS[part][0]]
    pair = lambda shape, seed: (random_array(shape, seed), random_array(shape, seed + 1))
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
    text = random_array((1, TEXT3_LEN, width), 2) * mask[..., None]
    return {"encoder_hidden_states": (text, np.zeros_like(text)), "encoder_attention_mask": (mask, np.zeros_like(mask))}


# ----------------------------------------------------------------------------- jaxgen


def guidance_cond(pipe: Any, pairs: Pairs, dtype: Any) -> dict:
    """``pairs`` as ``denoise`` takes them: [negative; positive] rows on the mesh, the embeddings in ``dtype``
    (the hint stays float32, as ``KandinskyDecoderBase.sample`` passes its per-image conditioning)."""
    cast = lambda name, x: np.issubdtype(x.dtype, np.floating) and name != "hint"
    return {name: pipe.guidance_rows(positive, negative, 1, dtype if cast(name, positive) else None)
            for name, (positive, negative) in pairs.items()}


class Side(harness.Side):
    """What both Kandinsky halves add to ``harness.Side``: the step parts' dispatch and the pipelines' tokenizers."""

    tokenizers: dict | None = None

    def step(self, part: str) -> dict:
        """One guided step of a prior (``prior_step``), a 2.x decoder UNet (``decoder_step``) or Kandinsky 3's
        UNet (``k3_step``)."""
        model, scheduler = STEPS[part]
        if KINDS.get(model, model) == "prior":
            return self.prior_step(model, scheduler)
        if model == "unet3":
            return self.k3_step(model, scheduler)
        return self.decoder_step(part, model, scheduler)


class JaxSide(Side, harness.JaxSide):
    """jaxgen's half of one dtype: ``harness.JaxSide``'s models and timing with Kandinsky's models and pipelines."""

    def model_class(self, name: str) -> Any:
        """jaxgen's class of the component ``name``."""
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

    def prior_step(self, model: str, scheduler: str) -> dict:
        """One guided prior step, inputs as ``KandinskyPriorPipeline.sample_embeds`` lays them out for one image."""
        from jaxgen.pipelines.kandinsky.prior import PriorDenoiser

        pipe = self.prior_pipe(prior=model, scheduler=scheduler)
        module, params = self.model(model)
        dim = module.config.embedding_dim
        state = pipe.prepare_timesteps(max(self.steps, 2), None, None, (1, dim))
        latents = pipe.shard_rows(random_array((1, dim), 1) * pipe.scheduler.init_noise_sigma, 1)
        cond = guidance_cond(pipe, prior_inputs(self.setup, model), module.dtype)
        return self._time_loop(pipe, *shipping_denoise(pipe, PriorDenoiser(module), params, latents, state, cond,
                                                       self.steps, GUIDANCE))

    def decoder_step(self, part: str, model: str, scheduler: str) -> dict:
        """One guided decoder step, inputs as ``KandinskyDecoderBase.sample`` lays them out for one image."""
        from jaxgen.pipelines.kandinsky.common import KandinskyDenoiser

        pipe = self.decoder_pipe(("unet",), unet=model, scheduler=scheduler)
        module, params = self.model(model)
        shape = (1, *self.setup.latent_shape)
        state = pipe.prepare_timesteps(self.steps, None, None, shape)
        latents = pipe.shard_rows(random_array(shape, 1) * pipe.scheduler.init_noise_sigma, 1)
        cond = guidance_cond(pipe, decoder_inputs(self.setup, part), module.dtype)
        denoiser = KandinskyDenoiser(module, self.setup.latent_shape[-1])
        return self._time_loop(pipe, *shipping_denoise(pipe, denoiser, params, latents, state, cond, self.steps,
                                                       GUIDANCE))

    def k3_step(self, model: str, scheduler: str) -> dict:
        """One guided Kandinsky 3 step: the shipping loop with a ``Kandinsky3UNet`` denoiser
        (``k3_denoiser``), DDPM, the guidance ``(g + 1) text - g uncond`` as ``uncond + (g + 1)(text - uncond)``,
        the rows as ``Kandinsky3Pipeline`` builds them (``k3_inputs``)."""
        pipe = self.decoder_pipe(("unet",), unet=model, scheduler=scheduler)
        module, params = self.model(model)
        shape = (1, *self.setup.latents_of("movq3"))
        state = pipe.prepare_timesteps(self.steps, None, None, shape)
        latents = pipe.shard_rows(random_array(shape, 1) * pipe.scheduler.init_noise_sigma, 1)
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
        latents = pipe.shard_rows(random_array((1, *self.setup.latents_of(name)), 1), 1)
        with pipe._mesh_context():
            return time_compiled(decode_movq, (module,), (params, latents), decode_reps(self.steps))

    def pipeline(self, prior_steps: int, decoder_steps: int) -> dict:
        """``KandinskyPriorPipeline`` then ``KandinskyPipeline``, one image; the second call timed."""
        prior = self.prior_pipe(full=True)
        decoder = self.decoder_pipe(("text_encoder", "unet", "movq"))

        def call() -> np.ndarray:
            embeds = prior(PROMPT, num_inference_steps=prior_steps, guidance_scale=GUIDANCE, rng=0)
            return decoder(PROMPT, embeds.image_embeds, embeds.negative_image_embeds, height=self.setup.resolution,
                           width=self.setup.resolution, num_inference_steps=decoder_steps, guidance_scale=GUIDANCE,
                           rng=0, output_type="np").images

        return time_pipeline(call, lambda: None)


def k3_denoiser(unet: Any) -> Any:
    """The pipeline's ``sampling.Denoiser`` of a ``Kandinsky3UNet`` (``jaxgen.pipelines.kandinsky3``)."""
    from jaxgen.pipelines.kandinsky3 import Kandinsky3Denoiser

    return Kandinsky3Denoiser(unet)


# ----------------------------------------------------------------------------- diffusers


class TorchSide(Side, harness.TorchSide):
    """diffusers' half of one dtype: ``harness.TorchSide``'s models and timing with Kandinsky's models and loop
    bodies."""

    def builder(self, name: str) -> Callable[[], Any]:
        """A constructor of diffusers' (or transformers') model ``name``."""
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

    def _tensor(self, shape: tuple, seed: int) -> Any:
        return self._to_tensor(random_array(shape, seed))

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
            reps = decode_reps(self.steps)
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

        return time_pipeline(call, self.sync)


# ----------------------------------------------------------------------------- the run


def run_side(side: Side, parts: list[str], pipeline_steps: tuple[int, int], recorder: harness.Recorder) -> None:
    """Every part on one side, in order (``harness.run_side``), each model freed once no later part needs it."""
    def measure_part(part: str) -> dict:
        if part in STEPS:
            return side.step(part)
        return side.pipeline(*pipeline_steps) if part == "pipeline" else side.movq(MOVQS[part])

    harness.run_side(side, parts, recorder, measure_part,
                     keep=lambda i: {model for later in parts[i + 1:] for model in PART_MODELS[later]})


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
        recorder = harness.Recorder(args.json, _meta(args, setup, toks["source"]), args.time_budget, UNITS)
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
