"""Kernels through the session cache equal a naive gradient loop; solvers reach 100% end to end; CLI."""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from ntkcheck.realmodels.experiment import LMConfig, iter_sessions

pytestmark = pytest.mark.hf


def _naive(ad, x1, x2, kind, with_slack=False):
    """K[i, a, j, b] = <phi1(grad f_a(x1_i)), phi2(grad f_b(x2_j))> by one autograd call per (example, output).

    with_slack: also return the bound 2 (s1_ia + s2_jb) on how far a sign kernel may move when the signs of
    the s coordinates with |g| < 1e-9 max|g| (round-off level: sums that cancel to ~0) flip.
    """
    def grads(x):
        out = []
        for i in range(len(x)):
            row = []
            for a in range(ad.num_outputs):
                p = {k: v.clone().double().requires_grad_(k in ad.select) for k, v in ad.params.items()}
                sel = [p[k] for k in ad.select]
                g = torch.autograd.grad(ad.f(p, x[i:i + 1])[0, a], sel, allow_unused=True)
                row.append(torch.cat([(gi if gi is not None else torch.zeros_like(pi)).reshape(-1)
                                      for gi, pi in zip(g, sel)]))
            out.append(torch.stack(row))
        return torch.stack(out)  # [N, C, P]

    g1, g2 = grads(x1), grads(x2)
    phi1 = torch.sign if kind == "signgd" else (lambda t: t)
    phi2 = torch.sign if kind in ("signgd", "asym_signgd") else (lambda t: t)
    K = torch.einsum("iap,jbp->iajb", phi1(g1), phi2(g2))
    if not with_slack:
        return K
    tiny = lambda g: (g.abs() < 1e-9 * g.abs().amax(-1, keepdim=True)).sum(-1).double()  # [N, C]
    s1 = tiny(g1) if kind == "signgd" else torch.zeros(g1.shape[:2], dtype=torch.float64)
    s2 = tiny(g2) if kind in ("signgd", "asym_signgd") else torch.zeros(g2.shape[:2], dtype=torch.float64)
    scale = g1.abs().amax() if kind == "asym_signgd" else 1.0
    return K, 2 * scale * (s1[:, :, None, None] + s2[None, None, :, :])


@pytest.mark.parametrize("arch", ["roberta", "gpt-neo"])
def test_session_kernels_equal_naive_loop(tiny_models, separable_dir, tmp_path, arch):
    cfg = LMConfig(model=str(tiny_models[arch]), task="sst2", data=str(separable_dir), k=1, seeds=(13, 21),
                   model_dtype="float64", test_max=2, out=str(tmp_path), params=r"(layer\.1\.|h\.1\.|ln_f|head\.)", block=3,
                   kinds=("sgd", "signgd", "asym_signgd") if arch == "roberta" else ("sgd", "asym_signgd"))
    sess = next(iter_sessions(cfg, "lm_kernel"))
    assert sess.n_cols <= 4 and len(sess.rows) <= 4 + 4 + 2
    U = sess.x_rows[:sess.n_cols]
    for kind in cfg.kinds:
        K = sess.kernel(kind)
        ref, slack = _naive(sess.adapter, sess.x_rows, U, kind, with_slack=True)
        assert K.shape == ref.shape and K.dtype == torch.float64
        # exact up to round-off, plus for sign kinds the flips of round-off-level coordinates
        assert bool(((K - ref).abs() <= 1e-9 * ref.abs().max() + slack).all()), kind
    # per-seed blocks are sub-blocks of the cached kernel
    Kt = sess.block(sess.kernel("sgd"), 21, "train")
    ids = sess.index[21]["train"]
    torch.testing.assert_close(Kt, _naive(sess.adapter, sess.x_rows[ids], sess.x_rows[ids], "sgd"))
    f0 = sess.f0()
    torch.testing.assert_close(f0, sess.adapter.outputs(sess.x_rows).double())


def test_f0_shows_its_progress(tiny_models, separable_dir, tmp_path, capsys, monkeypatch):
    """f0 over a session's rows (minutes for 2000 test sentences on a 135M model) counts its rows on a bar
    named after the task, and the bar changes no output."""
    monkeypatch.setenv("NTKCHECK_PROGRESS", "1")
    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(separable_dir), k=1, seeds=(13,),
                   test_max=4, out=str(tmp_path))
    sess = next(iter_sessions(cfg, "lm_solve"))
    capsys.readouterr()
    f0 = sess.f0()
    err = capsys.readouterr().err
    assert f"f0 sst2 ({len(sess.rows)} rows):" in err and f"0/{len(sess.rows)} " in err
    torch.testing.assert_close(f0, sess.adapter.outputs(sess.x_rows).double())


def test_cache_resumes_and_recovers(tiny_models, separable_dir, tmp_path, capsys):
    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(separable_dir), k=1, seeds=(13,),
                   test_max=2, out=str(tmp_path), params=r"h\.1\.mlp", block=2)
    sess = next(iter_sessions(cfg, "lm_kernel"))
    K = sess.kernel("sgd")
    files = sorted(sess.kernel_dir().glob("sgd_*.pt"))
    assert len(files) == math.ceil(len(sess.rows) / 2)
    files[0].unlink()
    files[-1].write_bytes(b"truncated")
    capsys.readouterr()
    K2 = sess.kernel("sgd")
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("ntkcheck: recomputing")] == [
        line for line in err if str(files[-1]) in line] and len(err) == 1   # one line, naming the file
    torch.testing.assert_close(K2, K)


def _write_distinct_sst2(root, test_edit=None, train_edit=None):
    """SST-2 files of distinct sentences (rows are deduplicated by text) under root/sst2; ``test_edit`` /
    ``train_edit`` = (i, text) replaces the text of test / train example i."""
    import itertools

    words = ("great", "good", "bad", "terrible")
    sents = [" ".join(w) for n in (2, 3) for w in itertools.product(words, repeat=n)]
    rows = [{"text": t, "label": int(t.split()[0] in ("great", "good"))} for t in sents]
    train, test = rows[::2], rows[1::2]
    if test_edit is not None:
        test[test_edit[0]] = {**test[test_edit[0]], "text": test_edit[1]}
    if train_edit is not None:
        train[train_edit[0]] = {**train[train_edit[0]], "text": train_edit[1]}
    (root / "sst2").mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("test", test)):
        (root / "sst2" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))


class _CountingKernel:
    """A session's kernel function that records the (rows, columns) of every call."""

    def __init__(self, fn):
        self.fn, self.calls, self.side_memo = fn, [], {}

    def __call__(self, x1, x2=None, **kw):
        self.calls.append((len(x1), len(x1) if x2 is None else len(x2)))
        return self.fn(x1, x2, **kw)

    @property
    def entries(self):
        return sum(a * b for a, b in self.calls)


def _count(sess, kind="sgd"):
    fn = _CountingKernel(sess.kernel_fn(kind))
    sess.kernel_fns[kind] = fn
    return fn


def _block_names(sess, kind="sgd"):
    """{file name: inode} of the session's cached blocks of ``kind``."""
    return {p.name: p.stat().st_ino for p in sess.kernel_dir().glob(f"{kind}_*.pt")}


def _fresh_kernel(cfg, out, kind="sgd"):
    from dataclasses import replace

    return next(iter_sessions(replace(cfg, out=str(out)), "lm_kernel")).kernel(kind)


def test_raising_the_test_cap_computes_only_the_new_rows(tiny_models, tmp_path, capsys):
    """Rows [0, R) do not depend on --test-max (data.cap_test's prefix order), so a larger cap keeps the old
    run's full blocks, copies the old partial last block's rows into the new block there, computes only the new
    test rows, and equals a kernel computed from scratch."""
    from dataclasses import replace

    _write_distinct_sst2(tmp_path / "data")
    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(tmp_path / "data"), k=1, seeds=(13,),
                   test_max=3, out=str(tmp_path / "a"), params=r"h\.1\.mlp", block=2, model_dtype="float64")
    small = next(iter_sessions(cfg, "lm_kernel"))
    K_small = small.kernel("sgd")
    assert len(small.rows) == 7 and small.n_cols == 2
    before = _block_names(small)
    assert sorted(n.rsplit("_", 1)[0] for n in before) == ["sgd_0-2", "sgd_2-4", "sgd_4-6", "sgd_6-7"]
    big = next(iter_sessions(replace(cfg, test_max=6), "lm_kernel"))
    assert big.kernel_dir() == small.kernel_dir() and big.rows[:7] == small.rows
    counting = _count(big)
    capsys.readouterr()
    K_big = big.kernel("sgd")
    after = _block_names(big)
    assert sorted(n.rsplit("_", 1)[0] for n in set(after) - set(before)) == ["sgd_6-8", "sgd_8-10"]
    assert all(after[n] == before[n] for n in before)   # nothing rewritten
    assert counting.entries == 3 * 2                      # the three new test rows against the two columns
    assert "2 of 4 entries copied from other cached blocks" in capsys.readouterr().err   # row 6, from sgd_6-7
    assert torch.equal(K_big[:7], K_small)
    fresh = _fresh_kernel(replace(cfg, test_max=6), tmp_path / "b")
    torch.testing.assert_close(K_big, fresh, rtol=1e-12, atol=1e-12 * float(fresh.abs().max()))
    torch.testing.assert_close(big.f0()[:7], small.f0(), rtol=1e-12, atol=1e-12)


def _held(K):
    """[R, U] bool: the entries of K [R, C, U, C] that were computed (not NaN)."""
    return torch.isfinite(K).all(dim=3).all(dim=1).numpy()


def test_adding_seeds_computes_only_their_entries_and_points(tiny_models, tmp_path):
    """A run with seeds (13, 21) after one with seed 13 alone (same folder): kernel entries between examples the
    first run held are copied, not computed (the kernel folder does not depend on the seeds), of the rest only
    those a seed reads (Session.needed) are computed, seed 13's solve point is read back, and the kernel equals
    one computed from scratch wherever a seed reads it."""
    from dataclasses import replace

    from ntkcheck.realmodels.data import example_ids
    from ntkcheck.realmodels.solve import solve_session

    _write_distinct_sst2(tmp_path / "data")
    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(tmp_path / "data"), k=2, seeds=(13,),
                   test_max=4, out=str(tmp_path / "a"), params=r"h\.1\.mlp", block=3, model_dtype="float64")
    one = next(iter_sessions(cfg, "lm_kernel"))
    one.kernel("sgd")
    first = {r["method"]: r for r in solve_session(one, ["sgd"])}
    (point,) = (one.store.points_dir).glob("*.json")
    two = next(iter_sessions(replace(cfg, seeds=(13, 21)), "lm_kernel"))
    assert two.kernel_dir() == one.kernel_dir() and two.seed_data(13) == one.seed_data(13) != two.seed_data(21)
    counting = _count(two)
    K = two.kernel("sgd")
    old_rows, old_cols = set(example_ids(one.rows)), set(example_ids(one.rows[:one.n_cols]))
    ids = example_ids(two.rows)
    known = np.outer([r in old_rows for r in ids], [c in old_cols for c in ids[:two.n_cols]])
    need = two.needed()
    assert _held(one.kernel("sgd")).all() and one.needed().all()       # one seed reads every entry
    assert 0 < known.sum() and 0 < (~need).sum() and (need & ~known).any()
    assert counting.entries == (need & ~known).sum()
    assert (_held(K) == (need | known)).all()                        # copied or computed, else NaN
    fresh = _fresh_kernel(replace(cfg, seeds=(13, 21)), tmp_path / "b")
    assert (_held(fresh) == need).all()
    at = torch.from_numpy(need)
    a, b = K.permute(0, 2, 1, 3)[at], fresh.permute(0, 2, 1, 3)[at]   # [entries, C, C]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()))
    stamp = point.stat().st_mtime_ns
    rows = solve_session(two, ["sgd"])
    assert two.store.points_dir == one.store.points_dir and point.stat().st_mtime_ns == stamp   # read, not rewritten
    assert len(list(two.store.points_dir.glob("*.json"))) == 2
    again = {r["method"]: r for r in rows if r["seed"] == 13}
    assert again["sgd"]["test_pred"] == first["sgd"]["test_pred"] and again["sgd"]["test"] == first["sgd"]["test"]


def test_f0_is_cached_per_example_so_other_seed_sets_compute_only_new_rows(tiny_models, tmp_path, capsys):
    """f0[r] = f(theta_PT, x_r) depends on x_r alone: seeds (13, 21) after seed 13 pass only the rows seed 13's
    run lacked through the model, seed 21 alone after both passes none (its f0 file is new, its rows read from
    the others), every f0 equals one computed from scratch (float64, 1e-12), and a file written before f0
    files stored their ids is not a source."""
    from dataclasses import replace

    from ntkcheck.realmodels.data import example_ids
    from ntkcheck.store import load_checked_tensor, save_checked_tensor

    _write_distinct_sst2(tmp_path / "data")
    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(tmp_path / "data"), k=2, seeds=(13,),
                   test_max=4, out=str(tmp_path / "a"), model_dtype="float64")

    def counted(sess):
        seen = []
        outputs = sess.adapter.outputs
        sess.adapter.outputs = lambda x, *a, **kw: seen.append(x.shape[0]) or outputs(x, *a, **kw)
        return sess, seen

    def fresh(seeds):
        return next(iter_sessions(replace(cfg, seeds=seeds, out=str(tmp_path / "b")), "lm_solve")).f0()

    one, seen = counted(next(iter_sessions(cfg, "lm_solve")))
    f0_one = one.f0()
    assert seen == [len(one.rows)]
    two, seen = counted(next(iter_sessions(replace(cfg, seeds=(13, 21)), "lm_solve")))
    capsys.readouterr()
    f0_two = two.f0()
    new = set(example_ids(two.rows)) - set(example_ids(one.rows))
    assert 0 < len(new) < len(two.rows) and seen == [len(new)]
    assert f"f0: {len(two.rows) - len(new)} of {len(two.rows)} rows read from other cached files" in capsys.readouterr().err
    torch.testing.assert_close(f0_two, fresh((13, 21)), rtol=1e-12, atol=1e-12)
    alone, seen = counted(next(iter_sessions(replace(cfg, seeds=(21,)), "lm_solve")))
    torch.testing.assert_close(alone.f0(), fresh((21,)), rtol=1e-12, atol=1e-12)
    assert seen == [] and len(list(alone.kernel_dir().glob("f0_*.pt"))) == 3
    torch.testing.assert_close(one.f0(), f0_one, rtol=0, atol=0)   # its own file, read back
    # files without ids (earlier code) are skipped: strip them and a new seed set computes every row
    for path in alone.kernel_dir().glob("f0_*.pt"):
        blob = load_checked_tensor(path, "t")
        save_checked_tensor(path, "t", blob["t"], rows=blob["rows"])
    other, seen = counted(next(iter_sessions(replace(cfg, seeds=(42,)), "lm_solve")))
    torch.testing.assert_close(other.f0(), fresh((42,)), rtol=1e-12, atol=1e-12)
    assert seen == [len(other.rows)]


def test_caches_are_found_whatever_the_spelling_of_the_paths(tiny_models, tmp_path, monkeypatch):
    """The cache keys hold the examples' contents and the model's identity, not --data and --model as typed: the
    same run typed from another working directory with a relative --data and a trailing slash on --model computes
    no kernel entry and reads its solve point back. A kernel folder and solve points that earlier code keyed by
    the typed strings are found too: the folder through a relative symbolic link under the new key (a process of
    that code may still be writing there), the points adopted by hard link."""
    import os
    from dataclasses import replace

    from ntkcheck.realmodels.solve import solve_session
    from ntkcheck.store import fingerprint

    _write_distinct_sst2(tmp_path / "data")
    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(tmp_path / "data"), k=1, seeds=(13,),
                   test_max=2, out=str(tmp_path / "runs"), params=r"h\.1\.mlp", block=2, model_dtype="float64")
    first = next(iter_sessions(cfg, "lm_solve"))
    K = first.kernel("sgd")
    rows = solve_session(first, ["sgd"])
    (point,) = first.store.points_dir.glob("*.json")
    monkeypatch.chdir(tmp_path)
    typed = replace(cfg, data="data", model=str(tiny_models["gpt-neo"]) + "/", out="runs")
    again = next(iter_sessions(typed, "lm_solve"))
    assert again.config.typed_paths() != first.config.typed_paths()
    assert again.kernel_dir().resolve() == first.kernel_dir().resolve()
    counting = _count(again)
    assert torch.equal(again.kernel("sgd"), K) and counting.entries == 0
    stamp = point.stat().st_mtime_ns
    assert solve_session(again, ["sgd"]) == rows and point.stat().st_mtime_ns == stamp
    # earlier code's keys: the folder and the points moved to the fingerprints of the typed strings
    kdir = first.kernel_dir()
    former = kdir.parent / fingerprint(first.formerly(first.cache_fields()))
    kdir.rename(former)
    assert first.store.former, "solve binds its earlier key"
    first.store.points_dir.rename(first.store.dir / "points" / first.store.former[0])
    old = next(iter_sessions(cfg, "lm_solve"))
    counting = _count(old)
    assert torch.equal(old.kernel("sgd"), K) and counting.entries == 0
    assert old.kernel_dir().is_symlink() and os.readlink(old.kernel_dir()) == former.name
    assert solve_session(old, ["sgd"]) == rows
    (adopted,) = old.store.points_dir.glob("*.json")
    assert adopted.stat().st_ino == next((old.store.dir / "points" / first.store.former[0]).glob("*.json")).stat().st_ino
    # the former folder deleted: the dangling link is replaced by a fresh folder, computed again
    import shutil
    shutil.rmtree(former)
    fresh = next(iter_sessions(cfg, "lm_solve"))
    counting = _count(fresh)
    torch.testing.assert_close(fresh.kernel("sgd"), K, rtol=1e-12, atol=1e-12 * float(K.abs().max()))
    assert counting.entries > 0 and fresh.kernel_dir().is_dir() and not fresh.kernel_dir().is_symlink()


def test_a_kernel_computes_only_the_entries_its_seeds_read(tiny_models, tmp_path):
    """Two seeds from scratch: one kernel call per seed's train and dev rows (its own columns) and one for the
    test rows, exactly the needed entries computed, NaN elsewhere, and solve's predictions those of a kernel
    with every entry. A later run that reads more of a cached block (here: every entry) computes only
    what the block lacks, copying the rest from the block itself."""
    from dataclasses import replace

    from ntkcheck.realmodels.solve import solve_session

    _write_distinct_sst2(tmp_path / "data")
    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(tmp_path / "data"), k=2, seeds=(13, 21),
                   test_max=4, out=str(tmp_path / "a"), params=r"h\.1\.mlp", block=64, model_dtype="float64")
    part = next(iter_sessions(cfg, "lm_kernel"))
    need = part.needed()
    R, U = need.shape
    assert R == len(part.rows) and U == part.n_cols and 0 < need.sum() < R * U
    for seed, ix in part.index.items():   # each seed's rows read its own training columns
        for r in ix["train"] + ix["dev"] + ix["test"]:
            assert need[r, ix["train"]].all()
    counting = _count(part)
    K = part.kernel("sgd")
    assert counting.entries == need.sum() and (_held(K) == need).all()
    assert len(counting.calls) <= len(part.index) + 2      # per seed, the test rows, rows shared by two seeds

    def every_entry(sess):
        sess.needed = lambda: np.ones((len(sess.rows), sess.n_cols), dtype=bool)
        return sess

    full = every_entry(next(iter_sessions(cfg, "lm_kernel")))
    counting = _count(full)
    K_full = full.kernel("sgd")
    assert counting.entries == (~need).sum() and _held(K_full).all()
    at = torch.from_numpy(need)
    assert torch.equal(K_full.permute(0, 2, 1, 3)[at], K.permute(0, 2, 1, 3)[at])   # copied, not recomputed
    fresh = every_entry(next(iter_sessions(replace(cfg, out=str(tmp_path / "b")), "lm_kernel"))).kernel("sgd")
    torch.testing.assert_close(K_full, fresh, rtol=1e-12, atol=1e-12 * float(fresh.abs().max()))
    from_part = {(r["seed"], r["method"]): r["test_pred"] for r in solve_session(part, ["sgd"])}
    from_full = {(r["seed"], r["method"]): r["test_pred"]
                 for r in solve_session(every_entry(next(iter_sessions(replace(cfg, out=str(tmp_path / "b")),
                                                                         "lm_kernel"))), ["sgd"])}
    assert from_part.keys() == from_full.keys() == {(s, m) for s in (13, 21) for m in ("zero_shot", "sgd")}
    assert all(from_part[k] == from_full[k] for k in from_part)
    # a sketched kernel computes every entry: its features of U are held across blocks for one set of columns
    assert next(iter_sessions(replace(cfg, sketch_dim=256), "lm_kernel")).needed().all()


def test_caches_of_other_examples_are_recomputed_not_reused(tiny_models, tmp_path):
    """An edited test sentence (same config, same kernel folder): only the row of that sentence is computed
    again (its block gets a new file; the others are kept), f0 and the solve point are computed again for the
    new data (the old ones are kept beside them), and the kernel equals one computed from scratch on it."""
    from dataclasses import replace

    from ntkcheck.realmodels.data import cap_test, load_task
    from ntkcheck.realmodels.solve import solve_session

    data = tmp_path / "data"
    _write_distinct_sst2(data)
    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(data), k=1, seeds=(13,), test_max=3,
                   out=str(tmp_path / "a"), params=r"h\.1\.mlp", block=2, model_dtype="float64")
    old = next(iter_sessions(cfg, "lm_kernel"))
    old.kernel("sgd"), old.f0(), solve_session(old, ["sgd"])
    before = _block_names(old)
    # the test example that cap_test puts last (row 6, in block sgd_6-7) gets another sentence
    last = load_task(old.task, str(data))[1].index(cap_test(load_task(old.task, str(data))[1], 3)[-1])
    _write_distinct_sst2(data, test_edit=(last, "good good good good"))
    new = next(iter_sessions(cfg, "lm_kernel"))
    assert new.kernel_dir() == old.kernel_dir() and new.rows[:6] == old.rows[:6] and new.rows[6] != old.rows[6]
    counting = _count(new)
    K, f0 = new.kernel("sgd"), new.f0()
    after = _block_names(new)
    assert all(after[n] == before[n] for n in before)
    assert [n.rsplit("_", 1)[0] for n in set(after) - set(before)] == ["sgd_6-7"] and counting.calls == [(1, 2)]
    assert len(list(new.kernel_dir().glob("f0_*.pt"))) == 2
    solve_session(new, ["sgd"])
    assert len(list(new.store.points_dir.glob("*.json"))) == 2   # the old point is kept, not reused
    fresh = next(iter_sessions(replace(cfg, out=str(tmp_path / "b")), "lm_kernel"))
    torch.testing.assert_close(K, fresh.kernel("sgd"), rtol=1e-12, atol=1e-12 * float(K.abs().max()))
    torch.testing.assert_close(f0, fresh.f0(), rtol=1e-12, atol=1e-12)


def test_head_mode_kernel_folder_follows_the_probe(tiny_models, tmp_path):
    """In head mode every kernel entry depends on the whole training set (the head starts at its linear probe),
    so the folder's key holds that set's digest: an edited training example gets another folder, whose blocks
    copy nothing of the old probe's, while prompt mode keeps one folder (its entries depend on their pair)."""
    from dataclasses import replace

    from ntkcheck.realmodels.data import load_task

    data = tmp_path / "data"
    _write_distinct_sst2(data)
    cfg = LMConfig(model=str(tiny_models["roberta"]), task="sst2", data=str(data), k=1, seeds=(13,), test_max=2,
                   mode="head", out=str(tmp_path / "a"), block=2, model_dtype="float64")
    old = next(iter_sessions(cfg, "lm_kernel"))
    assert old.adapter.mode == "head" and old.cache_fields()["seeds"] == (13,)
    K_old = old.kernel("sgd")
    train = load_task(old.task, str(data))[0]
    gone = old.splits[0].train[0]
    _write_distinct_sst2(data, train_edit=(train.index(gone), "bad bad bad bad"))
    new = next(iter_sessions(cfg, "lm_kernel"))
    assert new.kernel_dir() != old.kernel_dir() and gone not in new.splits[0].train
    counting = _count(new)
    K_new = new.kernel("sgd")
    assert counting.entries == len(new.rows) * new.n_cols           # all computed under the new probe
    torch.testing.assert_close(K_new, _fresh_kernel(cfg, tmp_path / "b"), rtol=1e-12,
                               atol=1e-12 * float(K_new.abs().max()))
    assert new.rows[1] == old.rows[1] and new.rows[-2:] == old.rows[-2:]
    diff = (K_new[-2:, :, 1] - K_old[-2:, :, 1]).abs().max()          # the same pairs of examples, another head
    assert diff > 1e-6 * K_old[-2:, :, 1].abs().max()
    prompt = next(iter_sessions(replace(cfg, mode="mlm"), "lm_kernel"))
    assert "seeds" not in prompt.cache_fields() and "probe" not in prompt.cache_fields()


def test_solvers_reach_100_percent(tiny_models, separable_dir, tmp_path):
    """Prompt kernels of a random tiny MLM solve a separable task on test (every kind, every seed)."""
    from ntkcheck.realmodels.measure import solve_cmd

    cfg = LMConfig(model=str(tiny_models["roberta"]), task="sst2", data=str(separable_dir), k=4, seeds=(13, 21),
                   test_max=None, out=str(tmp_path), kinds=("sgd", "signgd", "asym_signgd"))
    res = solve_cmd(cfg)
    for kind in cfg.kinds:
        assert res["summary"][kind]["per_seed"] == [100.0, 100.0], (kind, res["table"])
    assert "| 4 | zero-shot f0 |" in res["table"] and "K(A-SignGD)" in res["table"]
    # every seed's dev set saw 100 among its ties, and no grid point does better on test
    assert "| K(A-SignGD) | 100.0 / 100.0 | 100.0 |" in res["table"] and res["table"].count("100.0 / 100.0 | 100.0 |") == 6
    again = solve_cmd(cfg)  # resumes from the store: same rows, nothing recomputed
    assert again["rows"] == res["rows"]
    out = tmp_path / "lm_solve_sst2_k4_roberta"
    assert (out / "table.md").exists()
    from ntkcheck.result import Result

    result = Result.from_json(json.loads((out / "result.json").read_text()))
    assert result.kind == "lm" and result.verdict == "measured"
    # zero-shot predicts the same on every seed: its interval is the test sentences' (bootstrap, as in lm
    # reproduce), not a t-interval over identical seeds, which would be a point
    zs = result.claim("sst2.zero_shot.test")
    assert 0 < zs.measured < 100 and zs.ci[0] < zs.measured < zs.ci[1] and "test sentences" in zs.name
    assert result.claim("sst2.sgd.test").measured == 100.0 and result.claim("sst2.sgd.test").relation is None
    # every seed right on every sentence: no spread, no test-set variance, one seed is enough
    budget = json.loads((out / "details.json").read_text())["seeds_needed"]
    assert budget["sgd"]["sd_seeds"] == 0.0 and budget["sgd"]["halfwidth_test"] == 0.0
    assert budget["sgd"]["seeds_needed"] == 1 and budget["zero_shot"]["halfwidth_test"] > 0
    assert "| SST-2 | K(A-SignGD) | 0.0 | 0.0 | 0.0 (2 seeds) | 1 |" in res["table"]


def test_solver_grid_and_predictor():
    from ntkcheck.realmodels._solvers import fit
    from ntkcheck.realmodels.solve import grid_for, onehot, solve_split

    assert len(grid_for("sgd")) == 25 and len(grid_for("asym_signgd")) == 100
    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 20))
    y = [0, 1, 0, 1, 1, 0]
    K = np.einsum("ij,ab->iajb", X @ X.T, np.eye(2))  # [N, C, N, C]
    Y = onehot(y, 2)
    pred = fit("sgd", K, Y, np.zeros((6, 2)), {"reg": 0.0, "f0_scale": math.inf}, loss="ridge")
    np.testing.assert_allclose(pred(K, np.zeros((6, 2))), Y, atol=1e-8)  # interpolation
    f0 = rng.normal(size=(6, 2))
    pred = fit("sgd", K, Y, f0, {"reg": 0.0, "f0_scale": 10.0}, loss="ridge")
    np.testing.assert_allclose(pred(K, f0), Y, atol=1e-8)
    for kind, loss in (("sgd", "logistic"), ("asym_signgd", "logistic")):
        p = fit(kind, K, Y, f0, {"reg": 0.0, "f0_scale": math.inf, "gamma": 10.0}, loss=loss)
        assert (p(K, f0).argmax(1) == np.array(y)).all(), kind
    Kt = torch.from_numpy(K)
    r = solve_split("sgd", Kt, Kt, Kt, y, y, y, f0, f0, f0, "acc")
    assert r["test"] == 100.0 and r["hp_reg"] == 0.0
    assert r["oracle_test"] == 100.0 and r["tied_test_lo"] <= r["test"] <= r["tied_test_hi"]
    assert 1 <= r["dev_ties"] <= 25
    # 6 examples in 20 dimensions are separable: at reg 0 the logistic loss has no minimizer (L-BFGS drives it
    # below 1e-6 and stops), at a positive reg it has one; least squares at reg 0 is the min-norm interpolant
    assert r["no_minimizer"] is True
    at = {"f0_scale": math.inf}
    assert fit("sgd", K, Y, f0, {"reg": 0.0, **at}, loss="logistic").no_minimizer
    assert not fit("sgd", K, Y, f0, {"reg": 0.01, **at}, loss="logistic").no_minimizer
    assert not fit("sgd", K, Y, f0, {"reg": 0.0, **at}, loss="ridge").no_minimizer
    assert not solve_split("sgd", Kt, Kt, Kt, y, y, y, f0, f0, f0, "acc", grid=[{"reg": 0.1, **at}])["no_minimizer"]
    # labels no kernel predictor separates (one example twice, opposite labels): the loss stays above log(2) / 7
    Xd = np.vstack([X[:1], X[:1], X[1:]])
    Kd = np.einsum("ij,ab->iajb", Xd @ Xd.T, np.eye(2))
    assert not fit("sgd", Kd, onehot([0, 1, 0, 1, 1, 0, 1], 2), np.zeros((7, 2)), {"reg": 0.0, **at}).no_minimizer


def test_grid_selection_on_planted_scores():
    """What the dev set could choose: ties at the best dev metric, their test span, the best test (oracle)."""
    from ntkcheck.realmodels.metrics import selection_table
    from ntkcheck.realmodels.solve import grid_selection

    planted = [(50.0, 60.0), (75.0, 70.0), (62.5, 95.0), (75.0, 80.0), (75.0, 72.5)]
    assert grid_selection(planted) == {"dev_ties": 3, "tied_test_lo": 70.0, "tied_test_hi": 80.0,
                                       "oracle_test": 95.0}
    assert grid_selection([(10.0, 30.0)]) == {"dev_ties": 1, "tied_test_lo": 30.0, "tied_test_hi": 30.0,
                                              "oracle_test": 30.0}
    rows = [{"method": "zero_shot", "seed": 13, "test": 51.0},
            {"method": "sgd", "seed": 13, "test": 70.0, **grid_selection(planted), "no_minimizer": True},
            {"method": "sgd", "seed": 21, "test": 80.0, "dev_ties": 1, "tied_test_lo": 80.0, "tied_test_hi": 80.0,
             "oracle_test": 84.0, "no_minimizer": False}]
    table = selection_table(rows).splitlines()
    assert len(table) == 3 and table[2] == "| K(SGD) | 70.0 / 80.0 | 75.0 | 3 / 1 | 70.0-80.0 / 80.0-80.0 | " \
                                          "95.0 / 84.0 | 89.5 | 1 of 2 seeds |"
    del rows[2]["no_minimizer"]   # a row of an earlier version: not counted as either
    assert selection_table(rows).splitlines()[2].endswith("| not recorded |")
    assert selection_table(rows[:1]) == ""


def test_cli_make_tiny_and_solve(tmp_path, separable_dir, capsys):
    from ntkcheck.cli import main

    model = tmp_path / "tiny"
    assert main(["lm", "make-tiny", str(model), "--arch", "gpt-neo", "--hidden", "8", "--layers", "1"]) == 0
    capsys.readouterr()
    assert main(["lm", "solve", "--model", str(model), "--task", "sst2", "--data", str(separable_dir), "--k", "2",
                 "--seeds", "13", "--out", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "| k-shot | Method | SST-2 |" in out and "K(SGD)" in out
    # --regs replaces [KV] Table 4's ridge grid (the points of each grid are kept apart); a negative ridge is refused
    assert main(["lm", "solve", "--model", str(model), "--task", "sst2", "--data", str(separable_dir), "--k", "2",
                 "--seeds", "13", "--regs", "0.1,1", "--out", str(tmp_path / "runs")]) == 0
    capsys.readouterr()
    solved = tmp_path / "runs" / "lm_solve_sst2_k2_tiny"
    assert json.loads((solved / "details.json").read_text())["grid"] == {"regs": [0.1, 1.0]}
    bindings = [[r for p in d.glob("*.json") for r in json.loads(p.read_text())["rows"] if r["method"] == "sgd"]
                for d in (solved / "points").iterdir()]
    on_grid = [rs for rs in bindings if rs and all(r["hp_reg"] in (0.1, 1.0) for r in rs)]
    assert len(bindings) == 2 and len(on_grid) == 1 and not any(r["no_minimizer"] for r in on_grid[0])
    assert main(["lm", "solve", "--model", str(model), "--task", "sst2", "--data", str(separable_dir),
                 "--regs", "-1", "--out", str(tmp_path / "runs")]) == 2
    assert "--regs '-1'" in capsys.readouterr().err
    # a check in the same run store: the report lists the LM measurement and the check alike
    assert main(["run", "tp_scaling", "--quick", "--out", str(tmp_path / "runs"), "--widths", "16", "32",
                 "--seeds", "2", "--set", "archs=mlp", "--set", "optimizers=sgd", "--set", "params=NTK"]) == 0
    report = (tmp_path / "runs" / "report.md").read_text()
    assert "| tp_scaling | check |" in report and "| lm_solve_sst2_k2_tiny | lm | **measured** |" in report
    assert "SST-2 K(SGD) test metric (%)" in report
    # --kinds none: zero-shot alone (the f0 cache only, no kernel block), and 'none' beside a kind is refused
    assert main(["lm", "solve", "--model", str(model), "--task", "sst2", "--data", str(separable_dir), "--k", "2",
                 "--seeds", "13,21", "--kinds", "none", "--out", str(tmp_path / "zs")]) == 0
    out = capsys.readouterr().out
    assert "zero-shot f0" in out and "K(SGD)" not in out
    cached = [f.name for f in (tmp_path / "zs" / "lm_kernels").rglob("*.pt")]
    assert cached and all(n.startswith("f0_") for n in cached), cached
    for kinds in ("none,sgd", "none"):
        cmd = "kernel" if kinds == "none" else "solve"
        assert main(["lm", cmd, "--model", str(model), "--data", str(separable_dir), "--kinds", kinds,
                     "--out", str(tmp_path / "zs")]) == 2
        assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["lm", "solve", "--model", str(model), "--data", str(separable_dir), "--template", "<S1> It was .",
                 "--out", str(tmp_path / "runs")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "ntkcheck: error: template '<S1> It was .' has no [MASK] slot"
    assert main(["lm", "solve", "--model", str(tmp_path / "nope"), "--data", str(separable_dir),
                 "--out", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["roberta", "bert", "gpt-neo", "llama"])
def test_structured_covers_every_lm_tensor_and_sides_of_different_lengths(tmp_path, monkeypatch, arch):
    """All parameters, x1 and x2 encoded apart (padded to different lengths): the structured path covers every
    tensor (RMSNorm weights and the tied embedding / LM head included, nothing falls back to Jacobians) and
    equals the per-example autograd loop for every kind."""
    import ntkcheck.models.kernels.structured as st
    from ntkcheck.models.kernels import empirical_kernel
    from ntkcheck.models.kernels.structured import probe
    from ntkcheck.realmodels.adapters import load_pretrained, make_adapter
    from ntkcheck.realmodels.data import Example
    from ntkcheck.realmodels.tasks import TASKS
    from ntkcheck.realmodels.tiny import make_tiny

    model, tok, mode = load_pretrained(make_tiny(tmp_path / arch, arch, hidden=16, layers=2, heads=2, seed=0))
    ad = make_adapter(model.double(), tok, mode, task=TASKS["sst2"])
    enc = lambda texts: ad.encode([Example(text=t, label=0) for t in texts])  # noqa: E731
    x1 = enc(["a great movie", "the story was terrible and not good at all ."])
    x2 = enc(["bad", "a very good film , it was great", "what a terrible one"])
    assert x1.shape[-1] != x2.shape[-1]
    covered, _, _ = probe(ad.f, ad.params, ad.select, x1, ad.num_outputs)
    assert set(covered) == set(ad.select), sorted(set(ad.select) - set(covered))
    # transformers 5.25 runs parts of a float64 Llama in float32 (RMSNorm's variance, the rotary angles), whose
    # rounding moves with the batch's shape: a chunk of examples against one at a time differs at 1e-7
    rtol = 1e-6 if arch == "llama" else 1e-9
    for kind in ("sgd", "signgd", "asym_signgd"):
        for a, b in ((x1, x2), (x2, x1)):
            ref, slack = _naive(ad, a, b, kind, with_slack=True)
            # budgets of a few examples' factors (100-150 kB each here): rows in chunks, columns held or
            # captured again, column sign features kept (int8) or formed again
            # trim: examples sorted by length, each chunk cut to its longest prompt; K unchanged (not for
            # GPT-Neo, whose attention runs in float32 whatever the model's dtype: another sequence length
            # rounds differently, at 1e-7)
            # passes of one example (CAPTURE_PASS_BYTES 1) in whole chunks: each pass cut to its own length
            # and merged into the chunk's factors, zero-padded
            big = st.CAPTURE_PASS_BYTES["cpu"]
            cases = ((None, None, big), (800_000, None, big), (1_100_000, None, big)) + (
                ((800_000, ad.trim, big), (None, ad.trim, 1)) if arch != "gpt-neo" else ())
            for budget, trim, passes in cases:
                monkeypatch.setitem(st.CAPTURE_PASS_BYTES, "cpu", passes)
                K = empirical_kernel(ad.f, ad.params, a, b, kind=kind, method="structured", memory_budget=budget,
                                     trim=trim)
                assert K.shape == ref.shape == (len(a), 2, len(b), 2)
                assert bool(((K - ref).abs() <= rtol * ref.abs().max() + slack).all()), (kind, budget)


def test_columns_held_when_their_own_lengths_fit(tmp_path, monkeypatch):
    """Short columns beside one long row, a budget of 4 examples' factors at the rows' padded width: there the
    4 columns would take more than half of it, at their own lengths they fit. They are captured once and
    held while the rows come in several chunks (the old plan captured every column again per chunk of
    rows), and K equals the per-example autograd loop. RoBERTa, because a float64 Llama is not
    length-invariant: transformers computes its rotary angles in float32, and a batch cut to another
    width moves its outputs by 1.6e-7 relative."""
    import ntkcheck.models.kernels.structured as st
    from ntkcheck.models.kernels import empirical_kernel
    from ntkcheck.realmodels.adapters import load_pretrained, make_adapter
    from ntkcheck.realmodels.data import Example
    from ntkcheck.realmodels.tasks import TASKS
    from ntkcheck.realmodels.tiny import make_tiny

    model, tok, mode = load_pretrained(make_tiny(tmp_path / "roberta", "roberta", hidden=16, layers=2, heads=2,
                                                 seed=0))
    ad = make_adapter(model.double(), tok, mode, task=TASKS["sst2"])
    enc = lambda texts: ad.encode([Example(text=t, label=0) for t in texts])  # noqa: E731
    x1 = enc(["a very long and rather good film , it was great , fun and not terrible at all , really",
              "a great movie", "the story was terrible", "bad", "not good at all", "a fine film , great",
              "what a terrible one", "good", "it was great and fun"])
    x2 = enc(["bad", "good", "fine", "a great one"])
    per_ex = st.probe(ad.f, ad.params, ad.select, x1, ad.num_outputs)[1]
    budget = 4 * per_ex
    assert len(x2) * per_ex > budget // 2 and x1.shape[-1] > 2 * x2.shape[-1], (x1.shape, x2.shape)
    sizes = []
    real_batched = st.capture_batched
    monkeypatch.setattr(st, "capture_batched", lambda f, p, n, x, c, *rest: (sizes.append(x.shape[0]),
                                                                            real_batched(f, p, n, x, c, *rest))[1])
    K = empirical_kernel(ad.f, ad.params, x1, x2, kind="sgd", method="structured", memory_budget=budget,
                         trim=ad.trim)
    ref = _naive(ad, x1, x2, "sgd")
    assert bool(((K - ref).abs() <= 1e-9 * ref.abs().max()).all())
    n_col_chunks = next(i for i in range(len(sizes) + 1) if sum(sizes[:i]) == len(x2))
    assert sum(sizes) == len(x1) + len(x2) and len(sizes) - n_col_chunks > 1, sizes


@pytest.mark.parametrize("kind", ["signgd", "asym_signgd"])
def test_sign_kernels_from_column_bits_and_dropped_column_factors(tmp_path, monkeypatch, kind):
    """Many rows, few columns, budgets of a few examples' factors: the column side is captured first, its
    weights' exact signs kept as bits and their factors dropped, so the rows come in larger chunks; with too
    little room for the bits the columns are held or captured again. K equals the per-example autograd loop
    either way."""
    import ntkcheck.models.kernels.structured as st
    from ntkcheck.models.kernels import empirical_kernel
    from ntkcheck.realmodels.adapters import load_pretrained, make_adapter
    from ntkcheck.realmodels.data import Example
    from ntkcheck.realmodels.tasks import TASKS
    from ntkcheck.realmodels.tiny import make_tiny

    model, tok, mode = load_pretrained(make_tiny(tmp_path / "llama", "llama", hidden=16, layers=2, heads=2, seed=0))
    ad = make_adapter(model.double(), tok, mode, task=TASKS["sst2"])
    enc = lambda texts: ad.encode([Example(text=t, label=0) for t in texts])  # noqa: E731
    x1 = enc(["a great movie", "the story was terrible", "bad", "not good at all", "a fine film , great",
              "what a terrible one", "good", "it was great and fun"])
    x2 = enc(["bad", "a very good film , it was great"])
    ref, slack = _naive(ad, x1, x2, kind, with_slack=True)
    per_ex = st.probe(ad.f, ad.params, ad.select, x1, ad.num_outputs)[1]
    passes, sizes = [], []      # capture passes within capture_batched (not the probes'), its chunks
    real_cap, real_batched = st.capture, st.capture_batched

    def batched(f, p, n, x, c, *rest):
        sizes.append(x.shape[0])
        monkeypatch.setattr(st, "capture", lambda f, p, n, x, c: (passes.append(x.shape[0]), real_cap(f, p, n, x, c))[1])
        try:
            return real_batched(f, p, n, x, c, *rest)
        finally:
            monkeypatch.setattr(st, "capture", real_cap)

    monkeypatch.setattr(st, "capture_batched", batched)
    for budget in (16 * per_ex, 5 * per_ex, 4 * per_ex, 64 * per_ex):
        passes.clear()
        sizes.clear()
        K = empirical_kernel(ad.f, ad.params, x1, x2, kind=kind, method="structured", memory_budget=budget)
        assert bool(((K - ref).abs() <= 1e-9 * ref.abs().max() + slack).all()), budget // per_ex
        # capture passes of at most an eighth of the budget (factors and forward tensors), however large the
        # chunk: a chunk of 8 rows at 64 factors' budget comes in passes of fewer
        assert sum(passes) == sum(sizes) and max(passes) <= max(1, (budget // 8) // per_ex), (budget // per_ex,
                                                                                                passes, sizes)
        if budget == 16 * per_ex:
            # the two columns once (in chunks of a sixteenth of the budget: one example each), then the rows
            # in chunks of what the columns' bits leave of 11/16 of the budget beside one capture pass, larger
            # than the eighth (2 examples) that holding the columns' factors leaves
            assert sizes[:2] == [1, 1] and sum(sizes[2:]) == len(x1) and max(sizes[2:]) > 2, sizes
        if budget == 64 * per_ex:
            assert max(sizes) > max(passes), (sizes, passes)


@pytest.mark.parametrize("arch", ["roberta", "llama"])
def test_countsketch_of_lm_gradients_from_the_capture(tmp_path, arch):
    """The countsketch kernel of a tiny LM (embedding rows, tied head, RMSNorm / LayerNorm, sides of different
    lengths) equals the same hashes applied to autograd's per-example gradients (the smallest tensors,
    at most k entries in all, unprojected): only the projection is random."""
    from ntkcheck.models.kernels import empirical_kernel
    from ntkcheck.models.kernels.sketch import count_hash, exact_tensors
    from ntkcheck.realmodels.adapters import load_pretrained, make_adapter
    from ntkcheck.realmodels.data import Example
    from ntkcheck.realmodels.tasks import TASKS
    from ntkcheck.realmodels.tiny import make_tiny

    model, tok, mode = load_pretrained(make_tiny(tmp_path / arch, arch, hidden=16, layers=1, heads=2, seed=0))
    ad = make_adapter(model.double(), tok, mode, task=TASKS["sst2"])
    enc = lambda texts: ad.encode([Example(text=t, label=0) for t in texts])  # noqa: E731
    x1, x2 = enc(["a great movie", "it was not good at all ."]), enc(["bad", "a very good film , great"])
    k, index = 256, {n: i for i, n in enumerate(ad.params)}
    # an attention key bias has gradient exactly 0 (softmax ignores q.b, the same for every key); its
    # round-off (1e-17) has random signs, which a sign kind would sketch as O(1) noise on either path
    sel = [n for n in ad.select if not n.endswith("key.bias")]
    small = set(exact_tensors({n: ad.params[n].numel() for n in sel}, {n: "total" for n in sel}, k))
    assert small

    def sketched(x, phi):
        rows = []
        for i in range(len(x)):
            for a in range(ad.num_outputs):
                p = {n: v.clone().requires_grad_(n in sel) for n, v in ad.params.items()}
                gs = torch.autograd.grad(ad.f(p, x[i:i + 1])[0, a], [p[n] for n in sel], allow_unused=True)
                row, exact = torch.zeros(k, dtype=torch.float64), []
                for n, g in zip(sel, gs):
                    g = torch.zeros_like(p[n]) if g is None else g
                    if n in small:      # the smallest tensors, at most k entries in all, enter unprojected
                        exact.append(phi(g.reshape(-1)))
                        continue
                    b, s = count_hash(torch.arange(g.numel()), k, 4, index[n])
                    row.index_add_(0, b, phi(g.reshape(-1)) * s.double())
                rows.append(torch.cat([row] + exact))
        return torch.stack(rows)

    for kind in ("sgd", "asym_signgd"):
        K = empirical_kernel(ad.f, ad.params, x1, x2, kind=kind, method="sketch", sketch="countsketch",
                             sketch_dim=k, seed=4, select=sel, trim=ad.trim)
        S1 = sketched(x1, lambda g: g)
        S2 = sketched(x2, (lambda g: g) if kind == "sgd" else torch.sign)
        ref = (S1 @ S2.T).reshape(2, 2, 2, 2)
        torch.testing.assert_close(K, ref, rtol=1e-9, atol=1e-9 * float(ref.abs().max()))


def test_sketched_session_kernels(tiny_models, separable_dir, tmp_path, sketch_captures):
    """--sketch-dim: with k at least the number of parameters nothing is projected and the session's
    kernels are the exact ones; a small k gives an estimate that is not (the control). Blocks of rows share
    one sketch of the columns and equal one block of every row. The sketched kernels are cached under their
    own fingerprint and results go to their own folder, beside the exact run's. Every example is captured
    once for sgd (the training examples are the first rows and take the columns' features), rows and columns
    apart for asym_signgd."""
    from dataclasses import replace

    from ntkcheck.realmodels.experiment import result_name

    captured = sketch_captures

    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(separable_dir), k=2, seeds=(13, 21),
                   model_dtype="float64", test_max=3, out=str(tmp_path), block=3, kinds=("sgd", "asym_signgd"))
    exact = next(iter_sessions(cfg, "lm_kernel"))
    P = sum(v.numel() for v in exact.adapter.trainable.values())
    big = next(iter_sessions(replace(cfg, sketch_dim=P), "lm_kernel"))
    small = next(iter_sessions(replace(cfg, sketch_dim=64), "lm_kernel"))
    one_block = next(iter_sessions(replace(cfg, sketch_dim=64, block=100), "lm_kernel"))
    dirs = {exact.kernel_dir(), big.kernel_dir(), small.kernel_dir()}
    assert len(dirs) == 3 and one_block.kernel_dir() == small.kernel_dir()
    assert small.store.dir.name == result_name("lm_kernel", "sst2", cfg) + "_cs64"
    for kind in cfg.kinds:
        K = exact.kernel(kind)
        torch.testing.assert_close(big.kernel(kind), K, rtol=1e-10, atol=1e-10 * float(K.abs().max()))
        Ks = small.kernel(kind)
        assert float((Ks - K).abs().max()) > 1e-3 * float(K.abs().max())
        for p in small.kernel_dir().glob(f"{kind}_*.pt"):
            p.unlink()
        shutil.rmtree(small.kernel_dir() / "features")   # kept features would leave nothing to capture
        captured.clear()
        torch.testing.assert_close(one_block.kernel(kind), Ks, rtol=1e-12, atol=1e-12 * float(K.abs().max()))
        R, U = len(one_block.rows), one_block.n_cols
        as_bytes = [r.numpy().tobytes() for r in one_block.x_rows]
        others = sum(b not in set(as_bytes[:U]) for b in as_bytes[U:])   # here 0: test inputs repeat train's
        assert sum(captured) == (U + others if kind == "sgd" else R + U) and U < R
        assert not small.kernel_fns[kind].side_memo    # let go once the kernel is complete


def test_a_sketched_kernel_sketches_each_example_once_across_runs(tiny_models, tmp_path, sketch_captures):
    """--sketch-dim keeps every example's features in the kernel folder: a run with seeds (13, 21) after one
    with seed 13 sketches only the examples the first did not have (without the folder: every row again, for
    the new columns), a run resumed after losing its blocks sketches nothing, and each kernel equals the one
    computed from scratch in another folder."""
    from dataclasses import replace

    from ntkcheck.realmodels.data import example_ids

    _write_distinct_sst2(tmp_path / "data")
    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(tmp_path / "data"), k=2, seeds=(13,),
                   test_max=4, out=str(tmp_path / "a"), block=3, model_dtype="float64", sketch_dim=64)
    one = next(iter_sessions(cfg, "lm_kernel"))
    one.kernel("sgd")
    assert sum(sketch_captures) == len(set(example_ids(one.rows)))
    two = next(iter_sessions(replace(cfg, seeds=(13, 21)), "lm_kernel"))
    sketch_captures.clear()
    K = two.kernel("sgd")
    new = set(example_ids(two.rows)) - set(example_ids(one.rows))
    assert 0 < sum(sketch_captures) == len(new)
    fresh = _fresh_kernel(replace(cfg, seeds=(13, 21)), tmp_path / "b")
    torch.testing.assert_close(K, fresh, rtol=1e-12, atol=1e-12 * float(fresh.abs().max()))
    for p in two.kernel_dir().glob("sgd_*.pt"):          # every block lost: the features are still there
        p.unlink()
    again = next(iter_sessions(replace(cfg, seeds=(13, 21)), "lm_kernel"))
    sketch_captures.clear()
    torch.testing.assert_close(again.kernel("sgd"), K, rtol=1e-12, atol=1e-12 * float(fresh.abs().max()))
    assert sketch_captures == []
    assert len(list((two.kernel_dir() / "features").rglob("*.pt"))) == len(set(example_ids(two.rows)))


def test_kernel_cache_key_follows_the_registered_prompt(tiny_models, separable_dir, tmp_path, monkeypatch):
    """Editing a registered task's template or label words changes the kernel cache's key (a cached kernel of
    the old prompt is never reused); a --template override does too, and the sketch dimension."""
    from dataclasses import replace

    from ntkcheck.realmodels import tasks

    cfg = LMConfig(model=str(tiny_models["gpt-neo"]), task="sst2", data=str(separable_dir), out=str(tmp_path))
    base = cfg.kernel_fields()
    assert base["prompt"]["template"] == tasks.TASKS["sst2"].template
    monkeypatch.setitem(tasks.TASKS, "sst2", replace(tasks.TASKS["sst2"], template="<S1> It felt [MASK] ."))
    edited = cfg.kernel_fields()
    monkeypatch.setitem(tasks.TASKS, "sst2", replace(tasks.TASKS["sst2"], label_words=("bad", "good")))
    words = cfg.kernel_fields()
    keys = [base, edited, words, replace(cfg, template="<S1> So [MASK] .").kernel_fields(),
            replace(cfg, sketch_dim=1024).kernel_fields()]
    assert len({json.dumps(k, sort_keys=True) for k in keys}) == len(keys)


def test_sketch_flags_bad_input_is_one_line(tmp_path, separable_dir, capsys):
    from ntkcheck.cli import main

    model = tmp_path / "tiny"
    assert main(["lm", "make-tiny", str(model), "--arch", "gpt-neo", "--hidden", "8", "--layers", "1"]) == 0
    common = ["lm", "solve", "--model", str(model), "--data", str(separable_dir), "--out", str(tmp_path / "r")]
    for extra, says in ((["--method", "jacobian", "--sketch-dim", "64"], "--method jacobian with --sketch-dim 64"),
                        (["--method", "sketch"], "--method sketch needs --sketch-dim"),
                        (["--sketch-dim", "0"], "--sketch-dim '0': must be >= 1")):
        capsys.readouterr()
        assert main(common + extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
