"""Shared fixtures: a tiny ToyScenes data set (generated once per test session) and run configs over it."""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_SPLITS = {"train": 80, "dev": 10, "test": 40}


@pytest.fixture(scope="session")
def tiny_toy(tmp_path_factory):
    """Root folder holding `toy-f30k_precomp/` with 80 / 10 / 40 images of 6 regions x 32 features."""
    from itrbench.data.toyscenes import generate_toyscenes

    root = tmp_path_factory.mktemp("toy")
    generate_toyscenes(root, "toy-f30k", seed=0, splits=TINY_SPLITS, n_regions=6, feat_dim=32, global_dim=32)
    return root


@pytest.fixture(scope="session")
def text_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("textcache")


@pytest.fixture
def tiny_run_config(tiny_toy, text_cache_dir):
    """A validated VSE++ run config over the tiny toy data; tests override what they need."""
    from itrbench.config import validate

    def make(**overrides):
        from itrbench.config import deep_merge

        base = {
            "method": "vsepp",
            "device": "cpu",
            "data": {"root": str(tiny_toy), "dataset": "toy-f30k", "eval_split": "test", "protocols": ["f30k_1k"]},
            "text": {"cache_dir": str(text_cache_dir), "max_length": 24},
            "model": {"embed_dim": 32, "gpo_dim": 8},
            "train": {"epochs": 2, "batch_size": 32, "lr": 0.001, "log_every": 2},
        }
        return validate(deep_merge(base, overrides))

    return make
