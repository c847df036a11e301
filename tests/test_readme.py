"""Every Python example in README.md runs, as written, against tiny local models in place of the Hub ids.

The examples are extracted from the README's ```python blocks; each Hub id they name is replaced by
the folder of a tiny random-weight model of the same family and pixel geometry (the PixArt ones keep
1024 / 512 px through a patch size of 8), and the block is executed in a fresh working directory
holding a ``prompts.txt`` and a ``cat.png``. ``jax.distributed.initialize`` is a no-op (one process) and ``sys.argv`` is
what the multi-host example's command line gives it. Examples that use devices or processes (``MULTI_DEVICE``)
run on the 8 CPU devices of the test session; the others on one (as on one GPU), where a single image is not
padded to 8 rows. An example naming a Hub id this file does not
know fails, so a new example cannot slip past untested.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import PIL.Image
import pytest

from tests.conftest import build_tiny_pixart

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
HUB_ID = re.compile(r"""["']([A-Za-z0-9][\w.-]*/[\w.-]+)["']""")
MULTI_DEVICE = re.compile(r"jax\.(distributed|process_|local_device_count|device_count|devices|local_devices)|mesh")
PROMPTS = [f"prompt number {i}: a small cactus in the desert" for i in range(16)]  # one batch of 2 x 8 devices


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory) -> dict[str, Path]:
    """Hub id -> the folder of a tiny model standing in for it."""
    from tests.test_deepfloyd_if import _build as build_if
    from tests.test_stable_diffusion_upscale import build_tiny_upscale

    from tests.test_kandinsky import build_tiny_kandinsky
    from tests.test_kandinsky22 import build_tiny_kandinsky22
    from tests.test_kandinsky3 import build_tiny_kandinsky3
    from tests.test_unidiffuser import build_tiny_unidiffuser
    from tests.test_wuerstchen import build_tiny_wuerstchen

    root = tmp_path_factory.mktemp("readme_models")
    geometry = dict(patch_size=8, vae_levels=4, vae_channels=(4, 8, 8, 8), vae_mid_attention=False)
    models = {
        "PixArt-alpha/PixArt-XL-2-1024-MS": lambda f: build_tiny_pixart(f, sample_size=128, seed=20, **geometry),
        "PixArt-alpha/PixArt-XL-2-512x512": lambda f: build_tiny_pixart(f, sample_size=64, seed=30, **geometry),
        "DeepFloyd/IF-I-XL-v1.0": lambda f: build_if(f, stage2=False, seed=40),
        "DeepFloyd/IF-II-L-v1.0": lambda f: build_if(f, stage2=True, seed=50),
        "stabilityai/stable-diffusion-x4-upscaler": build_tiny_upscale,
    }
    folders = {}
    for repo, build in models.items():
        folders[repo] = root / repo.replace("/", "__")
        build(folders[repo])
    # Kandinsky 2.1: a MoVQ of 4 levels (8x, as the real one), so that 512 px is 64 x 64 latents
    kandinsky, _ = build_tiny_kandinsky(root / "kandinsky", movq_levels=4)
    for name, repo in (("prior", "kandinsky-2-1-prior"), ("decoder", "kandinsky-2-1"), ("inpaint", "kandinsky-2-1-inpaint")):
        folders[f"kandinsky-community/{repo}"] = kandinsky[name]
    kandinsky22, _ = build_tiny_kandinsky22(root / "kandinsky22", movq_levels=4)
    for name, repo in (("prior", "kandinsky-2-2-prior"), ("decoder", "kandinsky-2-2-decoder"),
                       ("controlnet", "kandinsky-2-2-controlnet-depth")):
        folders[f"kandinsky-community/{repo}"] = kandinsky22[name]
    folders["kandinsky-community/kandinsky-3"] = root / "kandinsky3"
    build_tiny_kandinsky3(folders["kandinsky-community/kandinsky-3"], movq_levels=4, unet_levels=4)
    wuerstchen, _ = build_tiny_wuerstchen(root / "wuerstchen")  # the real sizes: 42.67 and 10.67 px per pixel
    folders["warp-ai/wuerstchen-prior"], folders["warp-ai/wuerstchen"] = wuerstchen["prior"], wuerstchen["decoder"]
    folders["thu-ml/unidiffuser-v1"] = root / "unidiffuser"  # its own 16 px: the README names no size
    build_tiny_unidiffuser(folders["thu-ml/unidiffuser-v1"])
    return folders


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(index, tiny_hub, tmp_path, monkeypatch, request):
    import jax

    code = BLOCKS[index]
    for repo in sorted(set(HUB_ID.findall(code))):
        if repo in tiny_hub:
            code = code.replace(f'"{repo}"', repr(str(tiny_hub[repo]))).replace(f"'{repo}'", repr(str(tiny_hub[repo])))
    left = [m for m in HUB_ID.findall(code) if not Path(m).exists() and m.count("/") == 1 and "." not in m.split("/")[0]]
    assert not left, f"README block {index} names Hub ids with no tiny stand-in here: {left}"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    PIL.Image.new("RGB", (640, 480), (200, 120, 60)).save(tmp_path / "cat.png")  # "a picture of yours"
    if not MULTI_DEVICE.search(code):  # a family's example: on one device (8 here would pad its image to 8 rows)
        request.getfixturevalue("one_device")
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args, **kwargs: None)
    monkeypatch.setattr(sys, "argv", ["generate.py", "prompts.txt", "out"])
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__main__"})
    for saved in re.findall(r"""\.save\(f?["']([^"'{]+)["']""", code):  # what the example says it writes
        assert (tmp_path / saved).is_file(), saved
