"""Ablation statistics, importances, plots and reports from raykd's trial tables.

``python -m raykd.analyze RESULTS`` is the command; :func:`analyze` computes the numbers
(an :class:`Analysis`), :func:`build_report` formats them and :func:`write` writes the
report folder (Markdown, self-contained HTML, LaTeX, CSV, PNG). Imported on first use, so
``python -m raykd.analyze --help`` stays fast.
"""

__all__ = ["Analysis", "analyze", "build_report", "write"]


def __getattr__(name: str):
    if name in ("Analysis", "analyze", "build_report"):
        from raykd.analyze import pipeline

        return getattr(pipeline, name)
    if name == "write":
        from raykd.analyze.report import write

        return write
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
