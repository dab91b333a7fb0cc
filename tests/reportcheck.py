"""Does the Snakemake report show each table's rows to a reader? Checked in a headless browser.

`snakemake --report` writes one HTML file holding a React app; the tables are inline in their results' captions
(workflow/report/table.rst), which the app renders only when the reader opens *Tables* and then a table's info
button. So the check clicks the same way: a copy of the report gets a small script that, once the page has loaded,
clicks *Tables*, then each listed table's info button, and copies what the app rendered into a hidden element;
`chromium --headless --dump-dom` then returns the page as rendered. Every row of each table's CSV (the same
`itrbench table` call wrote both) must be in that rendered HTML: its method label once per protocol block, and the
reproduced R@sum where it has one.

Command line, for a real run: python tests/reportcheck.py report.html results/<config>/tables
"""
from __future__ import annotations

import html.parser
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

DRIVER = r"""
(function () {
  const wait = ms => new Promise(r => setTimeout(r, ms));
  const links = () => [...document.querySelectorAll("a")];
  const click = el => el.dispatchEvent(new MouseEvent("click", {bubbles: true, cancelable: true}));
  async function run() {
    const out = document.createElement("div");
    out.id = "itrbench-check";
    out.hidden = true;
    document.body.appendChild(out);
    const log = msg => { const p = document.createElement("p"); p.className = "log"; p.textContent = msg; out.appendChild(p); };
    await wait(500);
    const menu = links().find(a => a.textContent.trim() === "Tables");
    if (!menu) { log("no Tables menu item"); return; }
    click(menu); await wait(500);
    const n = document.querySelectorAll("nav table tbody tr").length;
    log("listed: " + n);
    for (let i = 0; i < n; i++) {
      if (i > 0) {  // back to the listing through the breadcrumbs
        const back = links().find(a => a.textContent.trim() === "Tables");
        if (!back) { log("no way back to Tables"); return; }
        click(back); await wait(500);
      }
      const row = document.querySelectorAll("nav table tbody tr")[i];
      const buttons = row.querySelectorAll("a");
      click(buttons[buttons.length - 1]); await wait(500);  // the info button: the result's description
      const caption = document.querySelector("nav li.prose");
      const shown = document.createElement("section");
      shown.dataset.table = row.querySelector("td").textContent.trim();
      shown.innerHTML = caption ? caption.innerHTML : "";
      out.appendChild(shown);
    }
    log("done");
  }
  window.addEventListener("load", () => { run().catch(err => { document.body.dataset.checkError = String(err); }); });
})();
"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    return None


def rendered_dom(report: Path, chromium: str, workdir: Path, budget_ms: int = 30000) -> str:
    """The report's DOM after the driver clicked through every table (chromium --headless --dump-dom)."""
    text = Path(report).read_text()
    end = text.rindex("</body>")
    driven = Path(workdir) / "report_driven.html"
    driven.write_text(text[:end] + f"<script>{DRIVER}</script>" + text[end:])
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           f"--user-data-dir={Path(workdir) / 'chromium-profile'}", f"--virtual-time-budget={budget_ms}",
           "--dump-dom", driven.resolve().as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if out.returncode != 0 or "itrbench-check" not in out.stdout:
        raise RuntimeError(f"{chromium} --dump-dom failed (rc {out.returncode}): {out.stderr[-2000:]}")
    return out.stdout


class _Rows(html.parser.HTMLParser):
    """Every <tr> of every <table> as a list of cell texts; `tables` counts the tables."""

    def __init__(self):
        super().__init__()
        self.rows, self.tables, self._row, self._cell = [], 0, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables += 1
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def shown_tables(dom: str) -> dict[str, _Rows]:
    """Table name -> the rows the app rendered for it (from the driver's copies)."""
    check = dom[dom.index('id="itrbench-check"'):]
    shown = {}
    for m in re.finditer(r'<section data-table="([^"]*)">(.*?)</section>', check, re.S):
        parser = _Rows()
        parser.feed(m.group(2))
        shown[m.group(1)] = parser
    return shown


def missing_rows(dom: str, tables_dir: Path) -> list[str]:
    """What a reader of the rendered report cannot see: one line per table or row that is missing."""
    shown = shown_tables(dom)
    problems = []
    for csv in sorted(Path(tables_dir).glob("*.csv")):
        name = csv.stem
        if name == "claims":  # the claims table is a markdown file, not a report result
            continue
        if name not in shown:
            problems.append(f"{name}: not listed under Tables (listed: {sorted(shown)})")
            continue
        table = pd.read_csv(csv, skiprows=1, dtype={"row": str})
        rows = shown[name].rows
        if shown[name].tables < table["protocol"].nunique():
            problems.append(f"{name}: {shown[name].tables} tables rendered for {table['protocol'].nunique()} protocols")
        first_cells = [r[0] for r in rows if r]
        for method, count in table["method"].value_counts().items():
            if first_cells.count(method) < count:
                problems.append(f"{name}: row {method!r} shown {first_cells.count(method)} times, expected {count}")
        for r in table.to_dict("records"):
            mean = r.get("rsum_mean")
            if mean is not None and not (isinstance(mean, float) and math.isnan(mean)):
                want = f"{mean:.1f}"
                if not any(row and row[1] == "reproduced" and any(c.startswith(want) for c in row) for row in rows):
                    problems.append(f"{name}: reproduced R@sum {want} of {r['method']!r} not shown")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    chromium = find_chromium()
    if chromium is None:
        print("reportcheck: no chromium on PATH", file=sys.stderr)
        return 2
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        dom = rendered_dom(Path(argv[0]), chromium, Path(tmp))
    shown = shown_tables(dom)
    problems = missing_rows(dom, Path(argv[1]))
    for name, parsed in shown.items():
        print(f"{name}: {parsed.tables} tables, {len(parsed.rows)} rows rendered")
    print("\n".join(problems) or "every table row is shown")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
