"""The ntkcheck command line: list, run, report, coord (and lm, for pretrained language models).

Each command parses and validates its flags, builds a config, and calls the same
function the Python API exposes (ntkcheck.checks.run_check, ntkcheck.checks.coord_check,
ntkcheck.realmodels.measure.*). Bad input ends with one line `ntkcheck: error: ...`
naming the bad value and exit code 2; a failing verdict is a result, not an error (exit 0).
An unexpected internal error prints one line with the path of a log file that holds the
traceback, and exits 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ntkcheck import distributed
from ntkcheck.errors import UserError

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


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
            if w in widths:
                raise UserError(f"--widths: width {w} is given twice")
            widths.append(w)
    if not widths:
        raise UserError("--widths needs at least one width")
    return widths


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise UserError(f"invalid {flag} {text!r}: expected a positive integer") from None
        if v <= 0:
            raise UserError(f"invalid {flag} {text!r}: expected a positive integer")
        return v
    parse.__name__ = "positive integer"   # argparse's message: "argument --jobs: invalid positive integer value: '0'"
    return parse


def _nonneg_int(flag: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise UserError(f"invalid {flag} {text!r}: expected an integer >= 0") from None
        if v < 0:
            raise UserError(f"invalid {flag} {text!r}: expected an integer >= 0")
        return v
    parse.__name__ = "integer >= 0"
    return parse


def _float(flag: str, positive: bool = True):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise UserError(f"invalid {flag} {text!r}: expected a number") from None
        if not (v > 0 if positive else v >= 0) or v != v or v == float("inf"):
            raise UserError(f"invalid {flag} {text!r}: expected a {'positive' if positive else 'non-negative'} "
                            "finite number")
        return v
    parse.__name__ = "positive number" if positive else "non-negative number"
    return parse


def build_parser() -> argparse.ArgumentParser:
    import ntkcheck

    p = _Parser(prog="ntkcheck", description="Measure whether NTK theory of fine-tuning holds.")
    p.add_argument("--version", action="version", version=f"ntkcheck {ntkcheck.__version__}")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)
    sub.add_parser("list", help="list the registered checks")
    run = sub.add_parser("run", help="run checks (all when none is named) and write DIR/report.md")
    run.add_argument("checks", nargs="*", metavar="CHECK")
    run.add_argument("--quick", action="store_true", help="reduced sweeps (about a minute per check on 2 cores)")
    run.add_argument("--out", default="ntkcheck-runs", help="run-store folder (default: ntkcheck-runs)")
    run.add_argument("--widths", nargs="+", help="set every width axis, e.g. --widths 64 128 256")
    run.add_argument("--seeds", type=_positive_int("--seeds"), help="number of seeds (every seeds axis)")
    run.add_argument("--seed-base", type=_nonneg_int("--seed-base"), default=None,
                     help="shift every seed by N: the same sweep on other draws (default 0)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    run.add_argument("--jobs", type=_positive_int("--jobs"), default=1,
                     help="run this many checks at once, each in its own process (default 1; one per core is "
                          "the most that helps: a check keeps one core busy)")
    st = sub.add_parser("selftest", help="inject each check's listed faults and show that its verdict catches them")
    st.add_argument("checks", nargs="*", metavar="CHECK")
    st.add_argument("--quick", action="store_true", help="the quick sweeps (what CI runs)")
    st.add_argument("--fault", action="append", default=None, metavar="NAME", help="only these faults")
    st.add_argument("--seed-base", type=_nonneg_int("--seed-base"), default=None)
    st.add_argument("--jobs", type=_positive_int("--jobs"), default=1,
                    help="fault runs in this many processes at once (default 1; one per core is the most)")
    st.add_argument("--out", default="ntkcheck-selftest", help="folder for the runs (default: ntkcheck-selftest)")
    rep = sub.add_parser("report", help="(re)write DIR/report.md from the results in DIR (checks and lm)")
    rep.add_argument("dir")
    coord = sub.add_parser("coord", help="coordinate check of your own model: FILE_OR_MODULE:FUNCTION(width)")
    coord.add_argument("factory", metavar="FILE_OR_MODULE:FUNCTION")
    coord.add_argument("--widths", nargs="+", help="widths (default 64 128 256 512 1024)")
    coord.add_argument("--optimizer", default="adam", choices=["sgd", "adam"])
    coord.add_argument("--lr", type=_float("--lr"), default=None, help="learning rate (default: sgd 0.1, adam 0.01)")
    coord.add_argument("--steps", type=_positive_int("--steps"), default=4, help="training steps (default 4)")
    coord.add_argument("--seeds", type=_positive_int("--seeds"), default=6, help="seeds per width (default 6: with 3 the bootstrap CI of a flat muP readout straddles the tolerance)")
    coord.add_argument("--batch", type=_positive_int("--batch"), default=32, help="batch size of the default data")
    coord.add_argument("--tolerance", type=_float("--tolerance"), default=0.15,
                       help="largest slope vs width a layer may show and still count as not growing (default 0.15)")
    coord.add_argument("--out", default="ntkcheck-runs", help="run-store folder (default: ntkcheck-runs)")
    coord.add_argument("--name", default=None, help="result folder name (default coord_<FUNCTION>)")
    try:
        from ntkcheck.realmodels.cli import add_lm_parser
    except ImportError:
        add_lm_parser = None
    if add_lm_parser is not None:
        add_lm_parser(sub)
    return p


def _cmd_list() -> int:
    from ntkcheck.checks import all_checks

    for name, spec in all_checks().items():
        print(f"{name:16s} {spec.summary}")
    return 0


def print_result(result, where: Path) -> None:
    """Each claim in one line, then the verdict."""
    marks = {"holds": "ok  ", "fails": "FAIL", "inconclusive": "??  ", "measured": "    "}
    for c in result.claims:
        tag = " (control)" if c.control else ""
        rel = f" [{c.relation} {c.predicted:g}, tol {c.tolerance:g}]" if c.relation else ""
        lo, hi = c.ci if c.ci is not None else (c.measured, c.measured)
        print(f"  [{marks[c.state]}] {c.name}{rel}: measured {c.measured:.3g} CI [{lo:.3g}, {hi:.3g}]{tag}")
    print(f"  verdict: {result.verdict}  ({result.provenance.get('seconds', 0):.1f} s) -> {where}", flush=True)


def _cmd_run(args) -> int:
    from ntkcheck.checks import all_checks, get, run_check, run_checks
    from ntkcheck.checks.config import axes, with_overrides
    from ntkcheck.report import write_report
    from ntkcheck.store import ensure_writable

    specs = [get(n) for n in args.checks] if args.checks else list(all_checks().values())
    widths = parse_widths(args.widths)
    for flag, value, kind in (("--widths", widths, "width"), ("--seeds", args.seeds, "seeds")):
        skipped = [s.name for s in specs if value is not None and not axes(s.config_cls, kind)]
        if skipped:
            print(f"ntkcheck: {flag} does not apply to {', '.join(skipped)} (no {kind} axis); "
                  "they run with their own", file=sys.stderr)
    configs = [with_overrides(s.default_config(args.quick), widths=widths, seeds=args.seeds,
                              seed_base=args.seed_base, sets=args.set) for s in specs]
    out = ensure_writable(args.out)
    main_rank = distributed.is_main()   # under torchrun rank 0 prints and writes the report
    if args.jobs > 1 and len(specs) > 1:
        if distributed.world_size() > 1:
            raise UserError(f"--jobs {args.jobs}: under torchrun the ranks already share the sweep points; "
                            "drop --jobs")
        from ntkcheck.log import progress_bar

        print(f"running {len(specs)} checks in {min(args.jobs, len(specs))} processes; each is shown when it "
              "finishes", flush=True)
        with progress_bar(total=len(specs), desc="checks finished", unit="check") as bar:
            for spec, result in run_checks(specs, configs, out, jobs=args.jobs):
                print(f"== {spec.name}: {spec.summary}", flush=True)
                print_result(result, out / spec.name)
                bar.update(1)
    else:
        for spec, config in zip(specs, configs):
            if main_rank:
                print(f"== {spec.name}: {spec.summary}", flush=True)
            result = run_check(spec, config, out)
            if main_rank:
                print_result(result, out / spec.name)
    if main_rank:
        print(f"report: {write_report(out)}")
    return 0


def _cmd_selftest(args) -> int:
    from ntkcheck.checks import all_checks, get
    from ntkcheck.checks.config import with_overrides
    from ntkcheck.checks.faults import selftest, table
    from ntkcheck.store import atomic_write_text, ensure_writable

    specs = [get(n) for n in args.checks] if args.checks else list(all_checks().values())
    known = {f.name for s in specs for f in s.faults}
    unknown = [f for f in (args.fault or []) if f not in known]
    if unknown:
        raise UserError(f"--fault {unknown[0]!r}: no such fault; faults: {', '.join(sorted(known))}")
    out = ensure_writable(args.out)
    rows, clean_bad = [], []
    for spec in specs:
        if not spec.faults:
            print(f"== {spec.name}: no faults listed")
            continue
        if args.fault and not any(f.name in args.fault for f in spec.faults):
            continue
        config = with_overrides(spec.default_config(args.quick), seed_base=args.seed_base)
        n_faults = sum(1 for f in spec.faults if args.fault is None or f.name in args.fault)
        print(f"== {spec.name}: clean run, then {n_faults} faults", flush=True)
        clean, outcomes = selftest(spec, quick=args.quick, out=out / spec.name, faults=args.fault, config=config,
                                   jobs=args.jobs)
        if clean.verdict != "pass":
            clean_bad.append(spec.name)
        print(f"  clean verdict: {clean.verdict}")
        for o in outcomes:
            if not o.caught_by_design:
                mark = "not caught (by design)" if o.observed in ("pass", "inconclusive") else "caught anyway"
            else:
                mark = "SURVIVED" if o.survived else "caught"
            print(f"  {o.fault:36s} expected {o.expected:5s} observed {o.observed:12s} {mark}  ({o.seconds:.0f} s)",
                  flush=True)
        rows += outcomes
    text = table(rows)
    atomic_write_text(out / "selftest.md", "# ntkcheck selftest\n\n" + text + "\n")
    survived = [f"{o.check}:{o.fault}" for o in rows if o.survived]
    caught = sum(o.caught_by_design and not o.survived for o in rows)
    print(f"{len(rows)} faults, {caught} caught, {len(survived)} survived, "
          f"{sum(not o.caught_by_design for o in rows)} not caught by design -> {out / 'selftest.md'}")
    if clean_bad:
        print(f"ntkcheck: the clean run of {', '.join(clean_bad)} did not pass; its faults prove nothing",
              file=sys.stderr)
    if survived:
        print(f"ntkcheck: faults survived: {', '.join(survived)}", file=sys.stderr)
    return 1 if (survived or clean_bad) else 0


def _cmd_coord(args) -> int:
    from ntkcheck.checks.coord import coord_check, load_factory
    from ntkcheck.report import write_report
    from ntkcheck.store import ensure_writable

    factory, batch, label = load_factory(args.factory)
    widths = parse_widths(args.widths) or [64, 128, 256, 512, 1024]
    if len(set(widths)) < 2:
        raise UserError(f"--widths {' '.join(args.widths)}: the coordinate check needs two different widths")
    out = ensure_writable(args.out)
    name = args.name or f"coord_{label}"
    result = coord_check(factory, widths, optimizer=args.optimizer, lr=args.lr, steps=args.steps,
                         seeds=args.seeds, batch=batch, batch_size=args.batch, tolerance=args.tolerance,
                         out=out, name=name, source=args.factory)
    print(f"== coordinate check of {args.factory}")
    print_result(result, out / name)
    grows = list(dict.fromkeys(c.id.rsplit(".", 1)[0] for c in result.claims if c.state == "fails"))
    print(f"  layers that grow with width: {', '.join(grows) if grows else 'none'}")
    print(f"report: {write_report(out)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        if args.command == "list":
            return _cmd_list()
        if args.command in ("run", "lm") and distributed.init(distributed.rank_device(getattr(args, "device", None))):
            # under torchrun: ranks share the work through the run store; the closing barrier waits for all
            rc = _cmd_run(args) if args.command == "run" else args.handler(args)
            distributed.finish()
            return rc
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "coord":
            return _cmd_coord(args)
        if args.command == "selftest":
            return _cmd_selftest(args)
        if args.command == "report":
            from ntkcheck.report import write_report

            print(write_report(args.dir))
            return 0
        return args.handler(args)
    except UserError as e:
        print(f"ntkcheck: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("ntkcheck: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except MemoryError:
        print("ntkcheck: error: out of memory; use smaller widths or sweeps (or --memory-gb for lm)",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:  # anything else is ntkcheck's bug: one line here, the traceback in a file
        if _is_device_oom(e):
            print(f"ntkcheck: error: out of memory on the device ({str(e).splitlines()[0][:120]}); lower --block "
                  "or --memory-gb, or use --model-dtype bfloat16; finished blocks and points are kept: rerun to resume",
                  file=sys.stderr)
            return EXIT_BAD_INPUT
        path = _write_traceback(argv)
        print(f"ntkcheck: internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
              f"(traceback in {path}; please report it)", file=sys.stderr)
        return EXIT_INTERNAL


def _is_device_oom(e: BaseException) -> bool:
    """torch's out-of-memory error of an accelerator (torch.OutOfMemoryError; CUDA's message elsewhere)."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(e, oom)) or (isinstance(e, RuntimeError) and "CUDA out of memory" in str(e))


def _write_traceback(argv) -> str:
    """Write the current exception's traceback and the command line to a log file; return its path."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="ntkcheck-error-", suffix=".log")
    with open(fd, "w") as fh:
        fh.write(f"ntkcheck {' '.join(sys.argv[1:] if argv is None else list(argv))}\n\n")
        fh.write(traceback.format_exc())
    return path


if __name__ == "__main__":
    sys.exit(main())
