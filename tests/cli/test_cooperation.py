"""Runs on one folder cooperate: two processes split the points, a killed run's locks are taken over."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from ntkcheck.checks.sweep import grid, sweep
from ntkcheck.store import ResultStore

WORKER = textwrap.dedent("""
    import json, os, sys, time
    from ntkcheck.checks.sweep import grid, sweep
    from ntkcheck.store import ResultStore

    out, log, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = ResultStore(out, "demo")
    store.bind({"demo": 1})

    def compute(pt):
        with open(log, "a") as fh:
            fh.write(json.dumps(dict(pt, pid=os.getpid())) + "\\n")
        time.sleep(delay)
        return {"v": pt["width"] * 10 + pt["seed"]}

    rows = sweep(store, grid(width=[1, 2, 3, 4, 5, 6], seed=[0, 1]), compute)
    print(json.dumps([r["v"] for r in rows]))
""")
WANT = [w * 10 + s for w in range(1, 7) for s in (0, 1)]


def _worker(tmp_path, delay):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, NTKCHECK_PROGRESS="0")
    return subprocess.Popen([sys.executable, str(script), str(tmp_path / "out"), str(tmp_path / "log"), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_two_processes_compute_each_point_once(tmp_path):
    procs = [_worker(tmp_path, 0.2) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert all(json.loads(o[0]) == WANT for o in outs)             # both see every point's result
    log = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    keys = [(r["width"], r["seed"]) for r in log]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 12    # every point computed exactly once
    assert len({r["pid"] for r in log}) == 2                        # and the work was split


def test_a_killed_run_resumes_and_its_stale_lock_is_taken_over(tmp_path, capsys):
    proc = _worker(tmp_path, 1.0)
    deadline = time.time() + 60
    while time.time() < deadline:                                   # wait until it is inside its 2nd point
        if (tmp_path / "log").exists() and len((tmp_path / "log").read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = ResultStore(tmp_path / "out", "demo")
    store.bind({"demo": 1})
    locks = list(store.points_dir.glob("*.lock"))
    assert len(locks) == 1                                          # the killed run left its lock behind
    calls = []
    rows = sweep(store, grid(width=[1, 2, 3, 4, 5, 6], seed=[0, 1]),
                 lambda pt: calls.append(pt) or {"v": pt["width"] * 10 + pt["seed"]})
    assert [r["v"] for r in rows] == WANT
    assert len(calls) == 11                                         # the one finished point was kept
    assert "taking over the stale lock" in capsys.readouterr().err
    assert not list(store.points_dir.glob("*.lock"))


def test_a_point_stored_under_a_former_binding_is_adopted_with_its_artifacts(tmp_path, capsys):
    """bind(formerly=...): a point absent under the binding but stored under a former one is read from there,
    its rows file and the files named after it in the former folder's subfolders hard-linked in (no copy);
    a point of another former binding that is not listed, or of another point, is not."""
    old, other, new = ResultStore(tmp_path, "r"), ResultStore(tmp_path, "r"), ResultStore(tmp_path, "r")
    old.bind({"a": 1, "dtype": "float64"})
    other.bind({"a": 2})
    pt, pt2 = {"seed": 13}, {"seed": 21}
    for s, p, v in ((old, pt, 1.5), (other, pt2, 2.5)):
        s.save_point(p, [{"v": v}])
        art = s.points_dir / "params" / "seed=13.pt"
        art.parent.mkdir(parents=True, exist_ok=True)
        art.write_bytes(b"theta")
    (old.points_dir / "params" / "seed=13.5.pt").write_bytes(b"another point's")
    new.bind({"a": 1}, formerly=[{"a": 1, "dtype": "float32"}, {"a": 1, "dtype": "float64"}, {"a": 1}])
    assert len(new.former) == 2                     # the binding itself is not a former one
    assert new.load_point(pt2) is None              # stored under a binding not listed
    assert new.load_point(pt) == [{"v": 1.5}]
    assert "stored under their earlier binding" in capsys.readouterr().err
    art, old_art = new.points_dir / "params" / "seed=13.pt", old.points_dir / "params" / "seed=13.pt"
    assert art.read_bytes() == b"theta" and os.stat(art).st_ino == os.stat(old_art).st_ino
    assert os.stat(new._point_path(pt)).st_ino == os.stat(old._point_path(pt)).st_ino
    assert sorted(q.name for q in (new.points_dir / "params").iterdir()) == ["seed=13.pt"]
    new.save_point(pt, [{"v": 9.0}])                # an atomic rewrite replaces the link, not the former file
    assert old.load_point(pt) == [{"v": 1.5}] and new.load_point(pt) == [{"v": 9.0}]
    assert not new.adopt(pt2)
