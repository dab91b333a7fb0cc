"""The Snakemake report opened in a headless browser shows every row of every table (tests/reportcheck.py).

The tiny config's DAG runs for real except its costly stages: a stand-in `itrbench` writes instant text caches,
concepts, alignment files and training metrics, and hands every other command (toy data, tables, claims, figures)
to the real CLI, so the report embeds the tables `itrbench table` really writes.
"""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from reportcheck import find_chromium, missing_rows, rendered_dom, shown_tables

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

STANDIN = '''#!{python}
import json, os, sys, zlib
from pathlib import Path
import numpy as np
import yaml
argv = sys.argv[1:]
opt = lambda name: argv[argv.index(name) + 1]
cmd = argv[0]
if cmd == "train":
    cfg = yaml.safe_load(Path(opt("--config")).read_text())
    out = Path(opt("--out"))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(opt("--out").encode()))
    protocols = {{}}
    for p in cfg["data"]["protocols"]:
        v = dict(zip(["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"], np.sort(rng.uniform(5, 60, 6)).tolist()))
        protocols[p] = {{**v, "rsum": sum(v.values())}}
    (out / "metrics.json").write_text(json.dumps({{"protocols": protocols, "pairs_per_second": 1e6, "convergence": {{
        "converged": True, "curve": {{"epoch": [-1, 0], "step": [0, 3], "rsum": [10.0, 50.0]}}}}}}))
    np.savez(out / "ranks.npz", t2i=rng.integers(0, 3, 50), i2t=rng.integers(0, 3, 10))
elif cmd == "cache-text":
    Path(opt("--out")).parent.mkdir(parents=True, exist_ok=True)
    Path(opt("--out")).write_text("x")
    Path(opt("--out")[:-len(".npy")] + ".len.npy").write_text("x")
elif cmd == "concepts":
    Path(opt("--out")).mkdir(parents=True)
elif cmd == "alignment-uniformity":
    Path(opt("--out")).write_text(json.dumps({{"alignment": {{"image_text": 1.1, "text_text": 0.9}},
        "uniformity": {{"image": {{"mean": 1.3, "var": 0.03}}, "text": {{"mean": 1.39, "var": 0.04}}}}}}))
else:
    os.execv(sys.executable, [sys.executable, "-m", "itrbench.cli", *argv])
'''


@pytest.mark.slow
@pytest.mark.skipif(find_chromium() is None, reason="no chromium (or chrome) on PATH or in /usr/bin: cannot render the report")
def test_report_in_a_headless_browser_shows_every_table_row(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "itrbench").write_text(STANDIN.format(python=sys.executable))
    (bin_dir / "itrbench").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    wd = tmp_path / "wd"
    base = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(wd),
            "--configfile", str(REPO / "workflow" / "config" / "tiny.yaml")]
    run = subprocess.run([*base[:3], "--cores", "2", "all", *base[3:]], env=env, capture_output=True, text=True,
                         timeout=1200)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    report = tmp_path / "report.html"
    made = subprocess.run([*base, "--report", str(report)], env=env, capture_output=True, text=True, timeout=600)
    assert made.returncode == 0 and report.exists(), (made.stdout + made.stderr)[-6000:]
    assert "Missing metadata" not in made.stdout + made.stderr

    dom = rendered_dom(report, find_chromium(), tmp_path)
    tables = wd / "results" / "tiny" / "tables"
    shown = shown_tables(dom)
    assert sorted(shown) == sorted(p.stem for p in tables.glob("*.html")), sorted(shown)  # every table listed
    assert missing_rows(dom, tables) == []
    # the check can fail: a row the report does not have, and a reproduced R@sum it does not show
    fake = tmp_path / "fake"
    fake.mkdir()
    csv = tables / "coder_table2.csv"
    head, table = csv.read_text().splitlines()[0], pd.read_csv(csv, skiprows=1, dtype={"row": str})
    extra = table.iloc[[0]].assign(method="a row nobody rendered")
    changed = table.assign(rsum_mean=table["rsum_mean"].where(table["rsum_mean"].isna(), 999.95))
    (fake / "coder_table2.csv").write_text(head + "\n" + pd.concat([changed, extra]).to_csv(index=False))
    problems = missing_rows(dom, fake)
    assert any("'a row nobody rendered' shown 0 times" in p for p in problems), problems
    assert any("reproduced R@sum 1000.0" in p for p in problems), problems
