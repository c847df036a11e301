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


README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
HUB_ID = re.compile(r"""["']([A-Za-z0-9][\w.-]*/[\w.-]+)["']""")
MULTI_DEVICE = re.compile(r"jax\.(distributed|process_|local_device_count|device_count|devices|local_devices)|mesh")
PROMPTS = [f"prompt number {i}: a small cactus in the desert" for i in range(16)]  # one batch of 2 x 8 devices


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
