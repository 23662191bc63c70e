"""Settings (longrag/config.py): typed choices and ranges, one clear error for a bad environment
value, and each technique's config built from the default settings equal to its own defaults."""

from __future__ import annotations

import os
from dataclasses import fields, replace
from typing import get_args

import pytest
from pydantic import ValidationError

from longrag.config import TECHNIQUES, Settings, get_settings
from longrag.errors import ConfigError, LongragError


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the test's data and model directories from the environment: Settings() = the defaults."""
    for name in list(os.environ):
        if name.startswith("LONGRAG_") and name not in ("LONGRAG_DATA_DIR", "LONGRAG_MODEL_CACHE"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()


def choices(field: str) -> set[str]:
    """The choices of a setting by its environment name without the prefix ("rapid_drafter_kind"
    is ``Settings.rapid.drafter_kind``)."""
    group, _, name = field.partition("_")
    model = TECHNIQUES.get(group)
    info = model.model_fields[name] if model is not None and name in model.model_fields else Settings.model_fields[field]
    return set(get_args(info.annotation))


# -- typed choices: exactly what the code that reads each setting accepts ----------------------


def test_choice_settings_match_the_code_that_reads_them():
    from longrag.generation import refrag
    from longrag.generation.precision import WEIGHTS
    from longrag.generation.sentencekv import SentenceKVConfig
    from longrag.retrieval import situated
    from longrag.retrieval.embed import BACKENDS
    from longrag.services.corpus import RETRIEVERS
    from longrag.services.modes.rapid import DRAFTERS

    assert choices("embed_backend") == {"auto", *BACKENDS}
    assert choices("device") == {"auto", "cpu", "cuda"}
    assert choices("retriever") == set(RETRIEVERS)
    assert choices("context_unit") == {"window", "chunk"}
    assert choices("situated_strategy") == set(situated.STRATEGIES)
    assert choices("situated_context") == {"pool", "encode"}
    for strategy in choices("situated_strategy"):
        for context in choices("situated_context"):
            situated.SituatedConfig(strategy=strategy, context=context)  # each accepted
    assert choices("sentencekv_retention") == {"sentence", "token"}
    for retention in choices("sentencekv_retention"):
        SentenceKVConfig(retention=retention)
    assert choices("refrag_policy") == set(refrag.POLICIES)
    assert choices("rapid_drafter_weights") == set(WEIGHTS)
    assert choices("rapid_drafter_kind") == set(DRAFTERS)
    assert choices("rapid_draft_length") == {"cost", "fixed"}


@pytest.mark.parametrize("bad", [
    {"retriever": "nope"}, {"embed_backend": "tensorrt"}, {"device": "tpu"}, {"situated_strategy": "concat"},
    {"situated_context": "both"}, {"sentencekv_retention": "all"}, {"refrag_policy": "random"},
    {"rapid_drafter_weights": "int2"}, {"rapid_drafter_kind": "oracle"}, {"rapid_draft_length": "forever"},
    {"top_k": 0}, {"chunk_tokens": 0}, {"max_new_tokens": 0}, {"torch_threads": -1}, {"link_keep": -1},
    {"situated_window": -1}, {"situated_beta": -0.5}, {"situated_late_max_tokens": 64},
    {"sentencekv_budget": 0}, {"sentencekv_ratio": 0.5}, {"sentencekv_recent": 0},
    {"refrag_k": 0}, {"refrag_p": 1.5}, {"rapid_gamma": 0}, {"rapid_eta": -1.0}, {"rapid_eta": float("inf")},
    {"rapid_tail": 1.5}, {"rapid_chunk_tokens": 0}, {"rapid_ngram_min_agreement": 1.5}, {"rapid_verify_slope": -0.1},
    {"rapid_min_ngram": 4, "rapid_max_ngram": 3}, {"rapid_min_ngram": 0}, {"query_timeout_s": 0},
    {"local_threads": 0},
])
def test_bad_values_fail_at_settings(clean_env, bad):
    with pytest.raises(ValidationError):
        Settings(**bad)


def test_the_edges_of_each_range_are_accepted(clean_env):
    s = Settings(rapid_min_ngram=3, rapid_max_ngram=3, torch_threads=0, link_hop=0, refrag_p=1.0, rapid_tail=0.0,
                 sentencekv_sink=0, situated_late_max_tokens=130)
    assert s.rapid.min_ngram == s.rapid.max_ngram == 3 and s.situated.late_max_tokens == 130


def test_a_bad_environment_value_is_one_clear_config_error(clean_env, monkeypatch):
    monkeypatch.setenv("LONGRAG_RETRIEVER", "nope")
    with pytest.raises(ConfigError) as err:
        get_settings()
    assert isinstance(err.value, LongragError)
    msg = str(err.value)
    assert "\n" not in msg and "LONGRAG_RETRIEVER" in msg and "'nope'" in msg and "'hybrid'" in msg
    monkeypatch.delenv("LONGRAG_RETRIEVER")
    monkeypatch.setenv("LONGRAG_RAPID_MIN_NGRAM", "4")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match=r"LONGRAG_RAPID_MIN_NGRAM \(4\) must be <= LONGRAG_RAPID_MAX_NGRAM \(3\)"):
        get_settings()
    get_settings.cache_clear()


def test_cli_reports_a_bad_setting_in_one_line(clean_env, monkeypatch):
    from typer.testing import CliRunner

    from longrag.cli import app

    monkeypatch.setenv("LONGRAG_RETRIEVER", "nope")
    res = CliRunner().invoke(app, ["docs"])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    [line] = [ln for ln in res.output.splitlines() if ln.strip()]
    assert line.startswith("error: invalid settings: LONGRAG_RETRIEVER")


def test_cfic_settings_are_typed_too(clean_env, monkeypatch):
    from longrag.config import CficSettings
    from longrag.errors import InvalidRequestError
    from longrag.services.modes.cfic import _settings
    from longrag.services.qa import Question

    with pytest.raises(ValidationError):
        CficSettings(method="guess")
    # a question's options are checked the same way, as a clear request error
    with pytest.raises(InvalidRequestError, match="method"):
        _settings(CficSettings(), Question("q", mode="cfic", options={"method": "guess"}))
    with pytest.raises(InvalidRequestError, match="top_k"):
        _settings(CficSettings(), Question("q", mode="cfic", options={"top_k": 0}))
    assert _settings(CficSettings(), Question("q", mode="cfic", options={"top_k": 5})).top_k == 5
    # nested under Settings, read from the same LONGRAG_CFIC_<NAME> variables
    monkeypatch.setenv("LONGRAG_CFIC_MAX_SPAN_WORDS", "100")
    assert get_settings().cfic.max_span_words == 100
    get_settings.cache_clear()
    monkeypatch.setenv("LONGRAG_CFIC_TOP_K", "0")
    with pytest.raises(ConfigError, match="LONGRAG_CFIC_TOP_K"):
        get_settings()
    get_settings.cache_clear()


def test_the_adaptive_drafter_setting_is_gone():
    assert "adaptive" not in TECHNIQUES["rapid"].model_fields and "rapid_adaptive" not in Settings.model_fields


def test_each_technique_is_one_nested_model_read_from_its_flat_environment_names(clean_env, monkeypatch):
    monkeypatch.setenv("LONGRAG_RAPID_DRAFTER_KIND", "ngram")
    monkeypatch.setenv("LONGRAG_SENTENCEKV_BUDGET", "512")
    monkeypatch.setenv("LONGRAG_SITUATED_LATE_MAX_TOKENS", "300")
    monkeypatch.setenv("LONGRAG_REFRAG_AT_INGEST", "false")
    s = get_settings()
    assert (s.rapid.drafter_kind, s.sentencekv.budget, s.situated.late_max_tokens, s.refrag.at_ingest) == (
        "ngram", 512, 300, False)
    assert s.rapid.gamma == TECHNIQUES["rapid"]().gamma  # the rest keeps its defaults
    # keyword arguments take the same flat names and win over the environment, field by field
    s = Settings(rapid_gamma=4)
    assert (s.rapid.gamma, s.rapid.drafter_kind) == (4, "ngram")
    monkeypatch.setenv("LONGRAG_RAPID_GAMMA", "0")
    get_settings.cache_clear()
    with pytest.raises(ConfigError, match="LONGRAG_RAPID_GAMMA"):
        get_settings()
    get_settings.cache_clear()


# -- each technique's config from the default settings = the config class's defaults ------------


def test_rapid_config_from_default_settings_is_rapid_configs_defaults(clean_env):
    from longrag.generation.rapid import DraftLength, LMDrafter, NgramDrafter, RapidConfig
    from longrag.services.modes.rapid import rapid_config
    from longrag.services.qa import Question

    s = Settings()
    assert rapid_config(s, Question("q", mode="rapid")) == RapidConfig()
    # the drafters' own defaults where the mode passes a setting
    assert NgramDrafter([1, 2, 3]).max_ngram == s.rapid.max_ngram and NgramDrafter([1, 2, 3]).min_ngram == s.rapid.min_ngram
    assert LMDrafter(object(), [1]).min_confidence == s.rapid.min_confidence
    assert DraftLength().prior_slope == DraftLength.for_llm().prior_slope == s.rapid.verify_slope


def test_sentencekv_config_from_default_settings(clean_env):
    """SentenceKVConfig's defaults and the default settings agree (whole-sentence retention; the
    paper's token retention is what bench/sentencekv.py measures as ``sentencekv``)."""
    from longrag.generation.sentencekv import SentenceKVConfig
    from longrag.services.kvcache import skv_config

    assert skv_config(Settings()) == SentenceKVConfig()
    assert SentenceKVConfig().retention == Settings().sentencekv.retention == "sentence"


def test_situated_config_from_default_settings_is_situated_configs_defaults(clean_env):
    from longrag.retrieval.situated import SituatedConfig, config_from_settings

    assert config_from_settings(Settings()) == SituatedConfig()


def test_cfic_options_from_default_settings_are_cfic_options_defaults(clean_env):
    from longrag.config import CficSettings
    from longrag.retrieval.cfic import CficOptions
    from longrag.services.modes.cfic import _options

    assert _options(CficSettings()) == CficOptions()
    shared = {f.name for f in fields(CficOptions)} & set(CficSettings.model_fields)
    assert shared == {f.name for f in fields(CficOptions)} - {"score_tokens"}  # the one without a setting


def test_window_config_defaults_are_the_settings(clean_env):
    from longrag.retrieval.windows import WindowConfig

    s, w = Settings(), WindowConfig()
    assert (w.top, w.radius, w.rrf_k) == (s.window_top, s.window_radius, s.rrf_k)
