"""Issue 17's finding tests before and after the fixes: one table from two JUnit XML reports.

Run the finding tests (tests/reliability/test_findings.py, tests/serve/test_server_hostile.py) once
against the pre-fix source and once against this one, each with ``--junitxml``, then:

    git worktree add /tmp/old17 62ca23d   # main before the issue-17 commits
    PYTHONPATH=/tmp/old17/src python -m pytest tests/reliability/test_findings.py \\
        tests/serve/test_server_hostile.py -k "not schemathesis" --junitxml=before.xml
    PYTHONPATH=src python -m pytest (same files) --junitxml=after.xml
    python benchmarks/hostile_findings.py --before before.xml --after after.xml

Writes ``benchmarks/results/hostile_findings.json``: per test its finding, how it ended before
(failed, and the assertion or exception line) and after.
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


def outcomes(path: Path) -> dict[str, dict[str, str]]:
    """test id -> {"outcome": passed|failed|error|skipped, "how": first line of the failure}."""
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        bad = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        how = ""
        if bad is not None:
            text = (bad.get("message") or bad.text or "").strip()
            how = text.splitlines()[0][:300] if text else ""
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
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "hostile_findings.json")
    args = ap.parse_args(argv)
    before, after = outcomes(args.before), outcomes(args.after)
    rows = []
    for test in sorted(before.keys() | after.keys(), key=lambda t: (finding_of(t) or 99, t)):
        rows.append({"finding": finding_of(test), "test": test,
                     "before": before.get(test, {"outcome": "not run", "how": ""}),
                     "after": after.get(test, {"outcome": "not run", "how": ""})})
    demonstrated = {n: any(r["finding"] == n and r["before"]["outcome"] == "failed" and r["after"]["outcome"] == "passed"
                           for r in rows) for n in FINDINGS}
    result = {"before_commit": args.before_commit, "findings": {str(n): {"what": w, "fails_before_passes_after":
                                                                            demonstrated[n]}
                                                                 for n, w in FINDINGS.items()},
              "tests": rows}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for n in FINDINGS:
        print(f"finding {n}: {'demonstrated' if demonstrated[n] else 'NOT demonstrated'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
