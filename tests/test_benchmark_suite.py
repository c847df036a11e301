"""``python -m benchmarks`` (benchmarks/suite.py) in its smoke mode: it runs both libraries' whole pipelines on tiny
checkpoints and writes its table and JSON. Not a timing test: the numbers are not looked at."""

from __future__ import annotations

import json


def test_suite_runs_and_writes_its_table(tiny_hub, tmp_path):
    from benchmarks import suite

    checkpoints = tmp_path / "checkpoints.json"
    checkpoints.write_text(json.dumps({repo: str(folder) for repo, folder in tiny_hub.items()}))
    families = ["pixart", "kandinsky2_2"]  # one pipeline, and a prior feeding a decoder
    assert suite.main(["--checkpoints", str(checkpoints), "--families", ",".join(families), "--steps", "2",
                       "--size", "64", "--reps", "1", "--json", str(tmp_path / "out.json"),
                       "--table", str(tmp_path / "table.md")]) == 0
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert {(r["family"], r["side"]) for r in rows} == {(f, s) for f in families for s in ("jaxgen", "diffusers")}
    assert all(r["finite"] and r["s_per_image"] > 0 and r["shape"] == [1, 64, 64, 3] for r in rows)
    table = (tmp_path / "table.md").read_text()
    assert table.startswith("| family |") and all(f"| {f} | float32 | 64 | 2 |" in table for f in families)
