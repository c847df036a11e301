"""``python -m convert SRC DST``: a diffusers pipeline folder (or Hub repo id) -> a jaxgen folder.

DST gets the same layout: model_index.json, and per component its config and either an orbax
checkpoint of the converted params (``<component>/jaxgen_params``, models) or a copy of the
folder's files (tokenizers, schedulers). ``from_pretrained(DST)`` then loads without torch and
without conversion. Pickle files are never copied.
"""

from __future__ import annotations

import argparse
import json
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


def _all_components(index: dict[str, Any]) -> dict[str, str]:
    """``{name: kind}`` of every component of the pipeline class that model_index.json lists: what to download."""
    return {name: spec.kind for name, spec in _pipeline_class(index)._components.items() if _listed(index, name)}


def convert_pipeline(src: str, dst: str | Path, *, dtype: Any = None, variant: str | None = None) -> Path:
    """Convert every component of the pipeline at ``src`` into ``dst`` (which must not exist yet).

    ``src``: a pipeline folder or a Hub repo id (then only its components' configs, tokenizer files
    and weights of ``variant`` are downloaded). Returns ``dst``.
    """
    import jax.numpy as jnp

    from jaxgen import hub
    from jaxgen.modeling import ORBAX_PARAMS_DIR, save_orbax_params

    dst = Path(dst)
    if dst.exists():  # before any download
        raise FileExistsError(f"destination {dst} already exists")
    root = hub.resolve_pipeline(src, _all_components, variant=variant)
    index = hub.load_model_index(root)
    cls = _pipeline_class(index)
    dst.mkdir(parents=True)
    for name, spec in cls._components.items():
        if not _listed(index, name):
            continue
        src_folder = hub.component_folder(root, name)
        out_folder = dst / name
        if spec.kind == "model":
            module, params = spec.model_class.from_pretrained(src_folder, dtype=dtype or jnp.float32, variant=variant)
            out_folder.mkdir()
            shutil.copyfile(src_folder / spec.model_class.config_name, out_folder / spec.model_class.config_name)
            save_orbax_params(out_folder / ORBAX_PARAMS_DIR, params)
        else:
            shutil.copytree(src_folder, out_folder, ignore=shutil.ignore_patterns(*(f"*{s}" for s in hub.PICKLE_SUFFIXES)))
        print(f"{name}: {out_folder}")
    with open(dst / "model_index.json", "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
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
