"""Hub downloads take only what will be loaded (hub.resolve_pipeline, resolve_checkpoint, component_patterns).

The Hub is not reachable in tests: ``huggingface_hub.snapshot_download`` is replaced by a fake that
filters a local "remote" repo folder with huggingface_hub's own pattern filter
(``filter_repo_objects``, what the real ``snapshot_download`` applies) and copies the kept files
into a per-repo cache folder that, as the real cache, accumulates over calls.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jaxgen import hub

REPO_ID = "org/fake"
SINGLE_ID = "org/single"

# fake remote files: path -> content (bytes; dicts are written as JSON)
MODEL_INDEX = {
    "_class_name": "FakePipeline",
    "_diffusers_version": "0.30.0",
    "tokenizer": ["transformers", "T5TokenizerFast"],
    "text_encoder": ["transformers", "T5EncoderModel"],
    "transformer": ["diffusers", "PixArtTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "scheduler": ["diffusers", "DPMSolverMultistepScheduler"],
    "watermarker": ["deepfloyd_if", "IFWatermarker"],
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": [None, None],
}
TOKENIZER = {f"tokenizer/{n}": b"{}" for n in ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "added_tokens.json")}
TOKENIZER["tokenizer/spiece.model"] = b"sp"
TEXT_ENCODER = {  # transformers names, sharded, plain and fp16, and a pickle beside them
    "text_encoder/config.json": b"{}",
    "text_encoder/model.safetensors.index.json": {
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}},
    "text_encoder/model-00001-of-00002.safetensors": b"w",
    "text_encoder/model-00002-of-00002.safetensors": b"w",
    "text_encoder/model.safetensors.index.fp16.json": {
        "weight_map": {"a": "model.fp16-00001-of-00002.safetensors", "b": "model.fp16-00002-of-00002.safetensors"}},
    "text_encoder/model.fp16-00001-of-00002.safetensors": b"h",
    "text_encoder/model.fp16-00002-of-00002.safetensors": b"h",
    "text_encoder/pytorch_model.bin": b"pickle",
}
TRANSFORMER = {
    "transformer/config.json": b"{}",
    "transformer/diffusion_pytorch_model.safetensors": b"w",
    "transformer/diffusion_pytorch_model.fp16.safetensors": b"h",
    "transformer/diffusion_pytorch_model.bin": b"pickle",
    "transformer/diffusion_pytorch_model.fp16.bin": b"pickle",
    "transformer/diffusion_flax_model.msgpack": b"flax",
    "transformer/model.onnx": b"onnx",
}
VAE_PARAMS = {  # a folder written by `python -m convert` (orbax files, nested)
    "vae/jaxgen_params/_METADATA": b"m",
    "vae/jaxgen_params/manifest.ocdbt": b"m",
    "vae/jaxgen_params/d/5152efad": b"d",
    "vae/jaxgen_params/ocdbt.process_0/d/ddd31c78": b"d",
}
VAE = {
    "vae/config.json": b"{}",
    "vae/diffusion_pytorch_model.safetensors": b"w",
    "vae/diffusion_pytorch_model.fp16.safetensors": b"h",
    **VAE_PARAMS,
}
OTHERS = {
    "scheduler/scheduler_config.json": b"{}",
    "feature_extractor/preprocessor_config.json": b"{}",
    "watermarker/config.json": b"{}",
    "README.md": b"readme",
    ".gitattributes": b"",
}
SINGLE = {  # a single-model repo, with a subfolder the root model must not take
    "config.json": b"{}",
    "model.safetensors": b"w",
    "model.fp16.safetensors": b"h",
    "pytorch_model.bin": b"pickle",
    "tf_model.h5": b"tf",
    "spiece.model": b"sp",
    "extra/config.json": b"{}",
    "extra/model.safetensors": b"w",
}
NEVER = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".onnx", ".h5")


def _write(root: Path, files: dict[str, Any]) -> None:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())


def _watermark(path: Path, value: float, dtype: Any) -> None:
    from safetensors.numpy import save_file

    save_file({"watermark_image": np.full((4, 4, 4), value, dtype)}, str(path))


class FakeHub:
    """``snapshot_download`` over local "remote" folders: filters with huggingface_hub's own
    ``filter_repo_objects``, copies into a per-repo snapshot folder (kept across calls), records calls."""

    def __init__(self, tmp: Path, remotes: dict[str, Path]) -> None:
        self.tmp, self.remotes, self.calls = tmp, remotes, []
        self.error: Exception | None = None

    def snapshot_download(self, repo_id: str, *, allow_patterns=None, ignore_patterns=None, **kwargs: Any) -> str:
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append({"repo_id": repo_id, "allow": allow_patterns, "ignore": ignore_patterns})
        if self.error is not None:
            raise self.error
        remote = self.remotes[repo_id]
        names = sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file())
        snapshot = self.snapshot(repo_id)
        for rel in filter_repo_objects(names, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            (snapshot / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(remote / rel, snapshot / rel)
        snapshot.mkdir(parents=True, exist_ok=True)
        return str(snapshot)

    def snapshot(self, repo_id: str) -> Path:
        """The cache folder of ``repo_id``'s snapshot (one revision, as the real cache keeps it)."""
        return self.tmp / "cache" / repo_id.replace("/", "--") / "snapshots" / "main"


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> FakeHub:
    """Remote repos ``org/fake`` (a pipeline) and ``org/single`` (one model at the root) behind a fake Hub."""
    remote = tmp_path / "remote" / "fake"
    _write(remote, {"model_index.json": MODEL_INDEX, **TOKENIZER, **TEXT_ENCODER, **TRANSFORMER, **VAE, **OTHERS})
    _watermark(remote / "watermarker" / "diffusion_pytorch_model.safetensors", 200.0, np.float32)
    _watermark(remote / "watermarker" / "diffusion_pytorch_model.fp16.safetensors", 100.0, np.float16)
    single = tmp_path / "remote" / "single"
    _write(single, SINGLE)
    fake = FakeHub(tmp_path, {REPO_ID: remote, SINGLE_ID: single})
    import huggingface_hub

    # hub.py imports snapshot_download inside the function, from the package: patch it there
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    return fake


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()}


def _no_never(files: set[str]) -> None:
    assert not [f for f in files if f.endswith(NEVER)], files


ALL_KINDS = {
    "tokenizer": "tokenizer", "text_encoder": "model", "transformer": "model", "vae": "model",
    "scheduler": "scheduler", "watermarker": "object", "feature_extractor": "processor",
}
EXPECTED_PLAIN = {
    "model_index.json", *TOKENIZER, "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors.index.json",
    "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
    "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", *VAE_PARAMS,
    "watermarker/config.json", "watermarker/diffusion_pytorch_model.safetensors",
}
EXPECTED_FP16 = {
    "model_index.json", *TOKENIZER, "scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors.index.fp16.json",
    "text_encoder/model.fp16-00001-of-00002.safetensors", "text_encoder/model.fp16-00002-of-00002.safetensors",
    "transformer/config.json", "transformer/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors", *VAE_PARAMS,
    "watermarker/config.json", "watermarker/diffusion_pytorch_model.fp16.safetensors",
}


def test_pipeline_downloads_model_index_then_only_selected_components(fake_hub):
    seen = []

    def select(index):
        seen.append(index)
        return {"transformer": "model", "scheduler": "scheduler"}

    root = hub.resolve_pipeline(REPO_ID, select)
    assert seen == [MODEL_INDEX]
    assert [c["allow"] for c in fake_hub.calls][0] == ["model_index.json"]
    assert len(fake_hub.calls) == 2  # model_index.json, then the components in one call
    assert _files(root) == {
        "model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    }


def test_nothing_selected_downloads_only_model_index(fake_hub):
    root = hub.resolve_pipeline(REPO_ID, lambda index: {})
    assert _files(root) == {"model_index.json"}
    assert len(fake_hub.calls) == 1


def test_all_components_without_variant_take_no_variant_weights(fake_hub):
    root = hub.resolve_pipeline(REPO_ID, lambda index: ALL_KINDS)
    files = _files(root)
    assert files == EXPECTED_PLAIN
    assert not [f for f in files if ".fp16" in f]
    _no_never(files)
    assert set(VAE_PARAMS) <= files  # a converted component's orbax params, at any depth
    assert [p.name for p in hub.weight_files(root / "text_encoder")] == [
        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def test_fp16_variant_takes_only_fp16_weights(fake_hub):
    root = hub.resolve_pipeline(REPO_ID, lambda index: ALL_KINDS, variant="fp16")
    files = _files(root)
    assert files == EXPECTED_FP16
    _no_never(files)
    weights = [f for f in files if f.endswith(".safetensors")]
    assert weights and all(".fp16" in f for f in weights)
    # what was downloaded is what the loader reads
    assert [p.name for p in hub.weight_files(root / "text_encoder", "fp16")] == [
        "model.fp16-00001-of-00002.safetensors", "model.fp16-00002-of-00002.safetensors"]
    assert hub.weight_files(root / "transformer", "fp16")[0].name == "diffusion_pytorch_model.fp16.safetensors"


def test_tokenizer_takes_no_weights_and_weights_take_no_tokenizer(fake_hub):
    allow, ignore = hub.component_patterns("tokenizer", "tokenizer", None)
    assert "tokenizer/spiece.model" in allow and not [p for p in allow if "safetensors" in p]
    root = hub.resolve_pipeline(REPO_ID, lambda index: {"tokenizer": "tokenizer", "feature_extractor": "processor"})
    assert _files(root) == {"model_index.json", *TOKENIZER, "feature_extractor/preprocessor_config.json"}
    assert "*.bin" in ignore


def test_single_component_subfolder_and_repo_root(fake_hub):
    root = hub.resolve_checkpoint(REPO_ID, subfolder="vae", kind="model", variant="fp16")
    assert _files(root) == {"vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors", *VAE_PARAMS}
    single = hub.resolve_checkpoint(SINGLE_ID, kind="model")
    assert _files(single) == {"config.json", "model.safetensors"}  # not extra/, not fp16, no pickle or h5
    single = hub.resolve_checkpoint(SINGLE_ID, kind="tokenizer")
    assert _files(single) == {"config.json", "model.safetensors", "spiece.model"}  # the cache accumulates


def test_model_from_pretrained_downloads_its_subfolder_only(fake_hub):
    from jaxgen.modeling import PretrainedModel

    class Stub:
        def load_params(self, folder, variant=None, mesh=None):
            return Path(folder), variant

    class Recorder(PretrainedModel):  # from_pretrained's own code, without building a flax model
        @classmethod
        def from_config(cls, config, dtype=None):
            return Stub()

    _, (folder, variant) = Recorder.from_pretrained(REPO_ID, subfolder="transformer", variant="fp16")
    assert folder.name == "transformer" and variant == "fp16"
    assert _files(folder.parent) == {"transformer/config.json", "transformer/diffusion_pytorch_model.fp16.safetensors"}
    assert len(fake_hub.calls) == 1


def test_watermarker_from_the_hub_loads_the_requested_variant(fake_hub):
    from jaxgen.models.watermark import IFWatermarker

    marker = IFWatermarker.from_pretrained(REPO_ID, subfolder="watermarker", variant="fp16")
    assert float(marker.watermark_image[0, 0, 0]) == 100.0
    assert _files(fake_hub.snapshot(REPO_ID)) == {"watermarker/config.json", "watermarker/diffusion_pytorch_model.fp16.safetensors"}
    marker = IFWatermarker.from_pretrained(REPO_ID, subfolder="watermarker")
    assert float(marker.watermark_image[0, 0, 0]) == 200.0


def test_local_folder_never_calls_the_hub(fake_hub, tmp_path):
    local = fake_hub.remotes[REPO_ID]

    def select(index):
        raise AssertionError("select is not called for a local folder")

    assert hub.resolve_pipeline(local, select) == local
    assert hub.resolve_pipeline(str(local), select, variant="fp16") == local
    assert hub.resolve_checkpoint(local, subfolder="vae", kind="model") == local
    assert fake_hub.calls == []
    with pytest.raises(FileNotFoundError, match="no such folder"):
        hub.resolve_pipeline(tmp_path / "missing", select)
    assert fake_hub.calls == []


def test_hub_errors_are_readable(fake_hub):
    from huggingface_hub.errors import LocalEntryNotFoundError

    fake_hub.error = LocalEntryNotFoundError("offline")
    with pytest.raises(hub.HubError, match="not reachable and the model is not in the local cache"):
        hub.resolve_pipeline(REPO_ID, lambda index: ALL_KINDS)
    with pytest.raises(hub.HubError, match="not reachable"):
        hub.resolve_checkpoint(REPO_ID, subfolder="vae", kind="model")
    fake_hub.error = ConnectionError("connection reset")
    with pytest.raises(hub.HubError, match="could not download 'org/fake'.*connection reset"):
        hub.resolve_checkpoint(REPO_ID)


def test_bad_arguments_are_refused(fake_hub):
    with pytest.raises(ValueError, match="unknown component kind"):
        hub.component_patterns("vae", "weights", None)
    with pytest.raises(ValueError, match="plain name"):
        hub.component_patterns("vae", "model", "*")
    with pytest.raises(hub.CheckpointError, match="plain folder name"):
        hub.component_patterns("../vae", "model", None)
    with pytest.raises(hub.CheckpointError, match="plain folder name"):
        hub.resolve_pipeline(REPO_ID, lambda index: {"va*": "model"})


def test_convert_downloads_every_listed_component(fake_hub, monkeypatch):
    import jaxgen.registry
    from types import SimpleNamespace

    from convert.__main__ import _all_components

    class FakePipeline:  # what convert reads of a pipeline class: its components' kinds
        _components = {**{n: SimpleNamespace(kind=k) for n, k in ALL_KINDS.items()},
                       "safety_checker": SimpleNamespace(kind="model")}

    monkeypatch.setattr(jaxgen.registry, "pipeline_class", lambda name: FakePipeline)
    root = hub.resolve_pipeline(REPO_ID, _all_components)
    assert _files(root) == EXPECTED_PLAIN  # safety_checker is [null, null]: nothing asked for it


def test_pipelines_download_only_the_components_they_load(tiny_pixart, tmp_path, monkeypatch):
    """``from_pretrained`` of a Hub id (the tiny PixArt served by the fake Hub): a component passed in (or
    as None) is not downloaded; the Auto pipeline reads model_index.json before anything else."""
    import huggingface_hub

    from jaxgen import AutoPipelineForText2Image, PixArtAlphaPipeline

    folder, _ = tiny_pixart
    fake = FakeHub(tmp_path, {"org/tiny-pixart": folder})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake.snapshot_download)
    pipe = PixArtAlphaPipeline.from_pretrained("org/tiny-pixart", text_encoder=None, tokenizer=None)
    assert pipe.text_encoder is None and pipe.transformer is not None
    fetched = _files(fake.snapshot("org/tiny-pixart"))
    assert not [f for f in fetched if f.startswith(("text_encoder/", "tokenizer/", "_spm/"))], fetched
    assert {"transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json"} <= fetched
    assert fake.calls[0]["allow"] == ["model_index.json"]
    calls = len(fake.calls)
    auto = AutoPipelineForText2Image.from_pretrained("org/tiny-pixart", text_encoder=None, tokenizer=None)
    assert isinstance(auto, PixArtAlphaPipeline)
    assert fake.calls[calls]["allow"] == ["model_index.json"]  # the class is known before any weights come
