"""Checkpoint files (hub.py), the conversion engine's checks, `python -m convert` and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jax
import jax.numpy as jnp

from jaxgen import hub
from convert.engine import ConversionError, Source, convert_state_dict, default_rule, linear, renamed

REPO = Path(__file__).resolve().parents[1]


def _save(path: Path, tensors: dict) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))


def test_read_safetensors_dtypes_and_views(tmp_path):
    import torch
    from safetensors.torch import save_file

    tensors = {"a": torch.randn(3, 4), "b": torch.randn(2).to(torch.bfloat16), "c": torch.arange(5, dtype=torch.int64),
               "h": torch.randn(2, 2).half()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    out = hub.read_safetensors(tmp_path / "model.safetensors")
    for k, v in tensors.items():
        np.testing.assert_array_equal(out[k].astype(np.float64), v.double().numpy())
    assert out["b"].dtype == jnp.bfloat16


def test_truncated_safetensors_is_named(tmp_path):
    _save(tmp_path / "model.safetensors", {"w": np.ones((64, 64), np.float32)})
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(hub.CheckpointError, match="truncated") as e:
        hub.load_state_dict(tmp_path)
    assert "model.safetensors" in str(e.value)
    (tmp_path / "model.safetensors").write_bytes(data[:5])
    with pytest.raises(hub.CheckpointError, match="truncated"):
        hub.load_state_dict(tmp_path)


def test_pickle_only_folder_is_refused(tmp_path):
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(hub.CheckpointError, match=r"diffusion_pytorch_model\.bin.*pickle"):
        hub.load_state_dict(tmp_path)


def test_sharded_index_and_variant(tmp_path):
    _save(tmp_path / "diffusion_pytorch_model-00001-of-00002.safetensors", {"a": np.ones(2, np.float32)})
    _save(tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors", {"b": np.zeros(3, np.float32)})
    index = {"metadata": {}, "weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",
                                            "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert sorted(hub.load_state_dict(tmp_path)) == ["a", "b"]
    _save(tmp_path / "diffusion_pytorch_model.fp16.safetensors", {"a": np.ones(2, np.float16)})
    assert hub.load_state_dict(tmp_path, variant="fp16")["a"].dtype == np.float16
    with pytest.raises(hub.CheckpointError, match="variant='bf16'"):
        hub.load_state_dict(tmp_path, variant="bf16")


def test_model_index_is_required_and_names_cannot_escape(tmp_path):
    with pytest.raises(hub.CheckpointError, match="model_index.json"):
        hub.load_model_index(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline", "../evil": ["diffusers", "X"]}))
    with pytest.raises(hub.CheckpointError, match="not a plain folder name"):
        hub.load_model_index(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline", "/etc": ["diffusers", "X"]}))
    with pytest.raises(hub.CheckpointError, match="not a plain folder name"):
        hub.load_model_index(tmp_path)


def test_pipeline_from_folder_without_model_index(tmp_path):
    from jaxgen import PixArtAlphaPipeline

    with pytest.raises(hub.CheckpointError, match="no model_index.json"):
        PixArtAlphaPipeline.from_pretrained(tmp_path)


def test_missing_local_path_and_unreachable_hub(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        hub.resolve_checkpoint(tmp_path / "nope")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(hub.HubError):
        hub.resolve_checkpoint("nobody-has/this-model-xyz")


def test_engine_lists_missing_unused_and_mismatched():
    target = {"dense": {"kernel": jax.ShapeDtypeStruct((3, 2), jnp.float32), "bias": jax.ShapeDtypeStruct((2,), jnp.float32)},
              "norm": {"scale": jax.ShapeDtypeStruct((4,), jnp.float32)}}
    state = {"dense.weight": np.zeros((2, 3), np.float32), "norm.weight": np.zeros((5,), np.float32),
             "extra.weight": np.zeros(1, np.float32)}
    with pytest.raises(ConversionError) as e:
        convert_state_dict(state, target)
    text = str(e.value)
    assert "dense.bias" in text and "missing" in text
    assert "extra.weight" in text and "unused" in text
    assert "norm/scale" in text and "mismatch" in text
    state = {"dense.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "dense.bias": np.ones(2, np.float32),
             "norm.weight": np.ones(4, np.float32), "buffer.position_ids": np.arange(3)}
    params = convert_state_dict(state, target, ignore=[r"buffer\..*"])
    np.testing.assert_array_equal(params["dense"]["kernel"], state["dense.weight"].T)


def test_engine_renames_and_fused_sources():
    target = {"qkv": {"kernel": jax.ShapeDtypeStruct((2, 6), jnp.float32)}, "new": {"bias": jax.ShapeDtypeStruct((3,), jnp.float32)}}
    state = {"q.weight": np.ones((3, 2), np.float32), "k.weight": 2 * np.ones((3, 2), np.float32), "old.bias": np.ones(3, np.float32)}

    def rule(path, shape):
        if path[0] == "qkv":
            return Source(("q.weight", "k.weight"), lambda q, k: np.concatenate([q, k]).T)
        return renamed([("new", "old")])(path, shape)

    params = convert_state_dict(state, target, rule)
    assert params["qkv"]["kernel"].shape == (2, 6) and params["qkv"]["kernel"][0, 3] == 2


def test_convert_cli_round_trip_is_bit_identical(tiny_pixart, tmp_path):
    from jaxgen import PixArtAlphaPipeline

    folder, _ = tiny_pixart
    dst = tmp_path / "converted"
    result = subprocess.run([sys.executable, "-m", "convert", str(folder), str(dst)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (dst / "transformer" / "jaxgen_params").is_dir() and not list(dst.rglob("*.safetensors"))
    a = PixArtAlphaPipeline.from_pretrained(folder)
    b = PixArtAlphaPipeline.from_pretrained(dst)
    for name in ("transformer", "vae", "text_encoder"):
        pa, pb = getattr(a, name).variables["params"], getattr(b, name).variables["params"]
        assert jax.tree_util.tree_structure(pa) == jax.tree_util.tree_structure(pb)
        for x, y in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    for p in (a, b):
        p.set_progress_bar_config(disable=True)
    call = dict(prompt="a photo of a cat", height=16, width=16, num_inference_steps=2, output_type="np",
                use_resolution_binning=False, rng=0)
    np.testing.assert_array_equal(a(**call).images, b(**call).images)
    again = subprocess.run([sys.executable, "-m", "convert", str(folder), str(dst)], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_cli_generate_and_clear_errors(tiny_pixart, tmp_path):
    folder, _ = tiny_pixart
    out = tmp_path / "img.png"
    cmd = [sys.executable, "-m", "jaxgen", "generate", "a photo of a cat", "--model", str(folder), "--steps", "2",
           "--seed", "1", "--height", "16", "--width", "24", "--num-images", "2", "--no-resolution-binning", "--out", str(out)]
    one_device = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # not the session's 8 CPU devices
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=one_device)
    assert result.returncode == 0, result.stderr
    from PIL import Image

    files = sorted(tmp_path.glob("img-*.png"))
    assert [f.name for f in files] == ["img-0.png", "img-1.png"]
    assert Image.open(files[0]).size == (24, 16)
    missing = subprocess.run([sys.executable, "-m", "jaxgen", "generate", "x", "--model", str(tmp_path / "none")],
                             cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 2 and "no such folder" in missing.stderr and "Traceback" not in missing.stderr
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    offline = subprocess.run([sys.executable, "-m", "jaxgen", "generate", "x", "--model", "nobody-has/this-model-xyz"],
                             cwd=REPO, capture_output=True, text=True, env=env)
    assert offline.returncode == 2 and "Hub" in offline.stderr and "Traceback" not in offline.stderr


def test_sentencepiece_tokenizer_folder_as_on_the_hub(tmp_path):
    """The Hub's PixArt/IF repos ship the slow format (spiece.model + tokenizer_config.json)."""
    from tests.conftest import make_t5_tokenizer
    from jaxgen.pipelines.loading import _load_tokenizer

    reference = make_t5_tokenizer(tmp_path / "spm")
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    shutil.copy(tmp_path / "spm" / "spiece.model", folder / "spiece.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "T5Tokenizer", "extra_ids": 0, "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}))
    tokenizer = _load_tokenizer(folder, "T5Tokenizer")
    texts = ["a cat on the moon", "the quick brown fox"]
    assert tokenizer(texts).input_ids == reference(texts).input_ids


def test_sharded_and_variant_checkpoints_load_through_the_pipeline(tiny_pixart, tmp_path):
    from jaxgen import PixArtAlphaPipeline
    from jaxgen.models import T5EncoderModel

    folder, torch_pipe = tiny_pixart
    torch_pipe.text_encoder.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    _, sharded = T5EncoderModel.from_pretrained(tmp_path / "sharded")
    _, single = T5EncoderModel.from_pretrained(folder, subfolder="text_encoder")
    for a, b in zip(jax.tree_util.tree_leaves(sharded), jax.tree_util.tree_leaves(single)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    torch_pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16" / "transformer" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    pipe = PixArtAlphaPipeline.from_pretrained(tmp_path / "fp16", variant="fp16")
    reference = PixArtAlphaPipeline.from_pretrained(folder)
    for name in ("transformer", "vae", "text_encoder"):
        for a, b in zip(jax.tree_util.tree_leaves(getattr(pipe, name).variables),
                        jax.tree_util.tree_leaves(getattr(reference, name).variables)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(hub.CheckpointError, match="variant"):
        PixArtAlphaPipeline.from_pretrained(folder, variant="fp16")
