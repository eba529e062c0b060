"""ntkcheck.distributed: each rank starts on its own share, every unit is reachable from every rank, and a
single process is unchanged."""
import pytest

from ntkcheck import distributed


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_take_order_starts_on_disjoint_shares_and_covers_everything(monkeypatch, world):
    units = list(range(11))
    orders = []
    for r in range(world):
        monkeypatch.setenv("RANK", str(r))
        monkeypatch.setenv("WORLD_SIZE", str(world))
        order = distributed.take_order(units)
        assert sorted(order) == units
        orders.append(order)
    firsts = [o[:len(units[r::world])] for r, o in enumerate(orders)]
    assert sorted(u for f in firsts for u in f) == units          # the shares partition the units
    assert orders[0][:len(units[0::world])] == units[0::world]


def test_single_process_and_devices(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.rank() == 0 and distributed.world_size() == 1 and distributed.is_main()
    assert distributed.take_order([3, 1, 2]) == [3, 1, 2] and distributed.init("cpu") is False
    assert distributed.rank_device("cuda") == "cuda"
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.rank_device("cuda") == "cuda:1" and distributed.rank_device("cuda:0") == "cuda:0"
    assert not distributed.is_main()


def test_ntkcheck_run_over_two_gloo_ranks_gives_the_one_process_result(tmp_path):
    """`torchrun --nproc-per-node 2 -m ntkcheck run CHECK`: the sweep points split over the ranks, rank 0
    writes the result, and every claim's numbers equal a one-process run's (each point seeds itself)."""
    import json
    import os
    import subprocess
    import sys

    env = dict(os.environ, TQDM_DISABLE="1", NTKCHECK_PROGRESS="0", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    args = ["run", "tp_scaling", "--quick", "--widths", "16", "32", "64", "--seeds", "2"]
    one = subprocess.run([sys.executable, "-m", "ntkcheck", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          "-m", "ntkcheck", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    res = [json.loads((tmp_path / d / "tp_scaling" / "result.json").read_text()) for d in ("one", "two")]
    strip = [[{k: c[k] for k in ("id", "measured", "ci", "state")} for c in r["claims"]] for r in res]
    assert strip[0] == strip[1] and res[0]["verdict"] == res[1]["verdict"]
    assert res[1]["provenance"]["world_size"] == 2 and res[0]["provenance"]["world_size"] == 1
    assert two.stdout.count("== tp_scaling") == 1          # only rank 0 prints
