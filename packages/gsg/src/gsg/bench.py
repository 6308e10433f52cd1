"""Throughput of the Lightning training step against a minimal plain-PyTorch SimSiam step.

Both sides run the same backbone, heads, batch, batched tensor augmentation, precision
(bf16 autocast on CUDA) and memory format (channels_last for ResNets on CUDA); the
Lightning side is timed inside ``trainer.fit`` (its loop, hooks and scheduler included)
between batch-end timestamps after a warm-up, so start-up is excluded on both sides.
Images come from memory (the digits, or random 32-px images for CIFAR configs): this
measures the step, not the data loader.
"""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from gsg.config import GSGConfig
from gsg.data import digits_data, digits_views
from gsg.model import SiameseNet
from gsg.module import SSLModule
from reprokit.data.augment import TensorAugment
from reprokit.data.images import TensorBatches
from reprokit.progress import quiet_lightning
from reprokit.runtime import setup


class _Stamps(L.Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def _images(cfg: GSGConfig, n: int):
    if cfg.data.name == "digits":
        return digits_data(cfg.data).train.images, digits_views(cfg.data)
    size = cfg.data.image_size
    return torch.rand(n, 3, size, size), TensorAugment(flip=True, noise_std=0.0, erase_prob=0.0)


def _rate(times: list[float], warmup: int, batch: int) -> float:
    t = times[warmup:]
    return (len(t) - 1) * batch / (t[-1] - t[0])


def run_bench(cfg: GSGConfig, method: str = "simsiam", steps: int = 20,
              accelerator: str = "auto") -> dict:
    quiet_lightning()
    runtime = setup(accelerator, cfg.train.precision, threads=cfg.train.threads or None, seed=0)
    device, batch = runtime.device, cfg.train.batch_size
    warmup = max(2, steps // 5)
    total = steps + warmup + 1
    images, augment = _images(cfg, max(total * batch // 4, 2 * batch))
    images = images.to(device)
    in_shape = tuple(images.shape[1:])

    # ---- Lightning module inside trainer.fit
    module = SSLModule(cfg, method, True, in_shape, total, 1, augment, monitor=None)
    stamps = _Stamps()
    loader = DataLoader(TensorBatches(images, batch, 0), batch_size=None)
    trainer = L.Trainer(max_steps=total, max_epochs=-1, accelerator=runtime.accelerator,
                        devices=1, precision=runtime.precision, logger=False,
                        enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=False, num_sanity_val_steps=0, callbacks=[stamps])
    trainer.fit(module, loader)
    module_rate = _rate(stamps.times, warmup, batch)

    # ---- plain PyTorch SimSiam step on the same network
    torch.manual_seed(0)
    net = SiameseNet(cfg.model, "simsiam", True, in_shape).to(device)
    channels_last = module.channels_last
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.train.base_lr * batch / 256, momentum=0.9,
                          weight_decay=cfg.train.weight_decay)
    times = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for _ in range(total):
        x = images[torch.randint(0, images.shape[0], (batch,), generator=gen).to(device)]
        v = torch.cat([augment(x), augment(x)])
        if channels_last:
            v = v.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            if cfg.model.bn_views == "per_view":   # one pass per view, as the module does
                outs = [net(u) for u in v.split(batch)]
                z, p = torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])
            else:
                z, p = (out.view(2, batch, -1) for out in net(v))
        z, p = z.float(), p.float()
        loss = -0.5 * (F.cosine_similarity(p[0], z[1].detach()).mean()
                       + F.cosine_similarity(p[1], z[0].detach()).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    plain_rate = _rate(times, warmup, batch)
    return {"method": method, "backbone": cfg.model.backbone, "batch_size": batch,
            "device": runtime.device_name, "precision": runtime.precision,
            "channels_last": channels_last, "threads": runtime.threads, "steps": steps,
            "images_per_second": round(module_rate, 1),
            "plain_pytorch_simsiam_images_per_second": round(plain_rate, 1),
            "ratio": round(module_rate / plain_rate, 3),
            "note": "GSG makes 4 views per image (2 for the baselines): expect ~0.5 for *_gsg"}


__all__ = ["run_bench"]
