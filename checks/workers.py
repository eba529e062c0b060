"""Check runs in worker processes: what `ntkcheck run --jobs` and `ntkcheck selftest --jobs` share.

The checks' tensors are small (a quick sweep point is milliseconds of BLAS), so one check keeps
one core busy whatever torch's thread count; running N checks at once in N single-threaded
processes is what uses N cores. multiprocessing's Pool does the scheduling; what is
ntkcheck's own here is how a worker finds a CheckSpec again (it holds functions and
fault patches, which do not pickle) and how it is set up (threads, progress bars, libraries'
chatter), so that both commands do it one way.
"""
from __future__ import annotations

import importlib
import os
import sys
from contextlib import contextmanager
from typing import Iterator


def spec_ref(spec) -> tuple[str, str]:
    """(module, attribute) under which ``spec`` is importable: how a worker process finds it again."""
    module = sys.modules[spec.run.__module__]
    for name, value in vars(module).items():
        if value is spec:
            return module.__name__, name
    raise ValueError(f"check {spec.name!r}: its CheckSpec is not a module attribute of {module.__name__}, so a "
                     "worker process cannot import it (run with jobs=1)")


def resolve(ref):
    """The CheckSpec behind ``ref``: a (module, attribute) pair from ``spec_ref``, or the spec itself."""
    return getattr(importlib.import_module(ref[0]), ref[1]) if isinstance(ref, tuple) else ref


def _init(threads: int) -> None:
    """A worker: ``threads`` torch threads, no progress bars (N bars would interleave on one terminal;
    the parent reports each check as it finishes), libraries' chatter off as in the CLI, and Ctrl-C left
    to the parent (which stops the workers), so an interrupt prints no worker tracebacks. tqdm's write
    lock is a thread lock here: its default holds a multiprocessing semaphore, which a terminated worker
    would leave for the resource tracker to warn about."""
    import signal
    import threading

    import torch
    from tqdm import tqdm

    from ntkcheck.log import quiet_libraries

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())
    os.environ["NTKCHECK_PROGRESS"] = "0"
    torch.set_num_threads(threads)
    quiet_libraries()


def threads_per_worker(jobs: int) -> int:
    """The cores this process may use (its affinity mask), shared out: at least 1 thread a worker."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, jobs))


@contextmanager
def pool(jobs: int) -> Iterator:
    """A multiprocessing Pool of ``jobs`` fresh interpreters ("spawn", not fork: a child forked after torch
    has run its OpenMP pool in this process hangs in its first parallel region). Leaving with an error
    (a check that raised, Ctrl-C) terminates the workers: every sweep point is written atomically when it
    is done, so what they had finished is kept and a rerun resumes from it."""
    import multiprocessing

    workers = multiprocessing.get_context("spawn").Pool(jobs, initializer=_init, initargs=(threads_per_worker(jobs),))
    try:
        yield workers
    except BaseException:
        workers.terminate()
        workers.join()
        raise
    workers.close()
    workers.join()
