"""Numbers that describe the data before any training: the floors a representation must beat."""

from __future__ import annotations

import torch

from gsg.config import GSGConfig
from gsg.data import Monitor, build_training_data, raw_pixel_floors
from gsg.model import SiameseNet
from reprokit.runtime import seed_everything


def describe_setting(cfg: GSGConfig) -> dict:
    """kNN and linear probe on raw pixels and on a randomly initialised encoder (digits only)."""
    if cfg.data.name != "digits":
        return {"raw_pixel_knn": None, "raw_pixel_linear": None, "random_init_knn": None,
                "random_init_linear": None}
    seed_everything(0)
    data = build_training_data(cfg.data, cfg.train.batch_size, 2, 0)
    net = SiameseNet(cfg.model, "simsiam", True, data.in_shape)
    with torch.no_grad():
        random_init = Monitor(data, cfg.eval)(net, "cpu", linear=True)
    raw = raw_pixel_floors(cfg.data, cfg.eval)
    return {"raw_pixel_knn": raw["knn"], "raw_pixel_linear": raw["linear"],
            "random_init_knn": random_init["knn"], "random_init_linear": random_init["linear"]}
