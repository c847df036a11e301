"""Two processes joined by ``jax.distributed`` on 127.0.0.1 (CPU collectives over gloo), as on a multi-host slice:
``jaxgen batch --distributed`` splits the prompts between them and writes each image once, equal to a one-process
run; a pipeline on a mesh spanning both processes makes the same images as one process.

``python -m tests.test_distributed mesh CONFIG`` is a child of the mesh test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a photo of a cat", "an astronaut riding a horse", "a city at night", "a small cactus", "a red boat"]
CALL = {"num_inference_steps": 2, "height": 16, "width": 16, "use_resolution_binning": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(commands: list[list[str]], tmp_path: Path, devices: int) -> list[str]:
    """Run the processes together (each with ``devices`` CPU devices); their outputs, after all exit 0."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "JAX_PLATFORMS": "cpu", "JAXGEN_COMPILATION_CACHE": "off",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"}
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for c in commands]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output
    return outputs


def _pixels(path: Path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_batch_distributed_over_two_processes(tiny_pixart, tmp_path):
    from jaxgen.batch import generate_batch, read_manifest

    folder, _ = tiny_pixart
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "two"
    port = _free_port()
    command = [sys.executable, "-m", "jaxgen", "batch", "--model", str(folder), "--prompts", str(prompts),
               "--out", str(out), "--steps", "2", "--height", "16", "--width", "16", "--no-resolution-binning",
               "--batch-size", "2", "--seed", "7", "--no-progress", "--distributed",
               "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2"]
    outputs = _children([command + ["--process-id", str(i)] for i in range(2)], tmp_path, devices=2)
    assert "3 images generated" in outputs[0] and "2 images generated" in outputs[1], outputs  # jobs 0, 2, 4 | 1, 3

    names = [f"{i:06d}.png" for i in range(1, 6)]
    assert sorted(p.name for p in out.glob("*.png")) == names
    for p, ids in ((0, ["000001", "000003", "000005"]), (1, ["000002", "000004"])):
        lines = [json.loads(line) for line in (out / f"manifest-{p}.jsonl").read_text().splitlines()]
        assert sorted(line["id"] for line in lines) == ids  # each image written once, by its process
    assert not (out / "manifest.jsonl").exists()

    one = tmp_path / "one"
    generate_batch(str(folder), str(prompts), one, batch_size=2, seed=7, show_progress=False, process_index=0,
                   process_count=1, **CALL)
    for name in names:  # per-image noise from each seed: the same images whichever process made them
        assert np.abs(_pixels(out / name) - _pixels(one / name)).max() <= 1, name
    assert len(read_manifest(out)) == 5  # one resumable set over both manifests


def _mesh_child(config: dict) -> None:
    """One of two processes: PixArt on a ("data", "model") mesh over both processes' devices; process 0 saves the
    images."""
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(config["coordinator"], num_processes=2, process_id=config["process_id"])
    import jaxgen

    assert jax.process_count() == 2 and len(jax.devices()) == 4
    mesh = jaxgen.sharding.make_mesh(data=4, devices=jax.devices())
    pipe = jaxgen.PixArtAlphaPipeline.from_pretrained(config["model"], mesh=mesh)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPTS[:3], rng=11, output_type="np", **CALL).images
    if jax.process_index() == 0:
        np.save(config["out"], np.asarray(images))


def test_mesh_spanning_two_processes_matches_one(tiny_pixart, tmp_path):
    import jaxgen

    folder, _ = tiny_pixart
    coordinator = f"127.0.0.1:{_free_port()}"
    commands = []
    for i in range(2):
        config = tmp_path / f"config-{i}.json"
        config.write_text(json.dumps({"coordinator": coordinator, "process_id": i, "model": str(folder),
                                      "out": str(tmp_path / "images.npy")}))
        commands.append([sys.executable, "-m", "tests.test_distributed", "mesh", str(config)])
    _children(commands, tmp_path, devices=2)
    two = np.load(tmp_path / "images.npy")

    pipe = jaxgen.PixArtAlphaPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    one = pipe(PROMPTS[:3], rng=11, output_type="np", **CALL).images
    assert two.shape == one.shape == (3, 16, 16, 3)
    np.testing.assert_allclose(two, one, atol=1e-5)


if __name__ == "__main__":  # a child of the mesh test
    {"mesh": _mesh_child}[sys.argv[1]](json.loads(Path(sys.argv[2]).read_text()))
