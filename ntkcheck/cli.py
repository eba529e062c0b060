"""The ntkcheck command line: list, run, report (and lm, for pretrained language models).

Bad input ends with one line `ntkcheck: error: ...` naming the bad value and exit code 2;
a failing verdict is a result, not an error (exit 0).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ntkcheck.errors import UserError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UserError(message)


def parse_widths(values: Sequence[str] | None) -> list[int] | None:
    """'64 128' or '64,128' -> [64, 128]; a non-positive or non-integer width is a UserError naming it."""
    if values is None:
        return None
    widths = []
    for chunk in values:
        for tok in chunk.split(","):
            tok = tok.strip()
            if not tok:
                continue
            try:
                w = int(tok)
            except ValueError:
                raise UserError(f"invalid width {tok!r}: widths must be positive integers") from None
            if w <= 0:
                raise UserError(f"invalid width {tok!r}: widths must be positive integers")
            widths.append(w)
    if not widths:
        raise UserError("--widths needs at least one width")
    return widths


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise UserError(f"invalid --seeds {text!r}: expected a positive integer") from None
    if v <= 0:
        raise UserError(f"invalid --seeds {text!r}: expected a positive integer")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ntkcheck", description="Measure whether NTK theory of fine-tuning holds.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="list the registered checks")
    run = sub.add_parser("run", help="run checks (all when none is named) and write DIR/report.md")
    run.add_argument("checks", nargs="*", metavar="CHECK")
    run.add_argument("--quick", action="store_true", help="reduced sweeps (about a minute per check on 2 cores)")
    run.add_argument("--out", default="ntkcheck-runs", help="run-store folder (default: ntkcheck-runs)")
    run.add_argument("--widths", nargs="+", help="override the width sweep, e.g. --widths 64 128 256")
    run.add_argument("--seeds", type=_positive_int, help="number of seeds")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    rep = sub.add_parser("report", help="(re)write DIR/report.md from the results in DIR")
    rep.add_argument("dir")
    try:
        from ntkcheck.realmodels.cli import add_lm_parser
    except ImportError:
        add_lm_parser = None
    if add_lm_parser is not None:
        add_lm_parser(sub)
    return p


def _cmd_list() -> int:
    from ntkcheck.checks.registry import all_checks

    for name, spec in all_checks().items():
        print(f"{name:16s} {spec.summary}")
    return 0


def _cmd_run(args) -> int:
    from ntkcheck.checks.registry import all_checks, get
    from ntkcheck.report import write_report
    from ntkcheck.runner import apply_overrides, run_check
    from ntkcheck.store import ensure_writable

    specs = [get(n) for n in args.checks] if args.checks else list(all_checks().values())
    widths = parse_widths(args.widths)
    configs = [apply_overrides(s.default_config(args.quick), widths, args.seeds, args.set) for s in specs]
    out = ensure_writable(Path(args.out))
    for spec, config in zip(specs, configs):
        print(f"== {spec.name}: {spec.summary}", flush=True)
        result = run_check(spec, config, out)
        for c in result.claims:
            mark = "ok  " if c.holds else "FAIL"
            tag = " (control)" if c.control else ""
            print(f"  [{mark}] {c.name}: measured {c.measured:.3g} CI [{c.ci[0]:.3g}, {c.ci[1]:.3g}]{tag}")
        print(f"  verdict: {result.verdict}  ({result.provenance['seconds']:.1f} s) -> {out / spec.name}",
              flush=True)
    path = write_report(out)
    print(f"report: {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            return _cmd_list()
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "report":
            from ntkcheck.report import write_report

            print(write_report(Path(args.dir)))
            return 0
        return args.handler(args)
    except UserError as e:
        print(f"ntkcheck: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("ntkcheck: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
