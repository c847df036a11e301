"""Checkpoint folders of the real architectures without weights, for ``python -m benchmarks --random-weights``.

Each folder is laid out as the Hub checkpoint is (model_index.json, one subfolder per component) and holds the real
configs (tests/configs: model_index.json, every model's config.json, the schedulers') and the tiny stand-ins'
tokenizers and image processors (docs/examples/tiny_models.py, which needs the test extras): everything a pipeline
reads except the weights, which each library then draws at random from the configs (speed does not depend on the
values). The tiny tokenizers give small ids, which every real embedding table takes; CLIP's are given the real
77-token length, the other pipelines pad to their own fixed lengths (T5 120 or 77, Flan-UL2 128, XLM-R 77).

    python -m benchmarks.random_folders FOLDER [--repos ID,ID]  # writes FOLDER/<id>/ and FOLDER/map.json

The folders are small (a few hundred KB): built here, they can be carried to a machine without the test extras.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "configs"
_WEIGHTS = ("*.safetensors", "*.bin", "*.msgpack", "*.ckpt", "*.pt")
CLIP_LENGTH = 77  # CLIP's model_max_length in every checkpoint here


def build(root: Path, repos: list[str]) -> dict[str, str]:
    """``root/<id with __>/`` for each Hub id in ``repos``: the tiny stand-in without its weights, the real configs
    copied over it. Returns Hub id -> folder (``root/map.json``: the same, relative to ``root``)."""
    sys.path.insert(0, str(REPO / "docs" / "examples"))
    from tiny_models import tiny_model

    root.mkdir(parents=True, exist_ok=True)
    folders = {}
    for repo in repos:
        real = CONFIGS / repo.replace("/", "__")
        if not real.is_dir():
            raise SystemExit(f"no real configs for {repo!r} in {CONFIGS}")
        target = root / repo.replace("/", "__")
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(tiny_model(repo), target, ignore=shutil.ignore_patterns(*_WEIGHTS))
        _rename_like_real(target, json.loads((real / "model_index.json").read_text()))
        for source in real.rglob("*.json"):
            destination = target / source.relative_to(real)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
        for tokenizer_config in target.glob("*/tokenizer_config.json"):
            config = json.loads(tokenizer_config.read_text())
            if "CLIP" in config.get("tokenizer_class", ""):
                config["model_max_length"] = CLIP_LENGTH
                tokenizer_config.write_text(json.dumps(config, indent=2))
        folders[repo] = target.name  # relative to map.json: the folder can move
    (root / "map.json").write_text(json.dumps(folders, indent=2))
    return {repo: str(root / name) for repo, name in folders.items()}


def _rename_like_real(target: Path, real_index: dict) -> None:
    """A component the real model_index.json names but diffusers' ``save_pretrained`` wrote under another name
    (UniDiffuser's ``image_processor``, saved as ``clip_image_processor``): copied from the folder of the same class
    or of a name ending in ``_<name>``."""
    tiny_index = json.loads((target / "model_index.json").read_text())
    for name, entry in real_index.items():
        if name.startswith("_") or not isinstance(entry, list) or (target / name).exists():
            continue
        same = [n for n, e in tiny_index.items() if isinstance(e, list) and (target / n).is_dir()
                and (e[1] == entry[1] or n.endswith(f"_{name}"))]
        if same:
            shutil.copytree(target / same[0], target / name)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.random_folders FOLDER``: see the module's docstring."""
    from benchmarks.suite import FAMILIES

    parser = argparse.ArgumentParser(prog="python -m benchmarks.random_folders", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    every = sorted({repo for family in FAMILIES.values() for repo in family.checkpoints})
    parser.add_argument("--repos", default=",".join(every), help="comma-separated Hub ids (default: every family's)")
    args = parser.parse_args(argv)
    folders = build(args.folder, [r for r in args.repos.split(",") if r])
    print(json.dumps(folders, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
