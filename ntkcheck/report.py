"""report.md over every check in a run store: claim, predicted, measured, CI, holds, and the plots."""
from __future__ import annotations

import json
from pathlib import Path

from ntkcheck.errors import UserError
from ntkcheck.store import atomic_write_text


def _fmt(v) -> str:
    if v is None:
        return "nan"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def load_results(out: Path) -> list[dict]:
    out = Path(out)
    results = []
    for path in sorted(out.glob("*/result.json")):
        try:
            results.append(json.loads(path.read_text("utf-8")))
        except (OSError, ValueError) as e:
            raise UserError(f"unreadable result file {str(path)!r}: {e}") from None
    return results


def render_report(out: Path) -> str:
    out = Path(out)
    results = load_results(out)
    lines = ["# ntkcheck report", ""]
    if not results:
        return "\n".join(lines + ["No check results in this folder yet.", ""])
    lines += ["| check | verdict | claims held | seconds |", "|---|---|---|---|"]
    for r in results:
        held = sum(c["holds"] for c in r["claims"])
        lines.append(f"| {r['check']} | **{r['verdict']}** | {held}/{len(r['claims'])} | "
                     f"{_fmt(r.get('provenance', {}).get('seconds'))} |")
    for r in results:
        lines += ["", f"## {r['check']}: {r['verdict']}", "",
                  "| claim | predicted | measured | 95% CI | tolerance | holds | control |",
                  "|---|---|---|---|---|---|---|"]
        for c in r["claims"]:
            ci = c.get("ci") or [None, None]
            lines.append(f"| {c['name']} | {_fmt(c['predicted'])} | {_fmt(c['measured'])} | "
                         f"[{_fmt(ci[0])}, {_fmt(ci[1])}] | {_fmt(c['tolerance'])} | "
                         f"{'yes' if c['holds'] else '**no**'} | {'control' if c['control'] else ''} |")
        for png in sorted((out / r["check"]).glob("*.png")):
            lines += ["", f"![{r['check']} {png.stem}]({r['check']}/{png.name})"]
    lines.append("")
    return "\n".join(lines)


def write_report(out: Path) -> Path:
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"report folder {str(out)!r} does not exist")
    path = out / "report.md"
    atomic_write_text(path, render_report(out))
    return path
