"""Dolly pyfunc: params and signature, pinned requirements, and a logged model that stops at
### End (a hand-wired model whose greedy output is "hello world ### End")."""

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from dolly_spark.serve import pyfunc_model
from dolly_spark.serve.generate import GenerationConfig, special_token_id
from dolly_spark.text.prompts import END_KEY, format_prompt
from dolly_spark.text.tokenizer import load_hf_tokenizer
from dolly_spark.tracking import models, runs
from tests.shared_data import TOKENIZER_DIR


def save_scripted_model(path: Path) -> Path:
    """A GPT-NeoX whose greedy continuation of any Dolly prompt is " hello", " world", ### End.

    Attention and MLP outputs are zeroed, so the last hidden state is the current token's
    embedding; one-hot embeddings and a matching output matrix then form a next-token table.
    """
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    tok = load_hf_tokenizer(str(TOKENIZER_DIR))
    last = tok.encode(format_prompt("x"), add_special_tokens=False)[-1]
    assert last == tok.encode(format_prompt("x", "ctx"), add_special_tokens=False)[-1]
    hello = tok.encode(" hello", add_special_tokens=False)[0]
    world = tok.encode(" world", add_special_tokens=False)[0]
    end = special_token_id(tok, END_KEY)
    cfg = GPTNeoXConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    model = GPTNeoXForCausalLM(cfg)
    with torch.no_grad():
        for layer in model.gpt_neox.layers:
            for lin in (layer.attention.dense, layer.mlp.dense_4h_to_h):
                lin.weight.zero_()
                lin.bias.zero_()
        model.gpt_neox.final_layer_norm.weight.fill_(1.0)
        model.gpt_neox.final_layer_norm.bias.zero_()
        emb, out = model.gpt_neox.embed_in.weight, model.get_output_embeddings().weight
        emb.zero_()
        out.zero_()
        for dim, (cur, nxt) in enumerate([(last, hello), (hello, world), (world, end)]):
            emb[cur, dim] = 1.0
            out[nxt, dim] = 10.0
    model.save_pretrained(str(path), safe_serialization=True)
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(autouse=True)
def no_env_overrides(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "DATABRICKS_RUNTIME_VERSION", runs.PARENT_RUN_ENV):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def scripted_model_dir(tmp_path_factory):
    return save_scripted_model(tmp_path_factory.mktemp("scripted") / "model")


def test_generation_params_default_to_dolly_and_override():
    assert pyfunc_model.generation_config(None) == GenerationConfig()
    cfg = pyfunc_model.generation_config({"max_new_tokens": 7, "greedy": True, "seed": -1})
    assert (cfg.max_new_tokens, cfg.greedy, cfg.seed, cfg.top_p, cfg.top_k) == (7, True, None, 0.92, 0)
    with pytest.raises(ValueError, match="unknown generation params.*temprature"):
        pyfunc_model.generation_config({"temprature": 0.5})
    with pytest.raises(ValueError, match="max_new_tokens"):
        pyfunc_model.generation_config({"max_new_tokens": 0})


def test_signature_has_inputs_outputs_and_dolly_param_defaults():
    sig = pyfunc_model.model_signature()
    assert sig.inputs.input_names() == ["instruction", "context"]
    assert sig.outputs.input_names() == list(pyfunc_model.OUTPUT_COLUMNS)
    defaults = {p.name: p.default for p in sig.params.params}
    assert defaults == {
        "max_new_tokens": 256,
        "top_p": 0.92,
        "top_k": 0,
        "temperature": 1.0,
        "greedy": False,
        "batch_size": 16,
        "seed": -1,
    }


def test_requirements_are_pinned_to_installed_release_versions():
    import importlib.metadata

    reqs = dict(r.split("==") for r in models.pinned_requirements())
    assert {"mlflow", "torch", "transformers", "tokenizers", "safetensors", "pandas", "numpy"} <= set(reqs)
    assert reqs["torch"] == importlib.metadata.version("torch").split("+")[0]
    assert all("+" not in v for v in reqs.values())


def test_model_dir_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        models.log_dolly_model(tmp_path)


def test_predict_in_process_stops_at_end_key(scripted_model_dir):
    model = pyfunc_model.DollyInstructionModel()
    model.load_context(SimpleNamespace(artifacts={"hf_model": str(scripted_model_dir)}))
    out = model.predict(
        None,
        pd.DataFrame({"instruction": ["Say something", "", "Again"], "context": [None, None, "some context"]}),
        params={"greedy": True, "max_new_tokens": 10},
    )
    assert list(out.columns) == list(pyfunc_model.OUTPUT_COLUMNS)
    assert out["response"].tolist() == ["hello world", None, "hello world"]
    assert out["finish_reason"].tolist() == ["end_key", None, "end_key"]
    assert out["completion_tokens"].tolist() == [3, 0, 3]
    assert out["error"].tolist() == [None, "empty_instruction", None]
    # Too few tokens to reach ### End: the row runs to length instead.
    short = model.predict(None, pd.DataFrame({"instruction": ["x"]}), params={"greedy": True, "max_new_tokens": 2})
    assert short.loc[0, "response"] == "hello world" and short.loc[0, "finish_reason"] == "length"
    with pytest.raises(ValueError, match="instruction"):
        model.predict(None, pd.DataFrame({"prompt": ["x"]}))


def test_logged_model_round_trip_stops_at_end_key(scripted_model_dir, tmp_path):
    import mlflow

    with runs.job_run("train", {"output_root": str(tmp_path)}, output_root=tmp_path, engine="test"):
        info = models.log_dolly_model(scripted_model_dir, lineage={"dolly.gold_version": 4})
    assert info.signature.inputs is not None and info.signature.outputs is not None
    assert info.metadata["stop_token"] == END_KEY and info.metadata["dolly.gold_version"] == "4"
    # Artifacts stay under the configured root.
    assert len(list((tmp_path / "mlartifacts").rglob("MLmodel"))) == 1
    assert len(list((tmp_path / "mlartifacts").rglob("model.safetensors"))) == 1
    deps = Path(mlflow.pyfunc.get_model_dependencies(info.model_uri)).read_text().split()
    assert "mlflow==" + __import__("mlflow").__version__ in deps
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    out = loaded.predict(pd.DataFrame({"instruction": ["What is Delta?", "And Spark?"]}), params={"greedy": True})
    assert out["response"].tolist() == ["hello world", "hello world"]
    assert not out["response"].str.contains(END_KEY, regex=False).any()
    assert out["finish_reason"].tolist() == ["end_key", "end_key"]


def test_logging_copies_the_directory_without_loading_the_model(scripted_model_dir, tmp_path, monkeypatch):
    import dolly_spark.serve.generate as generate

    real, loads = generate.load_for_generation, []

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "load_for_generation", counting_load)
    with runs.job_run("train", {}, output_root=tmp_path, engine="test"):
        models.log_dolly_model(scripted_model_dir)
        assert loads == []  # large checkpoints: weights copied, never loaded at log time
        models.log_dolly_model(scripted_model_dir, name="validated", validate_example=True)
    assert len(loads) == 1  # opt-in: the input example was run through a loaded copy
