"""DIR/report.md over every result in a run store, checks and LM measurements alike.

One summary table (name, kind, verdict, claims held, seconds), then per result
its claims (relation, predicted, measured, CI, tolerance, state) and its plots.
A result.json that is not a valid result is a UserError naming the file.
"""
from __future__ import annotations

import json
from pathlib import Path

from ntkcheck.errors import UserError
from ntkcheck.result import Result
from ntkcheck.store import atomic_write_text


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.3g}"
    return str(v)


def load_results(out: Path) -> list[tuple[Path, Result]]:
    """(folder, Result) of every DIR/<name>/result.json, sorted checks first, then by name."""
    out = Path(out)
    results = []
    for path in sorted(out.glob("*/result.json")):
        where = str(path)
        try:
            obj = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"unreadable result file {where!r}: {e}") from None
        results.append((path.parent, Result.from_json(obj, where)))
    return sorted(results, key=lambda pr: (pr[1].kind != "check", pr[1].name))


def render_report(out: Path) -> str:
    out = Path(out)
    results = load_results(out)
    lines = ["# ntkcheck report", ""]
    if not results:
        return "\n".join(lines + ["No results in this folder yet.", ""])
    lines += ["| result | kind | verdict | claims held | seconds |", "|---|---|---|---|---|"]
    for _, r in results:
        judged = [c for c in r.claims if c.judged]
        held = f"{sum(c.holds for c in judged)}/{len(judged)}" if judged else f"{len(r.claims)} measured"
        lines.append(f"| {r.name} | {r.kind} | **{r.verdict}** | {held} | {_fmt(r.provenance.get('seconds'))} |")
    for folder, r in results:
        lines += ["", f"## {r.name}: {r.verdict}", "",
                  "| claim | relation | predicted | measured | 95% CI | tolerance | state | control | source |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for c in r.claims:
            lo, hi = c.ci if c.ci is not None else (c.measured, c.measured)
            state = c.state if c.state in ("holds", "measured") else f"**{c.state}**"
            lines.append(f"| {c.name} | {_fmt(c.relation)} | {_fmt(c.predicted)} | {_fmt(c.measured)} | "
                         f"[{_fmt(lo)}, {_fmt(hi)}] | {_fmt(c.tolerance)} | {state} | "
                         f"{'control' if c.control else ''} | {c.source} |")
        for png in sorted(folder.glob("*.png")):
            lines += ["", f"![{r.name} {png.stem}]({folder.name}/{png.name})"]
    lines.append("")
    return "\n".join(lines)


def write_report(out: str | Path) -> Path:
    if not str(out).strip():
        raise UserError("report folder '' is empty; give the run-store folder")
    out = Path(out)
    if out.is_file():
        raise UserError(f"report folder {str(out)!r} is a file; give the run-store folder that holds it")
    if not out.is_dir():
        raise UserError(f"report folder {str(out)!r} does not exist")
    path = out / "report.md"
    atomic_write_text(path, render_report(out))
    return path
