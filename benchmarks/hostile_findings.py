"""Issue 17's finding tests before and after the fixes: one table from two JUnit XML reports.

Run the finding tests (tests/reliability/test_findings.py, tests/serve/test_server_hostile.py) once
against the pre-fix source and once against this one, each with ``--junitxml``, then:

    git worktree add /tmp/old17 62ca23d   # main before the issue-17 commits
    PYTHONPATH=/tmp/old17/src python -m pytest tests/reliability/test_findings.py \\
        tests/serve/test_server_hostile.py --junitxml=before.xml
    PYTHONPATH=src python -m pytest (same files) --junitxml=after.xml
    python benchmarks/hostile_findings.py --before before.xml --after after.xml --how "when, load"

Writes ``benchmarks/results/hostile_findings.json``: per test its finding, how it ended before
(failed, and the assertion or exception line) and after. A finding counts as shown only when one of
its tests failed before by behaviour (a failure that is an ImportError or AttributeError, a name
the old code lacks, does not count) and passed after.
"""

from __future__ import annotations

import argparse
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FINDINGS = {
    1: "cache eviction / clear deletes another run's in-progress entry; a killed write counted as an entry",
    2: "a thin 1x20000 image exhausts memory in train/predict/evaluate",
    3: "the server's memory can be exhausted within its per-image limits",
    4: "symlinked folders duplicate images across splits",
    5: "run folders overwritten or mixed; config.json for a run that never happened",
    6: "a full disk during a cache write: SIGBUS / a crash, temp file left",
    7: "raw tracebacks instead of one line; bad values silently accepted",
    8: "serve: short classes start fine then 500; plain-text errors; 503s not counted",
    9: "a killed compare cannot resume",
}


MISSING_NAME = re.compile(r"^(ImportError|ModuleNotFoundError|AttributeError)\b|cannot import name|has no attribute")
EXCEPTION_LINE = re.compile(r"^\s*([\w.]+(Error|Exception|Exit)|Failed|assert)\b")


def _how(text: str) -> str:
    """The failure's first line; for a captured traceback, also its last exception line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    first = lines[0][:300]
    if "Traceback (most recent call last)" in first:
        last = next((ln for ln in reversed(lines) if EXCEPTION_LINE.match(ln) and "Traceback" not in ln), "")
        first = f"{first} ... {last[:200]}" if last else first
    return first


def outcomes(path: Path) -> dict[str, dict[str, str]]:
    """test id -> {"outcome": passed|failed|error|skipped, "how": first line of the failure}."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        bad = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        how = "" if bad is None else _how(bad.get("message") or bad.text or "")
        out[name] = {"outcome": "passed" if bad is None else {"failure": "failed"}.get(bad.tag, bad.tag), "how": how}
    return out


def finding_of(test: str) -> int | None:
    m = re.search(r"::test_(\d)_", test)
    return int(m.group(1)) if m else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, required=True, help="JUnit XML of the run against the pre-fix source")
    ap.add_argument("--after", type=Path, required=True, help="JUnit XML of the run against this source")
    ap.add_argument("--before-commit", default="62ca23d")
    ap.add_argument("--how", default="", help="when and how the two reports were made (time, load), for the record")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "hostile_findings.json")
    args = ap.parse_args(argv)
    before, after = outcomes(args.before), outcomes(args.after)
    rows = []
    for test in sorted(before.keys() | after.keys(), key=lambda t: (finding_of(t) or 99, t)):
        rows.append({"finding": finding_of(test), "test": test,
                     "before": before.get(test, {"outcome": "not run", "how": ""}),
                     "after": after.get(test, {"outcome": "not run", "how": ""})})
    for r in rows:
        before_how = r["before"]["how"]
        r["fails_before_by_behaviour"] = r["before"]["outcome"] == "failed" and not MISSING_NAME.search(before_how)
    demonstrated = {n: any(r["finding"] == n and r["fails_before_by_behaviour"] and r["after"]["outcome"] == "passed"
                           for r in rows) for n in FINDINGS}
    findings = {str(n): {"what": w, "fails_before_passes_after": demonstrated[n]} for n, w in FINDINGS.items()}
    result = {"before_commit": args.before_commit, "how": args.how, "findings": findings, "tests": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        if r["before"]["outcome"] == "failed" and not r["fails_before_by_behaviour"]:
            print(f"failed before by a missing name, not by behaviour: {r['test']}: {r['before']['how']}")
    for n in FINDINGS:
        print(f"finding {n}: {'demonstrated' if demonstrated[n] else 'NOT demonstrated'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
