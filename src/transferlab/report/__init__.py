"""HTML reports of compare and run directories.

Example:
    >>> from transferlab.report import build_report
    >>> build_report("cmp")  # doctest: +SKIP
    PosixPath('cmp/report.html')
"""

from transferlab.report.html import build_report, report_summary

__all__ = ["build_report", "report_summary"]
