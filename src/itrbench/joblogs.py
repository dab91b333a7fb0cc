"""A failed Snakemake job's reason on the console: its `itrbench: error:` line is otherwise only in its log file."""
from __future__ import annotations

import re
import sys
from pathlib import Path

# the block Snakemake writes to its main log for each failed job
_FAILED = re.compile(r"^Error in rule (\S+):\n(?:    .*\n)*?    log: (.*) \(check log file", re.M)


def job_errors(main_log_text: str) -> list[tuple[str, str, str]]:
    """(rule, job log, error line) for each failed job whose log holds an `itrbench: error:` line."""
    out = []
    for m in _FAILED.finditer(main_log_text):
        for job_log in m.group(2).split(", "):
            try:
                lines = Path(job_log).read_text(errors="replace").splitlines()
            except OSError:
                continue
            out += [(m.group(1), job_log, line) for line in lines if line.startswith("itrbench: error:")]
    return out


def print_job_errors(main_logs) -> None:
    """Called by the workflow's `onerror` handler with Snakemake's main log file(s)."""
    for main_log in main_logs if isinstance(main_logs, (list, tuple)) else [main_logs]:
        try:
            text = Path(main_log).read_text(errors="replace")
        except OSError:
            continue
        for name, job_log, line in job_errors(text):
            print(f"rule {name} failed ({job_log}): {line}", file=sys.stderr)
