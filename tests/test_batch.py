"""jaxgen batch: prompts files, per-image seeds, PNG metadata, the manifest, resuming (a killed run: test_batch_families.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import jaxgen
from jaxgen.batch import generate_batch, read_manifest, read_prompts
from jaxgen.cli import main

CALL = dict(num_inference_steps=2, height=16, width=16, use_resolution_binning=False, show_progress=False)
PROMPTS = [
    "a photo of a cat", "an astronaut riding a horse on the moon", "the quick brown fox", "a city at night",
    "a small cactus with a happy face", "a painting of a dog", "neon lights in the rain",
]


@pytest.fixture(scope="module")
def pipe(tiny_pixart):
    folder, _ = tiny_pixart
    pipe = jaxgen.PixArtAlphaPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pixels(path) -> np.ndarray:
    with PIL.Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def _parameters(path) -> dict:
    with PIL.Image.open(path) as image:
        return json.loads(image.info["parameters"])


def _manifest_lines(folder: Path, name: str = "manifest.jsonl") -> list[dict]:
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def _write_txt(folder: Path, prompts) -> Path:
    path = folder / "prompts.txt"
    # blank lines are skipped, but ids are line numbers: blank line 3 makes the third prompt "000004"
    lines = list(prompts[:2]) + [""] + list(prompts[2:]) + ["   "]
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- prompts files


def test_read_prompts_txt_and_jsonl(tmp_path):
    jobs = read_prompts(_write_txt(tmp_path, PROMPTS), seed=10)
    assert [j.prompt for j in jobs] == PROMPTS
    assert [j.id for j in jobs] == ["000001", "000002", "000004", "000005", "000006", "000007", "000008"]
    assert [j.seed for j in jobs] == list(range(10, 17))
    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "a cat", "seed": 123, "id": "cat"}\n\n{"prompt": "a dog", "negative_prompt": "blurry"}\n'
        '{"prompt": "a fox", "name": 7}\n'
    )
    jobs = read_prompts(path, seed=5)
    assert [(j.id, j.seed, j.negative_prompt, j.line) for j in jobs] == [
        ("cat", 123, None, 1), ("000003", 6, "blurry", 3), ("7", 7, None, 4)
    ]
    jobs = read_prompts(["a cat", "", {"prompt": "a dog", "seed": 9}])
    assert [(j.id, j.seed, j.prompt) for j in jobs] == [("000001", 0, "a cat"), ("000003", 9, "a dog")]
    with pytest.raises(ValueError, match="prompts item 2: expected a non-empty string"):
        read_prompts(["a cat", {"text": "a dog"}])


@pytest.mark.parametrize("name, text, message", [
    ("missing.txt", None, "prompts file not found"),
    ("empty.txt", "\n  \n", "no prompts"),
    ("bad.jsonl", '{"prompt": "a"}\n{"prompt": "b",\n', "bad.jsonl line 2: not valid JSON"),
    ("noprompt.jsonl", '{"prompt": "a"}\n\n{"text": "b"}\n', "line 3: expected a non-empty string \"prompt\""),
    ("seed.jsonl", '{"prompt": "a", "seed": "1"}\n', "line 1: \"seed\" must be an integer"),
    ("dup.jsonl", '{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n', "line 2: id 'x' is also the id of line 1"),
])
def test_prompts_errors(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        read_prompts(path)
    # the command reports it in one line, before loading any model (the model path does not exist)
    status = main(["batch", "--model", str(tmp_path / "no-model"), "--prompts", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("jaxgen: error: ") and message.split(":")[-1].strip() in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- the Python function


@pytest.mark.parametrize("height, width, binning", [(16, 24, False), (300, 200, True), (None, None, True)])
def test_latent_shape_is_the_pipelines(pipe, height, width, binning):
    from jaxgen.batch import _latent_layout

    latent, *_ = _latent_layout(pipe, height, width, binning)
    # the pipeline names the latents shape it expects (it checks before encoding anything)
    with pytest.raises(ValueError, match=r"Unexpected latents shape") as info:
        pipe("a cat", height=height, width=width, use_resolution_binning=binning, latents=np.zeros((1, 1, 1, 4)))
    assert f"{(1, *latent)}" in str(info.value)



def test_files_metadata_manifest(pipe, tmp_path):
    prompts = _write_txt(tmp_path, PROMPTS)
    out = tmp_path / "out"
    summary = generate_batch(pipe, prompts, out, batch_size=3, seed=100, negative_prompt="ugly", **CALL)
    assert (summary.jobs, summary.images, summary.generated, summary.skipped) == (7, 7, 7, 0)
    ids = ["000001", "000002", "000004", "000005", "000006", "000007", "000008"]
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i}.png" for i in ids]
    lines = _manifest_lines(out)
    assert [line["id"] for line in lines] == ids
    for index, (line, prompt) in enumerate(zip(lines, PROMPTS)):
        params = _parameters(out / line["file"])
        assert params == {k: v for k, v in line.items() if k != "file"}
        assert (params["prompt"], params["seed"], params["negative_prompt"]) == (prompt, 100 + index, "ugly")
        settings = params["settings"]
        assert (settings["num_inference_steps"], settings["height"], settings["width"]) == (2, 16, 16)
        assert settings["guidance_scale"] == 4.5 and settings["use_resolution_binning"] is False
        assert settings["scheduler"]["class"] == "DPMSolverMultistepScheduler" and settings["dtype"] == "float32"
        assert _pixels(out / line["file"]).shape == (16, 16, 3)
    assert not [p for p in out.iterdir() if ".tmp" in p.name]

    # jsonl: given ids name the files, given seeds win, per-line negative prompts
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("".join(
        json.dumps({"prompt": p, "id": f"job/{i}", **({"seed": 100 + i} if i % 2 else {}),
                    **({"negative_prompt": "dark"} if i == 3 else {})}) + "\n"
        for i, p in enumerate(PROMPTS)
    ))
    out2 = tmp_path / "out2"
    generate_batch(pipe, jsonl, out2, batch_size=3, seed=100, negative_prompt="ugly", **CALL)
    lines = {line["id"]: line for line in _manifest_lines(out2)}
    assert lines["job/3"]["file"] == "job_3.png" and lines["job/3"]["negative_prompt"] == "dark"
    assert [lines[f"job/{i}"]["seed"] for i in range(7)] == [100, 101, 102, 103, 104, 105, 106]
    # same prompt, seed and (default) negative prompt as in the txt run: the same image
    assert np.array_equal(_pixels(out2 / "job_0.png"), _pixels(out / "000001.png"))
    assert not np.array_equal(_pixels(out2 / "job_3.png"), _pixels(out / "000005.png"))  # other negative prompt


def test_reproducible_and_independent_of_batching(pipe, tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_batch(pipe, PROMPTS, a, batch_size=3, seed=7, **CALL)
    generate_batch(pipe, PROMPTS, b, batch_size=3, seed=7, **CALL)
    generate_batch(pipe, PROMPTS, c, batch_size=1, seed=7, **CALL)
    files = sorted(p.name for p in a.glob("*.png"))
    assert len(files) == 7 and files == sorted(p.name for p in c.glob("*.png"))
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes()  # same seed: the very same file
        # the same image whichever batch (and batch size) it landed in, up to float rounding
        assert np.abs(_pixels(a / name) - _pixels(c / name)).max() <= 1
    # and the same as the pipeline run alone with that seed
    alone = pipe(PROMPTS[4], rng=7 + 4, **{k: v for k, v in CALL.items() if k != "show_progress"}).images[0]
    assert np.array_equal(np.asarray(alone, np.int16), _pixels(c / "000005.png"))
    assert len({(a / name).read_bytes() for name in files}) == 7


def test_several_images_per_prompt(pipe, tmp_path):
    # batch_size 1 x 3 images: the batch shape of the batch_size-3 runs, so nothing recompiles
    summary = generate_batch(pipe, PROMPTS[:2], tmp_path, batch_size=1, seed=7, num_images_per_prompt=3, **CALL)
    assert (summary.images, summary.generated) == (6, 6)
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [f"00000{i}-{k}.png" for i in (1, 2) for k in range(3)]
    assert sorted((line["id"], line["image"]) for line in _manifest_lines(tmp_path)) == [
        (f"00000{i}", k) for i in (1, 2) for k in range(3)
    ]
    single = pipe(PROMPTS[1], rng=8, **{k: v for k, v in CALL.items() if k != "show_progress"}).images[0]
    assert np.abs(_pixels(tmp_path / "000002-0.png") - np.asarray(single, np.int16)).max() <= 1  # image 0 = rng=seed
    assert len({(tmp_path / n).read_bytes() for n in names}) == 6


def test_resume_after_crashes_at_every_point(pipe, tmp_path):
    out = tmp_path / "out"
    generate_batch(pipe, PROMPTS, out, batch_size=3, **CALL)
    manifest = out / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    stat = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.png")}
    # crash between rename and manifest line (000007), mid manifest append (torn line), mid image write
    # (stale temp file), a damaged image (000002) and a lost one (000004)
    manifest.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    (out / ".000003.png.tmp-p0").write_bytes(b"\x89PNG partial")
    (out / "000002.png").write_bytes((out / "000002.png").read_bytes()[:-30])
    (out / "000004.png").unlink()
    summary = generate_batch(pipe, PROMPTS, out, batch_size=3, **CALL)
    assert (summary.generated, summary.skipped) == (2, 5)
    for name, before in stat.items():
        after = (out / name).stat()
        assert ((after.st_ino, after.st_mtime_ns) == before) == (name not in ("000002.png", "000004.png")), name
        _pixels(out / name)  # every image loads
    entries = read_manifest(out)
    assert sorted(e["id"] for e in entries) == sorted(n[:-4] for n in stat)
    assert all(json.loads(line) for line in manifest.read_text().splitlines())  # torn line dropped
    assert not [p for p in out.iterdir() if ".tmp" in p.name]
    # a rerun with other settings refuses to mix them into the folder
    with pytest.raises(ValueError, match="made with num_inference_steps 2, not 3"):
        generate_batch(pipe, PROMPTS, out, batch_size=3, **{**CALL, "num_inference_steps": 3})
    with pytest.raises(ValueError, match="made with seed 0, not 1"):
        generate_batch(pipe, PROMPTS, out, batch_size=3, seed=1, **CALL)
    assert generate_batch(pipe, PROMPTS, out, batch_size=3, **CALL).generated == 0
    # two runs never write one folder at once
    from jaxgen.batch_files import lock_folder as _lock

    held = _lock(out, 0)
    try:
        with pytest.raises(ValueError, match="another jaxgen batch"):
            generate_batch(pipe, PROMPTS, out, batch_size=3, **CALL)
    finally:
        held.close()


def test_processes_split_the_jobs(pipe, tmp_path):
    # as on 2 hosts: each takes every other job and writes its own manifest; batch shape 3 for both
    s0 = generate_batch(pipe, PROMPTS, tmp_path, batch_size=3, process_index=0, process_count=2, **CALL)
    s1 = generate_batch(pipe, PROMPTS, tmp_path, batch_size=3, process_index=1, process_count=2, **CALL)
    assert (s0.jobs, s1.jobs) == (4, 3)
    assert [e["id"] for e in _manifest_lines(tmp_path, "manifest-0.jsonl")] == ["000001", "000003", "000005", "000007"]
    assert [e["id"] for e in _manifest_lines(tmp_path, "manifest-1.jsonl")] == ["000002", "000004", "000006"]
    # resumed by one process, nothing is redone
    assert generate_batch(pipe, PROMPTS, tmp_path, batch_size=3, **CALL).generated == 0
    assert not (tmp_path / "manifest.jsonl").read_text()


# --------------------------------------------------------------------------- killed midway


# the killed run (SIGKILL midway, then resumed by the command line): tests/test_batch_families.py, every family


def test_arguments_the_pipeline_does_not_take_fail_first(pipe, tiny_pixart, tmp_path):
    from jaxgen.batch import load_pipeline

    with pytest.raises(TypeError, match=r"PixArtAlphaPipeline does not take \['prior_num_inference_steps'\]"):
        generate_batch(pipe, ["a cat"], tmp_path / "out", prior_num_inference_steps=2, **CALL)
    assert not (tmp_path / "out").exists()  # nothing written
    with pytest.raises(ValueError, match="--prior-model: PixArtAlphaPipeline .* has no prior"):
        load_pipeline(tiny_pixart[0], prior="somewhere")
    flags = ["batch", "--model", str(tiny_pixart[0]), "--prompts", str(_write_txt(tmp_path, PROMPTS[:1])),
             "--out", str(tmp_path / "cli")]
    assert main([*flags, "--num-processes", "2"]) == 2  # the multi-host flags need --distributed
    assert main([*flags, "--prior-steps", "2", "--steps", "2"]) == 2  # PixArt has no prior
