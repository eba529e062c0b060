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
