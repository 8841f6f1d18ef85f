"""Better data: audit a labelled image set (label issues, duplicates, leakage, outliers, quality).

Example:
    >>> from transferlab.audit import AuditOptions, run_audit
    >>> run_audit("flowers17/", out="audit", options=AuditOptions())["counts"]  # doctest: +SKIP
    {'label': 12, 'duplicate': 0, 'near_duplicate': 3, 'leakage': 2, 'outlier': 4, 'quality': 1}
"""

from transferlab.audit.run import AUDIT_HTML, AUDIT_JSON, KINDS, AuditOptions, parse_drop, run_audit, write_clean

__all__ = ["AUDIT_HTML", "AUDIT_JSON", "KINDS", "AuditOptions", "parse_drop", "run_audit", "write_clean"]
