"""Imports go one way: core <- theory <- models <- checks <- realmodels <- cli (design.md).

Every module of the package is parsed (its source, not imported), and every
import of an ntkcheck module, at top level or inside a function, is checked
against the layer order; an upward import fails naming the file and line.
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ("core", "theory", "models", "checks", "realmodels", "cli")
SOURCE_DIRS = {"ntkcheck": "ntkcheck", "theory": "ntkcheck.theory", "models": "ntkcheck.models",
               "checks": "ntkcheck.checks", "realmodels": "ntkcheck.realmodels"}
CLI_MODULES = ("ntkcheck.cli", "ntkcheck.__main__", "ntkcheck.realmodels.cli")
SUBPACKAGES = ("theory", "models", "checks", "realmodels")


def layer_of(module: str) -> str:
    """The layer of a dotted ntkcheck module name."""
    if any(module == m or module.startswith(m + ".") for m in CLI_MODULES):
        return "cli"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in SUBPACKAGES:
        return parts[1]
    return "core"


def modules(root: Path) -> dict[Path, str]:
    """{source file: dotted module name} for every .py file of the package under ``root``."""
    out = {}
    for folder, package in SOURCE_DIRS.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[path] = ".".join([package, *parts])
    return out


def imported(tree: ast.AST, module: str, is_package: bool):
    """(line, imported ntkcheck module) for every import statement in the tree, relative ones resolved."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ntkcheck":
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ntkcheck":
                continue
            if target == "ntkcheck":  # from ntkcheck import theory, __version__
                for alias in node.names:
                    yield node.lineno, f"ntkcheck.{alias.name}" if alias.name in SUBPACKAGES else target
            else:
                yield node.lineno, target


def violations(root: Path) -> list[str]:
    """'file:line: module (layer) imports target (layer)' for every upward import under ``root``."""
    found = []
    for path, module in modules(root).items():
        src = layer_of(module)
        tree = ast.parse(path.read_text("utf-8"), filename=str(path))
        for line, target in imported(tree, module, path.name == "__init__.py"):
            dst = layer_of(target)
            if ORDER.index(dst) > ORDER.index(src):
                found.append(f"{path.relative_to(root)}:{line}: {module} ({src}) imports {target} ({dst})")
    return found


def test_imports_go_one_way():
    bad = violations(ROOT)
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_every_package_file_is_classified():
    mods = modules(ROOT)
    assert len(mods) > 40
    assert layer_of("ntkcheck.store") == "core" and layer_of("ntkcheck.theory.abc") == "theory"
    assert layer_of("ntkcheck.realmodels.cli") == "cli" and layer_of("ntkcheck.realmodels.adapters") == "realmodels"


def test_an_upward_import_is_caught_with_file_and_line(tmp_path):
    """The checker itself can fail: an import of checks/ added inside a theory function is reported."""
    for folder in SOURCE_DIRS:
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "theory" / "jl.py"
    lines = target.read_text().splitlines()
    lines.append("def _late():\n    from ntkcheck.checks.fit import fit_exponent  # upward\n    return fit_exponent")
    target.write_text("\n".join(lines) + "\n")
    bad = violations(tmp_path)
    assert len(bad) == 1
    assert bad[0].startswith(f"theory/jl.py:{len(lines) + 1}:") and "ntkcheck.checks.fit (checks)" in bad[0]
