"""`cope serve`: the cascade behind the OpenAI-compatible endpoint, with scripted models."""

import httpx
from cope_helpers import cope_method, large_responder, small_responder

from cope.backends import OpenAIBackend, ScriptedBackend
from cope.config import CopeConfig
from cope.server import ServerThread, create_app
from cope.service import cope_responder


def test_cope_answers_as_one_chat_model():
    cfg = CopeConfig(models=[{"name": "small", "backend": "hf"},
                             {"name": "large", "backend": "openai", "price_in": 2.5,
                              "price_out": 10.0}])
    backends = {"small": ScriptedBackend(small_responder),
                "large": ScriptedBackend(large_responder)}
    app = create_app(cope_responder(cfg, cope_method(), backends), "cope-cope")
    with ServerThread(app) as url:
        gen = OpenAIBackend(url, "cope-cope").generate(["MEDIUM question"])[0]
        assert gen.error is None and gen.texts == ["Answer: 2"]
        raw = httpx.post(f"{url}/chat/completions", timeout=10, json={
            "model": "cope-cope", "messages": [{"role": "user", "content": "HARD question"}]})
    body = raw.json()
    assert body["choices"][0]["message"]["content"] == "Answer: 3"
    assert body["cope"]["settled_stage"] == 3 and body["cope"]["cost_usd"] > 0
    assert body["usage"]["prompt_tokens"] > 0
    assert [s["stage"] for s in body["cope"]["stages"]] == [1, 2, 3]
