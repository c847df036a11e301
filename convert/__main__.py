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


def convert_pipeline(src: str, dst: str | Path, *, dtype: Any = None, variant: str | None = None) -> Path:
    """Convert every component of the pipeline at ``src`` into ``dst`` (which must not exist yet)."""
    import jax.numpy as jnp

    from jaxgen import hub
    from jaxgen.modeling import ORBAX_PARAMS_DIR, save_orbax_params
    from jaxgen.pipelines.auto_pipeline import pipeline_class

    root = hub.resolve_checkpoint(src)
    index = hub.load_model_index(root)
    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"destination {dst} already exists")
    cls = pipeline_class(index["_class_name"])
    dst.mkdir(parents=True)
    for name, spec in cls._components.items():
        if index.get(name) is None:
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
