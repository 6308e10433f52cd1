"""The vllm backend's requests, checked with vLLM's own classes on CPU (no engine, no GPU).

vLLM imports on a CPU machine, and its ``EngineArgs(...).create_model_config()`` reads a model
folder's config the way the engine does at start-up, so what the backend would hand to
``vllm.LLM`` is checked here; generating needs a GPU (``scripts/gpu-check.sh``, part d).
Skipped where the optional extra is not installed (``uv sync --extra vllm``, +3.4 GB).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vllm is not installed (optional extra cope[vllm]): the "
                    "vllm backend's request building is only checked where it is")

from vllm import SamplingParams  # noqa: E402
from vllm.engine.arg_utils import EngineArgs  # noqa: E402
from vllm.outputs import CompletionOutput, RequestOutput  # noqa: E402
from vllm.sampling_params import SamplingType  # noqa: E402

from cope import config as cope_config  # noqa: E402
from cope.backends import (  # noqa: E402
    SMOLLM2_GGUF,
    _converted_dir,
    resolve_model_path,
    vllm_engine_args,
    vllm_generations,
    vllm_sampling_kwargs,
)
from reprokit.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """COPE_CACHE_DIR with SmolLM2's transformers conversion (reused when the caller's
    COPE_CACHE_DIR already holds it: converting the GGUF costs tens of CPU-seconds)."""
    root = os.environ.get("COPE_CACHE_DIR") or str(tmp_path_factory.mktemp("cope-cache"))
    old = os.environ.get("COPE_CACHE_DIR")
    os.environ["COPE_CACHE_DIR"] = root
    yield _converted_dir(*resolve_model_path(SMOLLM2_GGUF))
    if old is None:
        os.environ.pop("COPE_CACHE_DIR", None)
    else:
        os.environ["COPE_CACHE_DIR"] = old


def test_engine_args_serve_the_converted_folder_as_a_causal_lm(converted):
    args = vllm_engine_args(SMOLLM2_GGUF, max_model_len=512, gpu_memory_utilization=0.5,
                            seed=0)
    assert args["model"] == args["tokenizer"] == str(converted)
    assert (Path(args["model"]) / "model.safetensors").is_file()   # not the .gguf
    model_config = EngineArgs(**args).create_model_config()
    # without the override vLLM would take config.json's missing architectures as LlamaModel,
    # its embedding ("pooling") model
    assert model_config.architectures == ["LlamaForCausalLM"]
    assert model_config.runner_type == "generate"
    assert model_config.max_model_len == 512
    assert model_config.get_vocab_size() == 49152
    assert model_config.seed == 0


def test_a_config_without_architectures_is_named_a_causal_lm(tmp_path):
    # conversions written before _save_converted recorded `architectures` lack it
    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": 256, "max_position_embeddings": 512, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = vllm_engine_args(str(tmp_path), max_model_len=128)
    assert args["hf_overrides"] == {"architectures": ["LlamaForCausalLM"]}
    assert EngineArgs(**args).create_model_config().architectures == ["LlamaForCausalLM"]
    # ... and one that names its class keeps it
    (tmp_path / "config.json").write_text(json.dumps({**config,
                                                      "architectures": ["LlamaForCausalLM"]}))
    assert "hf_overrides" not in vllm_engine_args(str(tmp_path))


def test_the_gguf_file_itself_is_not_a_vllm_model():
    # why the backend converts: vLLM 0.33 has no GGUF loader
    folder, gguf = resolve_model_path(SMOLLM2_GGUF)
    with pytest.raises(Exception):  # noqa: B017 (vLLM raises its own error types)
        EngineArgs(model=str(Path(folder) / gguf)).create_model_config()


def test_unknown_engine_option_is_refused_by_name():
    with pytest.raises(ConfigError, match="max_model_length"):
        vllm_engine_args("Qwen/Qwen2.5-1.5B-Instruct", max_model_length=4096)


def test_paper_config_engine_kwargs_are_vllm_engine_args(converted):
    cfg = cope_config.load("paper")
    (small,) = [m for m in cfg.roster().values() if m.backend == "vllm"]
    hub = vllm_engine_args(small.model, **small.engine_kwargs)
    assert hub == {"model": small.model, "tokenizer": small.model, **small.engine_kwargs}
    # the paper's engine options, validated by vLLM on a local model (the paper's model is a
    # hub id, which EngineArgs would look up online)
    args = vllm_engine_args(SMOLLM2_GGUF, **small.engine_kwargs)
    engine = EngineArgs(**args)
    for key, value in small.engine_kwargs.items():
        assert getattr(engine, key) == value
    assert engine.create_model_config().max_model_len == small.engine_kwargs["max_model_len"]


def test_sampling_params_match_the_hf_backend():
    params = SamplingParams(**vllm_sampling_kwargs(4, 0.7, 64, ["\n\n", ""], 3))
    assert params.sampling_type == SamplingType.RANDOM_SEED
    assert (params.n, params.temperature, params.max_tokens, params.seed) == (4, 0.7, 64, 3)
    assert (params.top_p, params.top_k) == (1.0, 0)    # full distribution, as hf samples
    assert params.stop == ["\n\n"] and not params.include_stop_str_in_output


def test_greedy_requests_decode_once_and_are_copied():
    # vLLM refuses several greedy samples ...
    with pytest.raises(Exception, match="greedy"):
        SamplingParams(n=4, temperature=0.0)
    # ... so a greedy request asks for one and copies it n times
    params = SamplingParams(**vllm_sampling_kwargs(4, 0.0, 16, None, None))
    assert params.sampling_type == SamplingType.GREEDY and params.n == 1 and params.stop == []
    greedy = RequestOutput("0", "p", [1, 2, 3], None,
                           [CompletionOutput(0, "42", [7, 8], None, None)], finished=True)
    sampled = RequestOutput("1", "q", [1, 2], None,
                            [CompletionOutput(i, t, ids, None, None)
                             for i, (t, ids) in enumerate([("a", [5]), ("bc", [5, 6, 2])])],
                            finished=True)
    (first,) = vllm_generations([greedy], n=4)
    assert first.texts == ["42"] * 4 and first.completion_tokens == [2] * 4
    assert first.prompt_tokens == 3     # a prompt counts once per request
    (second,) = vllm_generations([sampled], n=2)
    assert second.texts == ["a", "bc"] and second.completion_tokens == [1, 3]
    assert second.prompt_tokens == 2
