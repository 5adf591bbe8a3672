"""Collectives netc's training relies on, run in two real gloo processes."""

import torch.distributed as dist
import torch.multiprocessing as mp

from netc.runtime import distributed as distrib


def _rank(rank: int, store_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=2)
    try:
        world = distrib.World(rank=rank, size=2, local_rank=rank)
        values = distrib.broadcast_values(world, [0.25 + rank, 3.0 * rank])
        flag = distrib.broadcast_flag(world, rank == 1)
        results[rank] = (values, flag)
    finally:
        dist.destroy_process_group()


def test_every_rank_gets_rank_0s_numbers(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(str(tmp_path / "store"), results), nprocs=2, join=True)
        assert dict(results) == {0: ([0.25, 0.0], False), 1: ([0.25, 0.0], False)}


def test_one_process_keeps_its_own_numbers():
    world = distrib.World()
    assert distrib.broadcast_values(world, [1.5]) == [1.5]
    assert distrib.broadcast_flag(world, True) is True
