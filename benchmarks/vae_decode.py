"""The AutoencoderKL decode alone, jaxgen against diffusers: one real config, random weights, one latent.

jaxgen runs the pipelines' jitted ``decode_latents`` (the first call compiles and is not counted); diffusers runs
``AutoencoderKL.decode`` under ``torch.inference_mode``. Prints each call's seconds. On 2 CPU cores:

    python benchmarks/vae_decode.py --config tests/configs/thu-ml__unidiffuser-v1/vae --size 512
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _seconds(call, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        out.append(round(time.perf_counter() - start, 3))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a folder holding an AutoencoderKL config.json")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (latents: size / 8)")
    parser.add_argument("--reps", type=int, default=2, help="timed calls per side")
    args = parser.parse_args(argv)

    import diffusers
    import jax.numpy as jnp
    import torch

    from benchmarks.random_weights import jax_random_params
    from jaxgen.models.autoencoder_kl import AutoencoderKL
    from jaxgen.pipelines.pipeline_utils import decode_latents

    folder = Path(args.config)
    module = AutoencoderKL.from_config_file(folder, dtype=jnp.float32)
    channels = module.config.latent_channels
    latents = np.random.default_rng(0).standard_normal((1, args.size // 8, args.size // 8, channels), np.float32)
    params = jax_random_params(module, jnp.float32)
    decode_latents(module, params, jnp.asarray(latents)).block_until_ready()  # compiles
    print("jaxgen decode s:", _seconds(lambda: decode_latents(module, params, jnp.asarray(latents)).block_until_ready(),
                                      args.reps), flush=True)
    model = diffusers.AutoencoderKL.from_config(diffusers.AutoencoderKL.load_config(folder)).eval()
    nchw = torch.from_numpy(np.ascontiguousarray(latents.transpose(0, 3, 1, 2)))
    with torch.inference_mode():
        print("diffusers decode s:", _seconds(lambda: model.decode(nchw), args.reps), flush=True)


if __name__ == "__main__":
    main()
