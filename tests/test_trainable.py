"""The trainer's contract for trainable parts (``Method.trainable``): the optimiser, gradient
clipping, DDP and the gradient average of extra heads see the student *and* every extra head
(rc2l's projection MLP with ``method.projection=true``), and checkpoint keys stay as they were."""
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from s4kit import dist
from s4kit.config import CONFIG_DIR, load_config
from s4kit.engine.trainer import checked_param_groups, clip_gradients
from s4kit.methods import build_method
from s4kit.methods.base import Method, method_class, registered

from conftest import tiny_overrides

PRESETS = sorted(p.stem for p in (Path(CONFIG_DIR) / "digits").glob("*.yaml") if not p.stem.startswith("_"))


def _build(digits_root, tmp_path, preset, extra=()):
    torch.manual_seed(0)
    return build_method(load_config(f"digits/{preset}", tiny_overrides(digits_root, tmp_path) + list(extra)))


@pytest.mark.parametrize("preset", PRESETS)
def test_trainable_holds_every_trained_parameter_once_in_the_optimiser(preset, digits_root, tmp_path):
    method = _build(digits_root, tmp_path, preset)
    trained = {id(p) for p in method.parameters() if p.requires_grad}
    assert trained == {id(p) for p in method.trainable.parameters() if p.requires_grad}
    assert sum(len(g["params"]) for g in checked_param_groups(method)) == len(trained)


def test_rc2l_projection_is_trainable_optimised_and_keeps_its_checkpoint_keys(digits_root, tmp_path):
    plain = _build(digits_root, tmp_path / "a", "rc2l")
    assert list(plain.trainable) == ["student"] and plain.extra_parameters() == []
    method = _build(digits_root, tmp_path / "b", "rc2l", ["method.projection=true"])
    assert list(method.trainable) == ["student", "projection"]
    head = list(method.projection.parameters())
    assert [id(p) for p in method.extra_parameters()] == [id(p) for p in head]
    decoder = next(g for g in checked_param_groups(method) if g["name"] == "decoder")
    assert [id(p) for p in decoder["params"][-len(head):]] == [id(p) for p in head]  # the old group layout
    keys = set(method.state_dict())
    assert keys == set(plain.state_dict()) | {f"projection.{k}" for k in method.projection.state_dict()}


def test_param_groups_leaving_out_a_head_is_refused(digits_root, tmp_path, monkeypatch):
    method = _build(digits_root, tmp_path, "rc2l", ["method.projection=true"])
    student_only = [{"params": list(method.student.parameters())}]
    monkeypatch.setattr(method, "param_groups", lambda: student_only)
    with pytest.raises(RuntimeError, match=r"leaves out \['projection.0.weight'"):
        checked_param_groups(method)


def test_clipping_covers_the_projection_head(digits_root, tmp_path):
    method = _build(digits_root, tmp_path, "rc2l", ["method.projection=true"])
    for p in method.student.parameters():
        p.grad = torch.zeros_like(p)
    for p in method.projection.parameters():
        p.grad = torch.full_like(p, 100.0)
    clip_gradients(method, 1.0)
    norm = torch.cat([p.grad.reshape(-1) for p in method.projection.parameters()]).norm()
    assert norm == pytest.approx(1.0, rel=1e-4)


def test_find_unused_parameters_is_its_own_attribute_with_the_old_values():
    # True where a student parameter (the representation head) gets no gradient in a step
    expected = {"allspark": True, "css": False, "meanteacher": True, "prcl": False, "rc2l": False, "reco": False,
                "supervised": True, "supervised_maskformer": True}
    assert {n: method_class(n).find_unused_parameters for n in registered()} == expected
    assert Method.find_unused_parameters is True


def _average_on_rank(rank: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    used, unused, half = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    used.grad = torch.full((3,), 2.0 + 2 * rank)  # 2 on rank 0, 4 on rank 1
    if rank == 1:
        half.grad = torch.full((3,), 6.0)  # rank 0 did not use it: counts as zeros
    dist.average_gradients([used, unused, half])
    torch.save({"used": used.grad, "unused": unused.grad, "half": half.grad}, f"{out}{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes
def test_average_gradients_is_the_mean_with_missing_as_zero_and_none_where_all_miss(tmp_path):
    mp.spawn(_average_on_rank, args=(f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "rank")), nprocs=2)
    for rank in (0, 1):
        g = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(g["used"], torch.full((3,), 3.0)) and torch.equal(g["half"], torch.full((3,), 3.0))
        assert g["unused"] is None
