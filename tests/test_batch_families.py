"""jaxgen batch for every family's text-to-image checkpoint: killed (SIGKILL) midway through each family's run, then
resumed by the command line: every image written once, the finished ones untouched.

One child process runs every family's batch interleaved (job 1 of each family, then job 2, ...: each call resumes the
last), so one kill lands while every family's run is partial, and the programs compile once per family. A second
child resumes each folder with ``jaxgen batch`` (the command line's ``main``), reading the first child's compiled
programs from a shared persistent compilation cache. ``python -m tests.test_batch_families run|resume CONFIG`` is
that child.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image

ROOT = Path(__file__).resolve().parents[1]
START = time.perf_counter()
PROMPTS = ["a photo of a cat", "an astronaut riding a horse", "a city at night", "a small cactus"]
SEED = 5
STEPS = 20  # the kill lands within 10 ms of the last family's first image: long before the next round ends
# Hub id of the tiny_hub checkpoint -> (call settings, command line options): each family's smallest valid size
FAMILIES = {
    "PixArt-alpha/PixArt-XL-2-512x512": ({"height": 64, "width": 64, "use_resolution_binning": False},
                                         ["--height", "64", "--width", "64", "--no-resolution-binning"]),
    "DeepFloyd/IF-I-XL-v1.0": ({"height": 16, "width": 16}, ["--height", "16", "--width", "16"]),
    "kandinsky-community/kandinsky-2-1": ({"height": 64, "width": 64, "prior_num_inference_steps": 2},
                                          ["--height", "64", "--width", "64", "--prior-steps", "2"]),
    "kandinsky-community/kandinsky-2-2-decoder": ({"height": 64, "width": 64, "prior_num_inference_steps": 2},
                                                  ["--height", "64", "--width", "64", "--prior-steps", "2"]),
    "kandinsky-community/kandinsky-3": ({"height": 64, "width": 64}, ["--height", "64", "--width", "64"]),
    "warp-ai/wuerstchen": ({"height": 128, "width": 128, "prior_num_inference_steps": 2},
                           ["--height", "128", "--width", "128", "--prior-steps", "2"]),
    "thu-ml/unidiffuser-v1": ({}, []),
}


def _child_env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0",
            "JAXGEN_COMPILATION_CACHE": str(tmp_path / "jax-cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def _folders(config: dict) -> dict[str, Path]:
    return {repo: Path(config["out"]) / repo.replace("/", "__") for repo in FAMILIES}


def _run_interleaved(config: dict) -> None:
    """Child 1: every family's batch, one more job per round, until killed."""
    from jaxgen.batch import generate_batch, load_pipeline

    pipes = {repo: load_pipeline(config["models"][repo]) for repo in FAMILIES}
    for n in range(1, len(PROMPTS) + 1):
        for repo, folder in _folders(config).items():
            generate_batch(pipes[repo], PROMPTS[:n], folder, batch_size=1, seed=SEED, show_progress=False,
                           num_inference_steps=STEPS, **FAMILIES[repo][0])
            print(f"{repo}: {n} at {time.perf_counter() - START:.1f} s", flush=True)


def _resume(config: dict) -> None:
    """Child 2: ``jaxgen batch`` on each family's folder, the prompts as a .txt file (the same ids and seeds)."""
    from jaxgen.cli import main

    prompts = Path(config["out"]) / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    for repo, folder in _folders(config).items():
        status = main(["batch", "--model", config["models"][repo], "--prompts", str(prompts), "--out", str(folder),
                       "--steps", str(STEPS), "--batch-size", "1", "--seed", str(SEED), "--no-progress",
                       *FAMILIES[repo][1]])
        print(f"{repo}: exit {status} at {time.perf_counter() - START:.1f} s", flush=True)


def test_every_family_resumes_after_sigkill(tiny_hub, tmp_path):
    config = {"models": {repo: str(tiny_hub[repo]) for repo in FAMILIES}, "out": str(tmp_path / "out")}
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    folders = _folders(config)
    command = [sys.executable, "-m", "tests.test_batch_families"]
    proc = subprocess.Popen([*command, "run", str(config_file)], cwd=ROOT, env=_child_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 400
    try:  # kill as soon as every family has a finished image
        while not all(any(folder.glob("*.png")) for folder in folders.values()):
            assert proc.poll() is None, f"the run ended before the kill:\n{proc.communicate()[0]}"
            assert time.monotonic() < deadline, "not every family wrote an image within 400 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == -signal.SIGKILL, f"the run finished before the kill:\n{output}"
    before = {repo: {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.glob("*.png")}
              for repo, folder in folders.items()}
    for repo, done in before.items():
        assert 1 <= len(done) < len(PROMPTS), (repo, sorted(done))

    resumed = subprocess.run([*command, "resume", str(config_file)], cwd=ROOT, env=_child_env(tmp_path),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout
    names = [f"{i:06d}.png" for i in range(1, len(PROMPTS) + 1)]
    for repo, folder in folders.items():
        assert f"{repo}: exit 0" in resumed.stdout, resumed.stdout
        assert sorted(p.name for p in folder.glob("*.png")) == names, repo
        for name, (inode, mtime) in before[repo].items():  # finished before the kill: not written again
            assert ((folder / name).stat().st_ino, (folder / name).stat().st_mtime_ns) == (inode, mtime), (repo, name)
        lines = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
        assert sorted(line["id"] for line in lines) == [n[:-4] for n in names], repo  # each image recorded once
        assert {line["seed"] for line in lines} == {SEED + i for i in range(len(PROMPTS))}, repo
        assert not [p.name for p in folder.iterdir() if ".tmp" in p.name], repo
        for name in names:
            with PIL.Image.open(folder / name) as image:
                assert json.loads(image.info["parameters"])["prompt"] == PROMPTS[int(name[:6]) - 1]
                assert np.asarray(image.convert("RGB")).std() > 0, (repo, name)  # an image, not a blank
        done = len(before[repo])
        assert f"{len(PROMPTS) - done} images generated, {done} already done" in resumed.stdout, (repo, resumed.stdout)


if __name__ == "__main__":  # a child of the test above
    phase, config_path = sys.argv[1], sys.argv[2]
    loaded = json.loads(Path(config_path).read_text())
    {"run": _run_interleaved, "resume": _resume}[phase](loaded)
