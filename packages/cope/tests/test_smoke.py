"""End to end with the real offline model (SmolLM2-135M, both roles) on a few problems."""

import json

from cope.cli import main


def test_smoke_reproduce_with_the_real_model(tmp_path, capsys):
    rc = main(["reproduce", "--scale", "smoke", "--out", str(tmp_path), "--run-name", "s",
               "--accelerator", "cpu"])
    assert rc == 0
    run = tmp_path / "cope" / "s"
    report = (run / "report.md").read_text()
    assert str(run / "report.md") in capsys.readouterr().out
    assert "## Claims" in report
    assert any(f"**{v}**" in report for v in ("holds", "does not hold", "inconclusive"))
    assert (run / "figures" / "accuracy_vs_cost.png").stat().st_size > 1000
    records = [json.loads(line) for line in (run / "problems.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        cope = r["methods"]["cope"]
        assert cope["stages"][0]["outputs"], "the small model generated nothing"
        assert cope["stages"][0]["plans"]
        assert r["methods"]["large_only"]["cost_usd"] > 0  # the loopback 'large' is priced
        assert r["methods"]["small_only"]["cost_usd"] == 0
    roles = json.loads((run / "roles.json").read_text())
    assert "127.0.0.1" in roles["large"]
    # resuming a finished run adds nothing and rewrites the report
    assert main(["reproduce", "--scale", "smoke", "--out", str(tmp_path), "--run-name", "s",
                 "--resume", "--accelerator", "cpu"]) == 0
    assert len((run / "problems.jsonl").read_text().splitlines()) == 3


def test_bad_options_give_one_line_errors(tmp_path, capsys):
    assert main(["reproduce", "--scale", "huge", "--out", str(tmp_path)]) == 2
    assert "--scale must be one of" in capsys.readouterr().err
    assert main(["reproduce", "--scale", "smoke", "--set", "data.bogus=1",
                 "--out", str(tmp_path)]) == 2
    assert "unknown key" in capsys.readouterr().err
    assert main(["reproduce", "--scale", "smoke", "--set", "data.source=jsonl",
                 "--set", "data.path=/nonexistent.jsonl", "--out", str(tmp_path)]) == 2
    assert "/nonexistent.jsonl" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not a cope run directory" in capsys.readouterr().err


def test_a_converted_gguf_names_its_architecture(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    from cope.backends import _save_converted

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2,
                                         num_key_value_heads=2))
    model.config.architectures = None  # as a GGUF load leaves it

    class Tokenizer:
        def save_pretrained(self, folder):
            pass

    _save_converted(Tokenizer(), model, tmp_path / "converted")
    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (tmp_path / "converted" / "model.safetensors").stat().st_size > 0
