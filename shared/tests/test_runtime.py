import pytest
import torch

from reprokit.errors import ConfigError
from reprokit.runtime import (
    autocast_dtype,
    available_cpus,
    capture_environment,
    seed_everything,
    select_accelerator,
    select_precision,
    setup,
)


def test_cpu_is_chosen_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert select_accelerator("auto") in {"cpu", "mps"}
    with pytest.raises(ConfigError, match="no CUDA device"):
        select_accelerator("cuda")


def test_precision_policy():
    assert select_precision("cpu") == "32-true"
    assert select_precision("mps") == "32-true"
    assert select_precision("cpu", "bf16-mixed") == "bf16-mixed"
    assert autocast_dtype("bf16-mixed") == torch.bfloat16
    assert autocast_dtype("16-mixed") == torch.float16
    assert autocast_dtype("32-true") is None
    with pytest.raises(ConfigError, match="precision must be one of"):
        select_precision("cpu", "fp8")
    with pytest.raises(ConfigError, match="accelerator must be one of"):
        select_accelerator("tpu")


def test_seeding_gives_identical_tensors():
    seed_everything(123)
    a = torch.randn(5), torch.rand(3)
    seed_everything(123)
    b = torch.randn(5), torch.rand(3)
    seed_everything(124)
    c = torch.randn(5)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c)


def test_setup_sets_threads_and_reports_choice():
    before = torch.get_num_threads()
    try:
        rt = setup(accelerator="cpu", threads=1, seed=0)
        assert torch.get_num_threads() == 1
        assert rt.accelerator == "cpu" and rt.precision == "32-true"
        assert rt.device == torch.device("cpu")
        with rt.autocast():
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    finally:
        torch.set_num_threads(before)
    assert 1 <= available_cpus()


def test_environment_capture_names_versions():
    env = capture_environment()
    assert env["packages"]["torch"] == torch.__version__.split("+")[0]
    assert env["cpus_available"] >= 1
    assert "git_commit" in env and "python" in env
