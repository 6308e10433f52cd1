"""--config FILE merged over the scale, --set stepping into list entries."""

import pytest

from cope.config import load
from reprokit.errors import ConfigError


def test_set_into_a_list_entry_by_index_and_by_name():
    cfg = load("smoke", ["models.1.base_url=http://127.0.0.1:8001/v1"])
    roster = cfg.roster()
    assert roster["large"].base_url == "http://127.0.0.1:8001/v1"
    assert roster["large"].price_in == 2.5 and roster["small"].backend == "hf"  # kept
    by_name = load("smoke", ["models.large.model=my-model", "models.small.max_batch=4"])
    assert by_name.roster()["large"].model == "my-model"
    assert by_name.roster()["small"].max_batch == 4


def test_bad_list_keys_name_the_override():
    with pytest.raises(ConfigError, match="models.5.*out of range"):
        load("smoke", ["models.5.base_url=x"])
    with pytest.raises(ConfigError, match="no entry 'huge'"):
        load("smoke", ["models.huge.base_url=x"])


def test_config_file_merges_over_the_scale(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("budget_usd: 0.001\ndata:\n  size: 2\nlimits:\n  answer_max_tokens: 7\n")
    cfg = load("smoke", ["data.seed=9"], path)
    assert cfg.budget_usd == 0.001 and cfg.data.size == 2 and cfg.data.seed == 9
    assert cfg.data.name == "chain_sum"  # the rest of the section is kept
    assert cfg.limits.answer_max_tokens == 7 and len(cfg.models) == 2
    with pytest.raises(ConfigError, match="nope.yaml"):
        load("smoke", [], tmp_path / "nope.yaml")
