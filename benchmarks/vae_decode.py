"""The AutoencoderKL decode alone, jaxgen against diffusers: one real config, random weights, one latent.

jaxgen runs the pipelines' jitted ``decode_latents`` (the first call compiles and is not counted); diffusers runs
``AutoencoderKL.decode`` under ``torch.inference_mode``. Prints each call's seconds. ``--ops``: instead, the
decoder's largest ops at 512 px alone (3x3 convolutions, GroupNorm + SiLU), XLA against PyTorch, best of 3. On 2 CPU
cores:

    python benchmarks/vae_decode.py --config tests/configs/thu-ml__unidiffuser-v1/vae --size 512
    python benchmarks/vae_decode.py --ops
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


def _best(call, reps: int = 3) -> float:
    call()
    return min(_seconds(call, reps))


def ops() -> None:
    """The SD VAE decoder's largest ops, alone, float32, as jaxgen builds them (``jaxgen.nn.resnet``'s ``conv2d``
    and ``group_norm``, then SiLU) against ``torch.nn.functional``'s: each 3x3 convolution shape and GroupNorm(32)."""
    import jax
    import jax.numpy as jnp
    import torch

    from jaxgen.nn.resnet import conv2d, group_norm

    rng = np.random.default_rng(0)

    def jitted(module, x: np.ndarray, then=lambda y: y):
        """A call of ``then(module(x))``, jitted, params initialised (flax's defaults: values do not change time)."""
        params = module.init(jax.random.key(0), jnp.asarray(x[:, :8, :8]))
        apply = jax.jit(lambda p, a: then(module.apply(p, a)))
        return lambda: apply(params, jnp.asarray(x)).block_until_ready()

    for side, cin, cout in [(512, 128, 128), (512, 256, 256), (256, 256, 256), (512, 256, 128)]:
        x = rng.standard_normal((1, side, side, cin), np.float32)
        w = torch.from_numpy(rng.standard_normal((cout, cin, 3, 3), np.float32) * 0.05)
        tx, bias = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.zeros(cout)
        with torch.inference_mode():
            t_torch = _best(lambda: torch.nn.functional.conv2d(tx, w, bias, padding=1))
        t_jax = _best(jitted(conv2d(cout, 3, padding=1), x))
        gflop = 2 * 9 * cin * cout * side * side / 1e9
        print(f"conv3x3 {side}^2 {cin}->{cout}: {gflop:.0f} GFLOP, jax {t_jax:.3f} s ({gflop / t_jax:.0f} GFLOP/s), "
              f"torch {t_torch:.3f} s ({gflop / t_torch:.0f} GFLOP/s)", flush=True)
    for side, c in [(512, 128), (512, 256)]:
        x = rng.standard_normal((1, side, side, c), np.float32)
        tx = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        with torch.inference_mode():
            t_torch = _best(lambda: torch.nn.functional.silu(torch.nn.functional.group_norm(tx, 32, eps=1e-6)))

        t_jax = _best(jitted(group_norm(32, 1e-6, jnp.float32, "norm"), x, then=jax.nn.silu))
        print(f"groupnorm+silu {side}^2 x {c}: jax {t_jax:.3f} s, torch {t_torch:.3f} s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a folder holding an AutoencoderKL config.json")
    parser.add_argument("--ops", action="store_true", help="time the decoder's largest ops alone instead")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (latents: size / 8)")
    parser.add_argument("--reps", type=int, default=2, help="timed calls per side")
    args = parser.parse_args(argv)
    if args.ops:
        return ops()
    if not args.config:
        parser.error("--config: a folder holding an AutoencoderKL config.json (or --ops)")

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
