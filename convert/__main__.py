"""``python -m convert SRC DST``: a diffusers pipeline folder (or Hub repo id) -> a jaxgen folder.

DST gets the same layout: model_index.json, and per component its config and either an orbax
checkpoint of the converted params (``<component>/jaxgen_params``, models) or a copy of the
folder's files (tokenizers, schedulers, image processors, and components that read their own
safetensors such as IF's watermarker). ``from_pretrained(DST)`` then loads without torch and without
conversion. The pipeline's README.md is copied too: a decoder's model card names its prior there, which
the combined pipelines (``AutoPipelineForText2Image``) read. Pickle files are never copied.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["convert_pipeline", "main"]


def _listed(index: dict[str, Any], name: str) -> bool:
    """Whether model_index.json lists component ``name`` (absent, null and diffusers' [null, null] do not)."""
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None


def _pipeline_class(index: dict[str, Any]) -> type:
    """The jaxgen pipeline class model_index.json names (``CheckpointError`` when it names none)."""
    from jaxgen import hub
    from jaxgen.registry import pipeline_class

    class_name = index.get("_class_name")
    if not isinstance(class_name, str):
        raise hub.CheckpointError("model_index.json has no _class_name")
    return pipeline_class(class_name)


_COPIED_KINDS = (("Tokenizer", "tokenizer"), ("TokenizerFast", "tokenizer"), ("Scheduler", "scheduler"),
                 ("ImageProcessor", "processor"), ("ImageProcessorFast", "processor"),
                 ("ImageProcessorPil", "processor"), ("FeatureExtractor", "processor"))
"""Class-name endings of components a pipeline does not declare but reads itself (UniDiffuser's
``image_processor``, as thu-ml/unidiffuser-v1 names it): copied as they are."""


def _undeclared_components(index: dict[str, Any], declared: Any) -> dict[str, str]:
    """``{name: kind}`` of the components model_index.json lists that the pipeline class does not declare and
    whose class name says they are copied as they are (tokenizers, schedulers, image processors); other
    undeclared entries (models jaxgen does not load) are left out."""
    out = {}
    for name, entry in index.items():
        if name.startswith("_") or name in declared or not _listed(index, name) or not isinstance(entry[1], str):
            continue
        kind = next((k for end, k in _COPIED_KINDS if entry[1].endswith(end)), None)
        if kind is not None:
            out[name] = kind
    return out


def _all_components(index: dict[str, Any]) -> dict[str, str]:
    """``{name: kind}`` of every component of the pipeline class that model_index.json lists, and of the
    undeclared ones copied as they are: what to download and write."""
    declared = _pipeline_class(index)._components
    listed = {name: spec.kind for name, spec in declared.items() if _listed(index, name)}
    return {**listed, **_undeclared_components(index, declared)}


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (links resolved) is inside ``root``, or inside the Hub cache folder of the repo when
    ``root`` is a Hub snapshot (``.../snapshots/<rev>``, whose files are links to ``../../blobs``)."""
    real = path.resolve()
    roots = [root.resolve()]
    if root.parent.name == "snapshots":
        roots.append(root.parent.parent.resolve())
    return any(real.is_relative_to(r) for r in roots)


def _copy_readme(src: str, root: Path, dst: Path) -> None:
    """Copy the pipeline's README.md (the model card whose metadata names a decoder's prior) when it is a
    plain file inside the source folder. From the Hub it is downloaded first (a repo without one is fine)."""
    from jaxgen import hub

    if not (Path(root) / "README.md").exists() and not Path(os.path.expanduser(src)).is_dir():
        try:
            root = hub.resolve_checkpoint(src, allow_patterns=["README.md"])
        except hub.HubError as e:
            print(f"convert: README.md not copied ({e})", file=sys.stderr)
            return
    readme = Path(root) / "README.md"
    if readme.is_file():
        if _inside(readme, Path(root)):
            shutil.copyfile(readme, dst / "README.md")
        else:
            print(f"convert: {readme} not copied: it links outside {root}", file=sys.stderr)


def _copy_component(src: Path, dst: Path, kind: str, variant: str | None) -> None:
    """A component that is not converted: its folder's files, pickle files left out. An object's weights
    of ``variant`` are also written under the plain name, so that DST loads without ``variant=``, as
    its converted models do."""
    from jaxgen import hub

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*(f"*{s}" for s in hub.PICKLE_SUFFIXES)))
    if kind == "object" and variant:
        files = hub.weight_files(src, variant)
        suffix = f".{variant}.safetensors"
        if len(files) == 1 and files[0].name.endswith(suffix):
            shutil.copyfile(files[0], dst / (files[0].name[: -len(suffix)] + ".safetensors"))


def _write(src: str, root: Path, index: dict[str, Any], dst: Path, *, dtype: Any, variant: str | None) -> None:
    """Write every component of the pipeline at ``root`` (resolved from ``src``) into the folder ``dst``."""
    from jaxgen import hub
    from jaxgen.modeling import ORBAX_PARAMS_DIR, save_orbax_params

    cls = _pipeline_class(index)
    written = []
    for name, kind in _all_components(index).items():
        spec = cls._components.get(name)
        src_folder = hub.component_folder(root, name)
        out_folder = dst / name
        if spec is None and not src_folder.is_dir():  # an undeclared extra the repo lists but lacks: nothing to copy
            continue
        if kind == "model":
            _, params = spec.model_class.from_pretrained(src_folder, dtype=dtype, variant=variant)
            out_folder.mkdir()
            shutil.copyfile(src_folder / spec.model_class.config_name, out_folder / spec.model_class.config_name)
            save_orbax_params(out_folder / ORBAX_PARAMS_DIR, params)
        else:
            _copy_component(src_folder, out_folder, kind, variant)
        written.append(name)
        print(f"{name}: {out_folder}")
    _copy_readme(src, root, dst)
    # components not written (undeclared models) are saved as absent, as diffusers saves a None component
    index = {k: v if k.startswith("_") or k in written or not _listed(index, k) else [None, None]
             for k, v in index.items()}
    with open(dst / "model_index.json", "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)


def convert_pipeline(src: str, dst: str | Path, *, dtype: Any = None, variant: str | None = None) -> Path:
    """Convert every component of the pipeline at ``src`` into ``dst`` (which must not exist yet).

    ``src``: a pipeline folder or a Hub repo id (then only its components' configs, tokenizer files
    and weights of ``variant`` are downloaded). Returns ``dst``.
    """
    import jax.numpy as jnp

    from jaxgen import hub

    dst = Path(dst)
    if dst.exists():  # before any download
        raise FileExistsError(f"destination {dst} already exists")
    root = hub.resolve_pipeline(src, _all_components, variant=variant)
    index = hub.load_model_index(root)
    _pipeline_class(index)  # a class jaxgen knows, before anything is written
    dst.mkdir(parents=True)
    try:
        _write(src, root, index, dst, dtype=dtype or jnp.float32, variant=variant)
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)  # created here: no half-written folder that a rerun would refuse
        raise
    return dst


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: ``python -m convert SRC DST [--dtype bfloat16] [--variant fp16]``."""
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="diffusers pipeline folder or Hub repo id")
    parser.add_argument("dst", help="output folder (must not exist)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="dtype of the stored params")
    parser.add_argument("--variant", default=None, help="read *.VARIANT.safetensors (e.g. fp16)")
    args = parser.parse_args(argv)
    import jax.numpy as jnp

    from jaxgen.hub import CheckpointError, HubError

    try:
        convert_pipeline(args.src, args.dst, dtype={"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.dtype], variant=args.variant)
    except (HubError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
