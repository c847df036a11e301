"""``python -m benchmarks`` (benchmarks/suite.py) in its smoke mode: it runs both libraries' whole pipelines on tiny
checkpoints and writes its table and JSON. Not a timing test: the numbers are not looked at."""

from __future__ import annotations

import json


def test_suite_runs_and_writes_its_table(tiny_hub, tmp_path):
    from benchmarks import suite

    checkpoints = tmp_path / "checkpoints.json"
    checkpoints.write_text(json.dumps({repo: str(folder) for repo, folder in tiny_hub.items()}))
    families = ["kandinsky2_2"]  # a prior feeding a decoder (one pipeline: PixArt, in the test below)
    assert suite.main(["--checkpoints", str(checkpoints), "--families", ",".join(families), "--steps", "2",
                       "--size", "64", "--reps", "1", "--json", str(tmp_path / "out.json"),
                       "--table", str(tmp_path / "table.md")]) == 0
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert {(r["family"], r["side"]) for r in rows} == {(f, s) for f in families for s in ("jaxgen", "diffusers")}
    assert all(r["finite"] and r["s_per_image"] > 0 and r["shape"] == [1, 64, 64, 3] for r in rows)
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("| family |") and all(f"| {f} | float32 | 64 | 2 |" in table for f in families)


def test_suite_random_weights_offload_and_workers(tiny_hub, tmp_path):
    """The real-size machinery on tiny folders: models built from their configs with random weights (both sides),
    jaxgen with enable_model_cpu_offload(), and a family measured in a worker process (--jobs), its rows merged."""
    from benchmarks import suite

    checkpoints = tmp_path / "checkpoints.json"
    checkpoints.write_text(json.dumps({repo: str(folder) for repo, folder in tiny_hub.items()}))
    common = ["--checkpoints", str(checkpoints), "--random-weights", "--families", "pixart", "--steps", "2",
              "--size", "64", "--reps", "1"]
    assert suite.main(common + ["--sides", "jaxgen,diffusers", "--json", str(tmp_path / "random.json")]) == 0
    assert suite.main(common + ["--sides", "jaxgen", "--offload", "--jobs", "1", "--time-budget", "600",
                                "--json", str(tmp_path / "offload.json"), "--table", str(tmp_path / "offload.md")]) == 0
    rows = json.loads((tmp_path / "random.json").read_text())["rows"]
    rows += json.loads((tmp_path / "offload.json").read_text())["rows"]
    assert [r["side"] for r in rows] == ["jaxgen", "diffusers", "jaxgen offload"]
    assert all(r["finite"] and r["s_per_image"] > 0 and r["shape"] == [1, 64, 64, 3] for r in rows)
    assert rows[0]["first_cached_s"] > 0  # the first call again, programs from the persistent cache
    assert "| pixart | float32 | 64 |" in (tmp_path / "offload.md").read_text()


def test_random_folders_take_the_hubs_component_names(tmp_path):
    """UniDiffuser's Hub model_index.json names `image_processor` what diffusers saves as `clip_image_processor`:
    the weightless real-size folder gets it under the Hub's name, and diffusers' pipeline gets it under its own."""
    from benchmarks.random_folders import _rename_like_real

    (tmp_path / "clip_image_processor").mkdir()
    (tmp_path / "clip_image_processor" / "preprocessor_config.json").write_text("{}")
    (tmp_path / "model_index.json").write_text(json.dumps(
        {"_class_name": "UniDiffuserPipeline", "clip_image_processor": ["transformers", "CLIPImageProcessorPil"]}))
    _rename_like_real(tmp_path, {"image_processor": ["transformers", "CLIPImageProcessor"], "_class_name": "x"})
    assert (tmp_path / "image_processor" / "preprocessor_config.json").exists()
