import pytest
import torch

from reprokit.fabric import make_fabric, save_atomic
from reprokit.runtime import setup


def test_fabric_follows_the_runtime_and_checkpoints_atomically(tmp_path):
    fabric = make_fabric(setup("cpu", "32-true", threads=1))
    assert fabric.device == torch.device("cpu") and fabric.world_size == 1
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    model, opt = fabric.setup(net, opt)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    path = tmp_path / "ckpt" / "last.ckpt"         # the folder does not exist yet
    save_atomic(fabric, path, {"model": model, "optimizer": opt, "step": 7})
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["last.ckpt"]

    # a second save replaces the file whole; a fresh model and optimizer load it back
    save_atomic(fabric, path, {"model": model, "optimizer": opt, "step": 8})
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    state = {"model": fresh, "optimizer": fresh_opt, "step": 0}
    fabric.load(path, state)
    assert state["step"] == 8
    assert torch.equal(fresh.weight, net.weight) and torch.equal(fresh.bias, net.bias)
    momentum = fresh_opt.state[fresh.weight]["momentum_buffer"]
    assert torch.equal(momentum, opt.optimizer.state[net.weight]["momentum_buffer"])


def test_step_forward_calls_the_module_itself_only_where_the_wrapper_adds_nothing():
    from lightning.fabric import Fabric

    from reprokit.fabric import step_forward

    fabric = make_fabric(setup("cpu", "32-true", threads=1))
    net = torch.nn.Linear(3, 2)
    model = fabric.setup_module(net)
    forward = step_forward(fabric, model)
    assert forward is not model
    x = torch.randn(4, 3)
    assert torch.equal(forward(x), net(x))
    out = forward(x).sum()
    fabric.backward(out)                 # gradients reach the module's own parameters
    assert net.weight.grad is not None
    # bf16-true casts float32 inputs to the module's bf16: only the wrapper does that
    half = Fabric(accelerator="cpu", devices=1, precision="bf16-true")
    half.launch()
    wrapped = half.setup_module(torch.nn.Linear(3, 2))
    assert step_forward(half, wrapped) is wrapped
    assert torch.isfinite(wrapped(x)).all()
    with pytest.raises(RuntimeError):   # what calling the module itself would do
        wrapped.module(x)
