"""Per-process CUDA RNG states survive a change in the number of visible GPUs (issue #28).

No GPU here: ``torch.cuda`` is replaced by a stand-in holding one generator state per device
(a tensor), with the functions csekit.training.rng calls. A checkpoint written by rank r of
a launch where each process saw all 4 GPUs (rank r on device r) is restored where each
process sees only its own GPU (device 0), and the other way round: rank r's own stream must
continue on the device it now uses, never another device's (rank r would otherwise repeat a
stream or restart its dropout masks).
"""

from __future__ import annotations

import pytest
import torch

from csekit.training import rng


class FakeCuda:
    def __init__(self, n: int, current: int, offset: int = 0) -> None:
        self.states = {d: torch.tensor([offset + d], dtype=torch.uint8) for d in range(n)}
        self.current = current

    def install(self, mp: pytest.MonkeyPatch) -> None:
        c = torch.cuda
        mp.setattr(c, "is_available", lambda: True)
        mp.setattr(c, "is_initialized", lambda: True)
        mp.setattr(c, "device_count", lambda: len(self.states))
        mp.setattr(c, "current_device", lambda: self.current)
        mp.setattr(c, "get_rng_state_all", lambda: [self.states[d].clone()
                                                    for d in sorted(self.states)])

        def set_all(states: list[torch.Tensor]) -> None:
            assert len(states) == len(self.states)
            for d, s in enumerate(states):
                self.states[d] = s.clone()

        def set_one(state: torch.Tensor, device: object = "cuda") -> None:
            d = self.current if device in ("cuda", None) else int(device)  # type: ignore[arg-type]
            self.states[d] = state.clone()

        mp.setattr(c, "set_rng_state_all", set_all)
        mp.setattr(c, "set_rng_state", set_one)


def _saved(monkeypatch: pytest.MonkeyPatch, n: int, rank_device: int) -> dict:
    with monkeypatch.context() as m:
        FakeCuda(n, rank_device, offset=100).install(m)
        return rng.get_rng_state()


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_all_gpus_per_process_to_one_gpu_each(monkeypatch: pytest.MonkeyPatch, rank: int) -> None:
    state = _saved(monkeypatch, 4, rank)  # rank r drew from device r
    assert state["cuda_device"] == rank
    now = FakeCuda(1, 0)  # CUDA_VISIBLE_DEVICES=<its GPU>: device 0 is rank r's GPU
    with monkeypatch.context() as m:
        now.install(m)
        rng.set_rng_state(state)
    assert int(now.states[0]) == 100 + rank


@pytest.mark.parametrize("rank", [0, 2])
def test_one_gpu_each_to_all_gpus_per_process(monkeypatch: pytest.MonkeyPatch, rank: int) -> None:
    state = _saved(monkeypatch, 1, 0)  # rank r saw one GPU, as its device 0
    now = FakeCuda(4, rank)  # now it sees all 4 and uses device r
    with monkeypatch.context() as m:
        now.install(m)
        rng.set_rng_state(state)
    assert int(now.states[rank]) == 100


def test_same_layout_restores_every_device(monkeypatch: pytest.MonkeyPatch) -> None:
    state = _saved(monkeypatch, 2, 1)
    now = FakeCuda(2, 1)
    with monkeypatch.context() as m:
        now.install(m)
        rng.set_rng_state(state)
    assert [int(now.states[d]) for d in (0, 1)] == [100, 101]


def test_states_load_weights_only(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    state = _saved(monkeypatch, 2, 1)
    torch.save([state], tmp_path / "rng.pt")
    back = torch.load(tmp_path / "rng.pt", weights_only=True)
    assert back[0]["cuda_device"] == 1 and torch.equal(back[0]["cuda"][1], state["cuda"][1])
