"""`python -m convert SRC DST` on every family's checkpoints (the tiny stand-ins of ``tiny_hub``).

For each folder: convert in-process (``convert.__main__.main``, as the command line does), load the pipeline
model_index.json names from SRC and from DST (SRC deleted first: DST stands alone), and compare every component:
model params bit for bit (structure, shapes, dtypes, bytes), tokenizers by vocabulary and tokenization,
schedulers and image processors by config. Nothing is run: compiling the pipelines is what takes time.
DST holds no pickle file, and no model component of DST is read from safetensors (no conversion at loading).
Kandinsky 2.1 / 2.2 and Würstchen decoders also load through ``AutoPipelineForText2Image``, whose combined
pipeline finds the prior in the decoder's README.md: converted or not, the same prior.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from convert.__main__ import main as convert_main

HUB_IDS = (
    "PixArt-alpha/PixArt-XL-2-512x512", "DeepFloyd/IF-I-XL-v1.0", "DeepFloyd/IF-II-L-v1.0",
    "stabilityai/stable-diffusion-x4-upscaler", "kandinsky-community/kandinsky-2-1-prior",
    "kandinsky-community/kandinsky-2-1", "kandinsky-community/kandinsky-2-2-prior",
    "kandinsky-community/kandinsky-2-2-decoder", "kandinsky-community/kandinsky-3", "warp-ai/wuerstchen-prior",
    "warp-ai/wuerstchen", "thu-ml/unidiffuser-v1",
)
"""One tiny_hub checkpoint per pipeline layout: every family's prior and decoder. The others hold the same component
classes under other configs (PixArt 1024, PixArt-Σ; Kandinsky's inpainting and ControlNet decoders), whose key maps do not
depend on the config beyond what these cover; left out for the suite's time."""
SAME_CLASSES = ("PixArt-alpha/PixArt-XL-2-1024-MS", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
                "kandinsky-community/kandinsky-2-1-inpaint",
                "kandinsky-community/kandinsky-2-2-decoder-inpaint", "kandinsky-community/kandinsky-2-2-controlnet-depth")
COMBINED = ("kandinsky-community/kandinsky-2-1", "kandinsky-community/kandinsky-2-2-decoder", "warp-ai/wuerstchen")
"""Decoders that ``AutoPipelineForText2Image`` loads as a combined pipeline, with the prior their README.md names."""
PICKLES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SAMPLE = "a photo of a cat on the moon"


def _pipeline_class(folder: Path) -> type:
    from jaxgen.registry import pipeline_class

    return pipeline_class(json.loads((folder / "model_index.json").read_text())["_class_name"])


def _assert_same_params(a: Any, b: Any, label: str) -> None:
    """Two params pytrees bit for bit: the same paths, shapes, dtypes and bytes."""
    flat_a, tree_a = jax.tree_util.tree_flatten_with_path(a)
    flat_b, tree_b = jax.tree_util.tree_flatten_with_path(b)
    assert tree_a == tree_b, label
    for (path, x), (_, y) in zip(flat_a, flat_b):
        x, y = np.asarray(x), np.asarray(y)
        where = f"{label} {jax.tree_util.keystr(path)}"
        assert (x.shape, x.dtype) == (y.shape, y.dtype), where
        assert x.tobytes() == y.tobytes(), where


def _resident(components: dict[str, Any]) -> dict[str, Any]:
    """Components with each ``DeferredModel`` (Kandinsky 2.2's image encoder) as ``(its outputs, the bound module)``:
    read now, while its folder is there."""
    from jaxgen.pipelines.loading import DeferredModel

    return {k: (v.outputs, v.load()) if isinstance(v, DeferredModel) else v for k, v in components.items()}


def _assert_same_component(x: Any, y: Any, label: str) -> None:
    if isinstance(x, tuple):  # a deferred model: its zero-image embedding, then its params
        assert isinstance(y, tuple), label
        _assert_same_params(x[0], y[0], f"{label} outputs")
        x, y = x[1], y[1]
    assert type(x) is type(y), label
    if x is None:
        return
    if getattr(x, "scope", None) is not None:  # a bound flax model
        assert x.config == y.config and x.dtype == y.dtype, label
        _assert_same_params(x.variables["params"], y.variables["params"], label)
    elif hasattr(x, "get_vocab"):  # a tokenizer
        assert x.get_vocab() == y.get_vocab() and x.model_max_length == y.model_max_length, label
        assert x(SAMPLE).input_ids == y(SAMPLE).input_ids, label
    elif hasattr(x, "to_dict"):  # an image processor
        assert x.to_dict() == y.to_dict(), label
    elif hasattr(x, "watermark_image"):  # IFWatermarker
        assert np.asarray(x.watermark_image).tobytes() == np.asarray(y.watermark_image).tobytes(), label
    else:  # a scheduler
        assert dict(x.config) == dict(y.config), label


def _assert_same_components(a: dict[str, Any], b: dict[str, Any], label: str) -> None:
    """Two pipelines' components (``_resident``), one by one."""
    assert a.keys() == b.keys(), label
    for name, value in a.items():
        _assert_same_component(value, b[name], f"{label}.{name}")


@pytest.fixture
def safetensors_reads(monkeypatch) -> list[Path]:
    """Every safetensors file read from now on (``jaxgen.hub.read_safetensors``: all weights go through it)."""
    from jaxgen import hub

    reads: list[Path] = []
    original = hub.read_safetensors

    def recording(path: Path) -> dict:
        reads.append(Path(path).resolve())
        return original(path)

    monkeypatch.setattr(hub, "read_safetensors", recording)
    return reads


def test_every_tiny_hub_folder_is_covered(tiny_hub):
    assert sorted(tiny_hub) == sorted(HUB_IDS + SAME_CLASSES)


@pytest.mark.parametrize("repo", HUB_IDS)
def test_convert_loads_bit_identical(repo, tiny_hub, tmp_path, safetensors_reads):
    import jaxgen

    src, dst = tmp_path / "src", tmp_path / "dst"
    shutil.copytree(tiny_hub[repo], src)  # the fixture is shared: SRC is deleted below
    assert convert_main([str(src), str(dst)]) == 0
    assert not [p for p in dst.rglob("*") if p.suffix in PICKLES]
    cls = _pipeline_class(src)
    assert _pipeline_class(dst) is cls
    combined = repo in COMBINED
    auto = jaxgen.AutoPipelineForText2Image
    a = auto.from_pretrained(src) if combined else cls.from_pretrained(src)
    pipes_a = {"": a} if not combined else {"prior": a.prior_pipe, "": a.decoder_pipe}
    components_a = {k: _resident(p.components) for k, p in pipes_a.items()}
    if combined:
        from jaxgen.pipelines.combined import connected_prior

        assert connected_prior(dst) == connected_prior(src)
    models = [n for n, spec in cls._components.items() if spec.kind == "model" and (dst / n).is_dir()]
    assert models
    for name in models:  # converted: orbax params, no weights left to convert
        assert (dst / name / "jaxgen_params").is_dir() and not list((dst / name).glob("*.safetensors")), name

    shutil.rmtree(src)
    safetensors_reads.clear()
    b = auto.from_pretrained(dst) if combined else cls.from_pretrained(dst)
    root = dst.resolve()
    read_from_dst = {p.relative_to(root).parts[0] for p in safetensors_reads if p.is_relative_to(root)}
    assert read_from_dst <= {"watermarker"}, f"DST components read from safetensors (converted again): {read_from_dst}"
    # combined: the decoder is the class model_index.json names, the prior the one the README names
    pipes_b = {"": b} if not combined else {"prior": b.prior_pipe, "": b.decoder_pipe}
    assert type(pipes_b[""]) is cls and type(b) is type(a)
    for key, pipe in pipes_b.items():
        _assert_same_components(components_a[key], _resident(pipe.components), f"{repo} {key}")


def _orbax_dtypes(folder: Path) -> set[str]:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(folder.absolute())
    return {str(np.dtype(m.dtype)) for m in jax.tree_util.tree_leaves(getattr(meta, "item_metadata", meta))}


def test_convert_bfloat16_from_a_variant(tiny_hub, tmp_path, safetensors_reads):
    """``--dtype bfloat16 --variant fp16``: params stored in bfloat16, read from the fp16 files (IF stage I, whose
    watermarker reads its own safetensors: DST loads without ``variant=``)."""
    from jaxgen import IFPipeline

    src, dst = tmp_path / "src", tmp_path / "dst"
    shutil.copytree(tiny_hub["DeepFloyd/IF-I-XL-v1.0"], src)
    for file in list(src.glob("*/*.safetensors")):  # only variant weights, as a repo's fp16 branch
        file.rename(file.with_name(file.name.replace(".safetensors", ".fp16.safetensors")))
    assert convert_main([str(src), str(dst), "--dtype", "bfloat16", "--variant", "fp16"]) == 0
    for name in ("unet", "text_encoder", "safety_checker"):
        assert _orbax_dtypes(dst / name / "jaxgen_params") == {"bfloat16"}, name
    a = IFPipeline.from_pretrained(src, dtype=jnp.bfloat16, variant="fp16")
    shutil.rmtree(src)
    b = IFPipeline.from_pretrained(dst, dtype=jnp.bfloat16)
    assert a.unet.dtype == jnp.bfloat16
    _assert_same_components(a.components, b.components, "IF bfloat16")
    assert {p.parent.name for p in safetensors_reads if p.is_relative_to(dst.resolve())} == {"watermarker"}


def test_convert_refuses_an_existing_destination(tiny_hub, tmp_path, capsys):
    src = tiny_hub["warp-ai/wuerstchen-prior"]
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "mine.txt").write_text("keep")
    assert convert_main([str(src), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in dst.iterdir()] == ["mine.txt"] and (dst / "mine.txt").read_text() == "keep"
    (tmp_path / "file").write_text("x")
    assert convert_main([str(src), str(tmp_path / "file")]) == 2
    assert (tmp_path / "file").read_text() == "x"


def test_convert_copies_undeclared_image_processor(tiny_hub, tmp_path):
    """thu-ml/unidiffuser-v1 names its CLIP image processor ``image_processor`` (not a declared component;
    ``UniDiffuserPipeline.from_pretrained`` reads it): it is copied, models jaxgen does not load are not."""
    from jaxgen.pipelines.loading import _load_image_processor

    src, dst = tmp_path / "src", tmp_path / "dst"
    shutil.copytree(tiny_hub["thu-ml/unidiffuser-v1"], src)
    (src / "clip_image_processor").rename(src / "image_processor")
    index = json.loads((src / "model_index.json").read_text())
    index["image_processor"] = index.pop("clip_image_processor")
    index["extra_model"] = ["diffusers", "SomeModel"]
    index["extra_scheduler"] = ["diffusers", "DDIMScheduler"]  # listed, but the repo has no such folder
    (src / "model_index.json").write_text(json.dumps(index))
    (src / "extra_model").mkdir()
    (src / "extra_model" / "model.bin").write_bytes(b"pickle")
    assert convert_main([str(src), str(dst)]) == 0
    out = json.loads((dst / "model_index.json").read_text())
    assert (dst / "image_processor" / "preprocessor_config.json").is_file()
    assert out["image_processor"] == index["image_processor"]
    assert out["extra_model"] == out["extra_scheduler"] == [None, None]
    assert not (dst / "extra_model").exists() and not (dst / "extra_scheduler").exists()
    name = index["image_processor"][1]
    assert (_load_image_processor(dst / "image_processor", name).to_dict()
            == _load_image_processor(src / "image_processor", name).to_dict())


def test_readme_is_copied_only_as_a_plain_file_inside(tmp_path):
    from convert.__main__ import _copy_readme

    root, outside = tmp_path / "src", tmp_path / "secret.txt"
    root.mkdir()
    outside.write_text("not the model card")
    for dst in (tmp_path / "a", tmp_path / "b", tmp_path / "c"):
        dst.mkdir()
    _copy_readme(str(root), root, tmp_path / "a")  # none: nothing copied
    assert not (tmp_path / "a" / "README.md").exists()
    (root / "README.md").symlink_to(outside)
    _copy_readme(str(root), root, tmp_path / "b")
    assert not (tmp_path / "b" / "README.md").exists()
    (root / "README.md").unlink()
    (root / "README.md").write_text("---\nprior:\n- org/prior\n---\n")
    _copy_readme(str(root), root, tmp_path / "c")
    assert (tmp_path / "c" / "README.md").read_text() == (root / "README.md").read_text()


def test_readme_of_a_hub_repo_is_downloaded(tmp_path, monkeypatch):
    """From the Hub the pipeline's snapshot holds only what was selected: README.md is asked for (alone)."""
    from jaxgen import hub
    from convert.__main__ import _copy_readme

    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    asked = []

    def resolve_checkpoint(repo_id: str, **kwargs: Any) -> Path:
        asked.append((repo_id, kwargs))
        (snapshot / "README.md").write_text("---\nprior:\n- org/prior\n---\n")
        return snapshot

    monkeypatch.setattr(hub, "resolve_checkpoint", resolve_checkpoint)
    (tmp_path / "dst").mkdir()
    _copy_readme("org/decoder", snapshot, tmp_path / "dst")
    assert asked == [("org/decoder", {"allow_patterns": ["README.md"]})]
    assert "org/prior" in (tmp_path / "dst" / "README.md").read_text()
