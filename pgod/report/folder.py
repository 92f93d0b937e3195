"""Write a report folder: the charts, ANALYSIS.md and report.json (each file replaced whole)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pgod.report import markdown as report_markdown

ANALYSIS = "ANALYSIS.md"
REPORT_JSON = "report.json"


def _replace(path: Path, text: str) -> None:
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text(text, encoding="utf-8")
    os.replace(scratch, path)


def write_folder(document: dict, folder: Path) -> dict:
    """Draw every package's charts into ``folder`` (made if needed), then ANALYSIS.md and
    report.json, which names the charts; returns the document as written."""
    from pgod.report import charts as report_charts  # matplotlib is loaded only for a report

    folder.mkdir(parents=True, exist_ok=True)
    charts = {}
    for package in document["packages"]:
        package["charts"] = charts[package["name"]] = report_charts.draw(package, folder)
    document["folder"] = str(folder.resolve())
    _replace(folder / ANALYSIS, report_markdown.render(document, charts))
    _replace(folder / REPORT_JSON, json.dumps(document, indent=2) + "\n")
    return document
