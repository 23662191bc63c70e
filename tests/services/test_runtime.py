"""Per-process singletons (``longrag/services/runtime.py``): one corpus and one QA pipeline per
data directory, torch's thread count from the settings, and the logging set-up.

Real corpora and pipelines over temporary data directories; building them loads no model.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longrag.config import Settings, get_settings
from longrag.services.corpus import Corpus
from longrag.services.qa import QAPipeline
from longrag.services.runtime import apply_torch_settings, configure_logging, get_corpus, get_pipeline

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def restore_torch_threads():
    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


def test_one_corpus_per_data_dir(tmp_path: Path):
    one = Settings(data_dir=tmp_path / "one")
    corpus = get_corpus(one)
    assert isinstance(corpus, Corpus) and corpus.settings is one
    assert (tmp_path / "one").is_dir()
    # the same data directory, even through other settings objects, is the same corpus
    assert get_corpus(one) is corpus
    assert get_corpus(Settings(data_dir=tmp_path / "one")) is corpus
    other = get_corpus(Settings(data_dir=tmp_path / "two"))
    assert other is not corpus and other.settings.data_dir == tmp_path / "two"
    # without settings: the configured data directory (LONGRAG_DATA_DIR, set per test)
    default = get_corpus()
    assert default is get_corpus(get_settings()) and default.settings.data_dir == get_settings().data_dir
    assert default is not corpus and default is not other


def test_one_pipeline_per_data_dir_over_its_corpus(tmp_path: Path):
    one = Settings(data_dir=tmp_path / "one", decoder="some-decoder")
    pipe = get_pipeline(one)
    assert isinstance(pipe, QAPipeline)
    assert pipe.corpus is get_corpus(one)  # the pipeline answers over the data dir's own corpus
    assert pipe.decoder_name == "some-decoder" and pipe._decoder is None  # no model loaded to build it
    assert get_pipeline(Settings(data_dir=tmp_path / "one")) is pipe
    other = get_pipeline(Settings(data_dir=tmp_path / "two"))
    assert other is not pipe and other.corpus is get_corpus(Settings(data_dir=tmp_path / "two"))
    assert get_pipeline() is get_pipeline(get_settings()) and get_pipeline().corpus is get_corpus()


def test_apply_torch_settings(restore_torch_threads: int):
    target = 1 if restore_torch_threads != 1 else 2
    apply_torch_settings(Settings(torch_threads=target))
    assert torch.get_num_threads() == target
    apply_torch_settings(Settings(torch_threads=0))  # 0: leave torch as it is
    assert torch.get_num_threads() == target


def test_first_corpus_of_a_data_dir_applies_the_torch_threads(tmp_path: Path, restore_torch_threads: int):
    target = 1 if restore_torch_threads != 1 else 2
    get_corpus(Settings(data_dir=tmp_path / "threads", torch_threads=target))
    assert torch.get_num_threads() == target


def test_configure_logging_quiets_noisy_libraries_and_is_idempotent():
    noisy = ("httpx", "urllib3", "transformers", "sentence_transformers", "faiss")
    levels = {name: logging.getLogger(name).level for name in noisy}
    root_handlers = list(logging.getLogger().handlers)
    try:
        for name in noisy:
            logging.getLogger(name).setLevel(logging.DEBUG)
        configure_logging()
        configure_logging()
        assert all(logging.getLogger(name).level == logging.WARNING for name in noisy)
        assert logging.getLogger().handlers == root_handlers  # no handler added twice (pytest's stay)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_configure_logging_in_a_fresh_process_adds_one_handler_once():
    """What a CLI process gets: one stream handler on the root at the level asked, however often."""
    code = (
        "import logging\n"
        "from longrag.services.runtime import configure_logging\n"
        "configure_logging(logging.DEBUG); configure_logging(); configure_logging()\n"
        "root = logging.getLogger()\n"
        "print(len(root.handlers), type(root.handlers[0]).__name__, logging.getLevelName(root.level),\n"
        "      root.handlers[0].formatter._fmt, logging.getLevelName(logging.getLogger('httpx').level), sep='|')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    n, kind, level, fmt, httpx_level = out.stdout.strip().splitlines()[-1].split("|")
    assert (n, kind, level, httpx_level) == ("1", "StreamHandler", "DEBUG", "WARNING")
    assert fmt == "%(asctime)s %(levelname)s %(name)s: %(message)s"
