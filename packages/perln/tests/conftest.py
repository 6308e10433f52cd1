import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    yield
    torch.set_num_threads(threads)


def pytest_configure(config):
    # Lightning 2.6 trips over its own deprecation with torch 2.14 on import; harmless.
    config.addinivalue_line("filterwarnings", "ignore:.*treespec.*")
