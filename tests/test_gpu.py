"""GPU checks (run on a machine with CUDA: ``pytest -m gpu``); ``make test`` deselects them."""
import pytest
import torch

from s4kit.config import load_config
from s4kit.engine import train

from conftest import tiny_overrides

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _need_cuda():
    if not torch.cuda.is_available():
        pytest.fail("marked gpu but CUDA is not available: run these on the device machine")


@pytest.mark.parametrize("method", ["supervised", "meanteacher", "reco", "css", "prcl", "rc2l", "allspark",
                                    "supervised_maskformer", "supervised_segformer"])
def test_training_on_cuda_with_bf16_autocast_and_channels_last(method, digits_root, tmp_path):
    overrides = [o for o in tiny_overrides(digits_root, tmp_path / "run") if o != "device=cpu"] + ["device=cuda"]
    metrics = train(load_config(f"digits/{method}", overrides), progress=False)
    assert metrics["device"] == "cuda" and 0 <= metrics["miou"] <= 100
    assert metrics["peak_memory_mb"] > 0


def test_autocast_runs_the_network_in_bf16(digits_root, tmp_path):
    from s4kit.methods import build_method

    cfg = load_config("digits/reco", tiny_overrides(digits_root, tmp_path))
    method = build_method(cfg).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = method.student(x)
    assert out["logits"].dtype == torch.bfloat16
    # the evaluation path returns float32 logits at the input resolution
    assert method.predict(x).dtype == torch.float32
