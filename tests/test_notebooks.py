"""Every example notebook in docs/examples runs, as written, on the test session's tiny models.

Each family with pipelines has a notebook (``<family>.ipynb``). A notebook is nbformat 4 JSON saved without
outputs; its code cells run in order in one fresh namespace, in-process (as tests/test_readme.py runs the
README's blocks), on one device, in a fresh working directory. ``tiny_models.tiny_model`` (which builds tiny
stand-ins when a notebook runs outside the tests) is replaced by a lookup in the session's ``tiny_hub``, so
nothing is built twice; the notebooks use the README examples' sizes, step counts and seeds, so they reuse
the programs the README tests compiled in the same process.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import PIL.Image
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
NOT_FAMILIES = {"common", "stable_diffusion_upscale"}  # shared models; IF's stage III (in deepfloyd_if.ipynb)
TINY_MODEL = re.compile(r"""^(\w+) = tiny_model\(["']([^"']+)["']\)""", flags=re.M)

# What each notebook leaves in its namespace: name -> (count of PIL images in it, their size), and the grid's
# size. Sizes are the tiny stand-ins' (tests/conftest.py build_tiny_hub): the README examples' geometry where
# the README names a size.
EXPECTED = {
    "pixart.ipynb": {"images": (2, (1024, 1024)), "grid": (1, (1024, 512))},
    "deepfloyd_if.ipynb": {"images": (1, (64, 64)), "grid": (1, (768, 256))},  # the tiny IF cascade ends at 64 px
    "kandinsky.ipynb": {"image": (1, (512, 512)), "red_cat": (1, (512, 512)), "cat_with_hat": (1, (512, 512)),
                        "grid": (1, (768, 256))},
    "kandinsky2_2.ipynb": {"portrait": (1, (512, 512)), "robot": (1, (512, 512)), "grid": (1, (768, 256))},
    "kandinsky3.ipynb": {"image": (1, (512, 512)), "grid": (1, (256, 256))},
    "wuerstchen.ipynb": {"images": (2, (768, 512)), "grid": (1, (1536, 512))},
    "unidiffuser.ipynb": {"image": (1, (16, 16)), "variation": (1, (16, 16)), "grid": (1, (64, 16))},  # its own 16 px
}


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_every_family_has_a_notebook():
    from jaxgen.registry import FAMILIES

    families = {family.name for family in FAMILIES if family.pipelines} - NOT_FAMILIES
    assert families, "no families registered"
    missing = sorted(f"{name}.ipynb" for name in families if not (EXAMPLES / f"{name}.ipynb").is_file())
    assert not missing, f"families without an example notebook in docs/examples: {missing}"
    assert {path.name for path in NOTEBOOKS} == set(EXPECTED), "a notebook without checks here, or checks without it"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_is_nbformat4_without_outputs(path):
    notebook = _load(path)
    assert notebook["nbformat"] == 4 and isinstance(notebook["nbformat_minor"], int)
    assert isinstance(notebook["metadata"], dict)
    cells = notebook["cells"]
    assert cells and cells[0]["cell_type"] == "markdown", "a notebook opens with a markdown introduction"
    for cell in cells:
        assert cell["cell_type"] in ("markdown", "code"), cell["cell_type"]
        assert isinstance(cell["source"], (str, list)) and all(isinstance(s, str) for s in cell["source"])
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, "saved with outputs"
            compile(_source(cell), path.name, "exec")  # plain Python, no IPython magics
    code = "\n".join(_source(cell) for cell in cells if cell["cell_type"] == "code")
    picked = TINY_MODEL.findall(code)
    assert picked, "the notebook picks its model with tiny_model(...)"
    for name, repo in picked:  # the real checkpoint's line right beside the tiny one
        assert re.search(rf"""^# {name} = ["']{re.escape(repo)}["']""", code, flags=re.M), (name, repo)
    assert "import jaxgen" in code and "make_image_grid" in code


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs(path, tiny_hub, one_device, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import tiny_models

    monkeypatch.setattr(tiny_models, "tiny_model", lambda repo_id: str(tiny_hub[repo_id]))
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    cells = [cell for cell in _load(path)["cells"] if cell["cell_type"] == "code"]
    for index, cell in enumerate(cells):
        exec(compile(_source(cell), f"{path.name} code cell {index}", "exec"), namespace)

    for name, (count, size) in EXPECTED[path.name].items():
        value = namespace[name]
        images = value if isinstance(value, list) else [value]
        assert len(images) == count and all(isinstance(image, PIL.Image.Image) for image in images), (name, value)
        if size is not None:
            assert {image.size for image in images} == {size}, (name, [image.size for image in images])
    if path.name == "unidiffuser.ipynb":  # captions too: image to text, and the joint mode's 2 x 2
        assert isinstance(namespace["caption"], str)
        assert len(namespace["sample"].images) == 2 and len(namespace["sample"].text) == 2
