"""Text-classification data: loaders and LM-BFF k-shot splits.

Formats:
- ``LABEL SENTENCE`` lines (shared/data): an integer label, one space, the
  sentence. Each line is decoded as UTF-8, else as Windows-1252, else as
  Latin-1 (which never fails), so stray bytes never stop a load; a line whose
  label is not an integer or whose sentence is empty is an error naming the
  file and line number (or, with ``on_error="skip"``, a warning).
- CSV / TSV / JSONL with a text column, an optional second text column and a
  label column (integers, or strings mapped through the task's aliases / label
  names).

k-shot splits follow LM-BFF (Gao et al. 2021, generate_k_shot_data.py): with
``numpy.random.RandomState(seed)`` permute the training set, then take the
first k examples of each label for train and the next k of each label for
dev. Seeds 13, 21, 42, 87, 100. The test set is the task's test file (or a
fixed held-out part of a single-file dataset), capped to ``test_max``
examples by a fixed permutation (seed 0), identical for every split seed.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ntkcheck.errors import UserError
from ntkcheck.log import note
from ntkcheck.store import fingerprint
from ntkcheck.realmodels.tasks import Task

SEEDS = (13, 21, 42, 87, 100)


@dataclass(frozen=True)
class Example:
    """One input: first text, optional second text, integer label (or float target for regression)."""

    text: str
    label: int | float
    text_b: str | None = None


def decode_line(raw: bytes) -> str:
    """Bytes -> str: UTF-8, else Windows-1252, else Latin-1 (total)."""
    for enc in ("utf-8", "cp1252"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            pass
    return raw.decode("latin-1")


def load_label_sentence(path: str | Path, *, num_labels: int | None = None,
                        on_error: str = "raise") -> list[Example]:
    """Examples of a ``LABEL SENTENCE`` file; bad lines raise UserError 'file:line: why' (or warn if skip)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read data file {str(path)!r}: {e.strerror or e}") from None
    out: list[Example] = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        text = decode_line(line).strip()
        if not text:
            continue
        head, _, sentence = text.partition(" ")
        why = None
        try:
            label = int(head)
        except ValueError:
            why = f"label {head[:20]!r} is not an integer"
        else:
            if not sentence.strip():
                why = "no sentence after the label"
            elif num_labels is not None and not 0 <= label < num_labels:
                why = f"label {label} outside 0..{num_labels - 1}"
        if why:
            msg = f"{path}:{lineno}: cannot parse line ({why})"
            if on_error == "skip":
                note(msg + "; skipped")
                continue
            raise UserError(msg)
        out.append(Example(sentence.strip(), label))
    if not out:
        raise UserError(f"data file {str(path)!r} has no examples")
    return out


def _label_value(raw, task: Task | None, where: str, regression: bool):
    if regression:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise UserError(f"{where}: target {raw!r} is not a number") from None
    if isinstance(raw, bool):
        raw = int(raw)
    if isinstance(raw, (int, np.integer)):
        v = int(raw)
    else:
        s = str(raw).strip()
        if task is not None and s in task.label_aliases:
            v = task.label_aliases[s]
        elif task is not None and s in task.label_names:
            v = task.label_names.index(s)
        else:
            try:
                v = int(float(s))
            except ValueError:
                raise UserError(f"{where}: label {s!r} is neither an integer nor a label name "
                                f"of the task") from None
    if task is not None and not 0 <= v < task.num_labels:
        raise UserError(f"{where}: label {v} outside 0..{task.num_labels - 1}")
    return v


def load_table(path: str | Path, *, text_col: str = "text", text2_col: str | None = None,
               label_col: str = "label", task: Task | None = None, regression: bool = False,
               on_error: str = "raise") -> list[Example]:
    """Examples from a .csv, .tsv or .jsonl file (format from the suffix), columns named as given.

    Bytes are decoded per line like ``load_label_sentence``; a row missing a
    column, a malformed JSON line or a label that is not a known label raises
    UserError naming file and line (or is skipped with a warning, ``on_error="skip"``).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read data file {str(path)!r}: {e.strerror or e}") from None
    text = "\n".join(decode_line(b) for b in raw.split(b"\n"))
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict]] = []
    problems: list[str] = []
    if suffix in (".jsonl", ".json"):
        for lineno, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not an object")
                rows.append((lineno, obj))
            except ValueError as e:
                problems.append(f"{path}:{lineno}: cannot parse JSON line ({e})")
    elif suffix in (".csv", ".tsv"):
        reader = csv.reader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        try:
            header = next(reader)
        except StopIteration:
            raise UserError(f"data file {str(path)!r} is empty") from None
        for rec in reader:
            lineno = reader.line_num
            if not any(c.strip() for c in rec):
                continue
            if len(rec) != len(header):
                problems.append(f"{path}:{lineno}: expected {len(header)} fields, found {len(rec)}")
                continue
            rows.append((lineno, dict(zip(header, rec))))
    else:
        raise UserError(f"data file {str(path)!r}: unknown format {suffix!r} (expected .csv, .tsv or .jsonl)")
    out: list[Example] = []
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        try:
            missing = [c for c in (text_col, label_col) + ((text2_col,) if text2_col else ()) if c not in row]
            if missing:
                raise UserError(f"{where}: no column {missing[0]!r} (columns: {', '.join(map(str, row))})")
            label = _label_value(row[label_col], task, where, regression)
            t2 = str(row[text2_col]) if text2_col else None
            out.append(Example(str(row[text_col]), label, t2))
        except UserError as e:
            problems.append(str(e))
    for msg in problems:
        if on_error != "skip":
            raise UserError(msg)
        note(msg + "; skipped")
    if not out:
        raise UserError(f"data file {str(path)!r} has no examples")
    return out


def _find_table(folder: Path, split: str) -> Path | None:
    for ext in (".jsonl", ".tsv", ".csv"):
        p = folder / f"{split}{ext}"
        if p.exists():
            return p
    return None


def load_task(task: Task, data_dir: str | Path, *, holdout: int = 2000, on_error: str = "raise",
              text_col: str = "text", text2_col: str | None = None, label_col: str = "label"
              ) -> tuple[list[Example], list[Example]]:
    """(train, test) of ``task`` from ``data_dir``.

    Looks for ``DATA/<task>/{train,test}.{jsonl,tsv,csv}`` first, then the
    task's ``LABEL SENTENCE`` files. A single-file task (Subj) holds out
    ``holdout`` examples by a fixed permutation (seed 0) as its test set.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"--data {str(data_dir)!r} is not a folder")
    folder = data_dir / task.name
    tr, te = _find_table(folder, "train"), _find_table(folder, "test")
    if tr is not None and te is not None:
        t2 = text2_col or ("text_b" if task.pair else None)
        kw = dict(text_col=text_col, text2_col=t2, label_col=label_col, task=task, on_error=on_error)
        return load_table(tr, **kw), load_table(te, **kw)
    if task.pair or task.train_file is None:
        raise UserError(f"no data for task {task.name!r} in {str(data_dir)!r}: expected "
                        f"{folder}/train.jsonl|tsv|csv and test.jsonl|tsv|csv")
    if not (data_dir / task.train_file).exists():
        raise UserError(f"no data for task {task.name!r}: {str(data_dir / task.train_file)!r} not found")
    train = load_label_sentence(data_dir / task.train_file, num_labels=task.num_labels, on_error=on_error)
    if task.test_file is not None:
        test = load_label_sentence(data_dir / task.test_file, num_labels=task.num_labels, on_error=on_error)
        return train, test
    if holdout >= len(train):
        raise UserError(f"--holdout {holdout} leaves no training data ({len(train)} examples)")
    perm = np.random.RandomState(0).permutation(len(train))
    test = [train[i] for i in perm[:holdout]]
    train = [train[i] for i in sorted(perm[holdout:])]
    return train, test


@dataclass(frozen=True)
class Split:
    """One k-shot split: k per label for train and another k per label for dev, plus the shared test set."""

    seed: int
    train: list[Example]
    dev: list[Example]
    test: list[Example]


def k_shot_split(train: Sequence[Example], test: Sequence[Example], k: int, seed: int, *,
                 test_max: int | None = 1000, num_labels: int | None = None) -> Split:
    """LM-BFF k-shot split: RandomState(seed) permutation, first k per label -> train, next k -> dev.

    For regression (float targets) k means k examples in total for each of train and dev.
    A label with fewer than 2k examples is a UserError naming it.
    """
    if k <= 0:
        raise UserError(f"--k {k}: must be a positive integer")
    perm = np.random.RandomState(seed).permutation(len(train))
    shuffled = [train[i] for i in perm]
    regression = any(isinstance(e.label, float) for e in train)
    if regression:
        if len(shuffled) < 2 * k:
            raise UserError(f"--k {k}: needs {2 * k} training examples, only {len(shuffled)}")
        tr, dv = shuffled[:k], shuffled[k:2 * k]
    else:
        by_label: dict[int, list[Example]] = {}
        for e in shuffled:
            by_label.setdefault(int(e.label), []).append(e)
        labels = range(num_labels) if num_labels is not None else sorted(by_label)
        tr, dv = [], []
        for lab in labels:
            got = by_label.get(lab, [])
            if len(got) < 2 * k:
                raise UserError(f"--k {k}: label {lab} has only {len(got)} training examples, "
                                f"needs {2 * k} (k for train and k for dev)")
            tr += got[:k]
            dv += got[k:2 * k]
    return Split(seed, tr, dv, cap_test(test, test_max))


def examples_digest(examples: Sequence[Example]) -> str:
    """The store's fingerprint (sha256 of canonical JSON, 12 hex digits) of the examples' (text, text_b, label)
    in order: what a cached kernel block, f0 or result point was computed on, so a cache made from other data
    or another order is not reused."""
    return fingerprint([[e.text, e.text_b, e.label] for e in examples])


def example_ids(examples: Sequence[Example]) -> list[str]:
    """Each example's own fingerprint of (text, text_b, label): the name a cached kernel block gives its rows
    and columns, so a block of other rows or columns can find the entries it shares with it."""
    return [fingerprint([e.text, e.text_b, e.label]) for e in examples]


def cap_test(test: Sequence[Example], test_max: int | None) -> list[Example]:
    """The test set in a fixed permutation (seed 0), cut to its first ``test_max`` examples (None: all).

    A smaller cap's test set is a prefix of a larger one's (cap_test(t, m) == cap_test(t, M)[:m] for m <= M,
    and cap_test(t, None) extends both), so the kernel cache shares the rows of runs that differ only in
    the cap (experiment.Session.kernel)."""
    test = list(test)
    order = np.random.RandomState(0).permutation(len(test))
    return [test[i] for i in order[:test_max]]
