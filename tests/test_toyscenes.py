"""ToyScenes generator: determinism, layout, caption statistics, near-duplicates, hallucinations, knobs, CLI."""
import json

import numpy as np
import pytest

from itrbench.data import toyscenes as ts
from itrbench.data.precomp import open_split
from itrbench.errors import ConfigError

SMALL = dict(splits={"train": 60, "test": 40}, n_regions=8, feat_dim=24, global_dim=10)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_identical_bytes_different_seed_differs(tmp_path):
    a = _files(ts.generate_toyscenes(tmp_path / "a", "toy-f30k", seed=3, **SMALL))
    b = _files(ts.generate_toyscenes(tmp_path / "b", "toy-f30k", seed=3, **SMALL))
    c = _files(ts.generate_toyscenes(tmp_path / "c", "toy-f30k", seed=4, **SMALL))
    assert set(a) == {"train_ims.npy", "train_caps.txt", "train_ids.txt", "train_global.npy", "test_ims.npy",
                      "test_caps.txt", "test_ids.txt", "test_global.npy", "toyscenes.json"}
    assert a == b
    for name in ("train_ims.npy", "train_caps.txt", "test_global.npy"):
        assert a[name] != c[name], name
    # the other data set name gives another world sample too
    d = _files(ts.generate_toyscenes(tmp_path / "d", "toy-coco", seed=3, **SMALL))
    assert d["train_caps.txt"] != a["train_caps.txt"]


def test_layout_shapes_and_reader(tmp_path):
    folder = ts.generate_toyscenes(tmp_path, "toy-f30k", seed=0, **SMALL)
    for split, n in SMALL["splits"].items():
        ims = np.load(folder / f"{split}_ims.npy")
        assert ims.shape == (n, 8, 24) and ims.dtype == np.float32
        assert np.isfinite(ims).all() and ims.min() >= 0  # ReLU'd like detector features
        assert np.load(folder / f"{split}_global.npy").shape == (n, 10)
        s = open_split(tmp_path, "toy-f30k", split, require_global=True)
        assert s.n_captions == 5 * n and s.captions_per_image == 5 and len(s.ids) == n
    # ids unique across splits
    ids = sum((open_split(tmp_path, "toy-f30k", sp).ids for sp in SMALL["splits"]), [])
    assert len(set(ids)) == len(ids)
    manifest = json.loads((folder / "toyscenes.json").read_text())
    assert manifest["seed"] == 0 and manifest["splits"] == SMALL["splits"] and manifest["region_noise"] == 0.3


def test_default_sizes_and_paper_shape(tmp_path):
    assert ts.DATASETS["toy-f30k"] == {"train": 1000, "dev": 200, "test": 1000}
    assert ts.DATASETS["toy-coco"] == {"train": 1000, "dev": 200, "testall": 5000}
    folder = ts.generate_toyscenes(tmp_path, "toy-coco", splits={"testall": 3}, n_regions=36, feat_dim=2048,
                                   global_dim=2048)
    assert np.load(folder / "testall_ims.npy", mmap_mode="r").shape == (3, 36, 2048)
    assert np.load(folder / "testall_global.npy").shape == (3, 2048)


def test_caption_lengths_and_count(tmp_path):
    scenes = ts.sample_scenes("toy-f30k", "train", 400, seed=0)
    rng = np.random.default_rng(0)
    k = ts._knobs({})
    lengths = np.array([ts.count_words(ts._caption(rng, s, k)) for s in scenes for _ in range(5)])
    assert lengths.min() >= 4 and lengths.max() <= 25
    # spread enough for a caption-length study: short, medium and long buckets all populated
    assert (lengths <= 6).mean() > 0.05 and ((lengths > 10) & (lengths <= 15)).mean() > 0.1 and (lengths > 18).mean() > 0.05
    assert ts.count_words("A red cup , on a table .") == 6


def test_captions_in_file_are_english_sentences(tmp_path):
    folder = ts.generate_toyscenes(tmp_path, "toy-f30k", seed=1, **SMALL)
    caps = (folder / "test_caps.txt").read_text().splitlines()
    assert len(caps) == 200
    for c in caps:
        assert c[0].isupper() and c.endswith(".") and "  " not in c and " ," not in c, c
        assert 4 <= ts.count_words(c) <= 25, c


def _changes(a: ts.Scene, b: ts.Scene) -> int:
    """Number of differing (object, attribute) facts between two scenes of the same theme."""
    fa = {(o.name, kind, v) for o in a.objects for kind, v in o.attrs.items()} | {(o.name,) for o in a.objects}
    fb = {(o.name, kind, v) for o in b.objects for kind, v in o.attrs.items()} | {(o.name,) for o in b.objects}
    return len(fa ^ fb)


def test_near_duplicates_exist_and_differ_by_one_thing():
    scenes = ts.sample_scenes("toy-f30k", "test", 1000, seed=0, near_dup_frac=0.2)
    dups = [(i, s) for i, s in enumerate(scenes) if s.near_duplicate_of is not None]
    assert len(dups) == 200
    for i, s in dups:
        src = scenes[s.near_duplicate_of]
        assert src.near_duplicate_of is None and s.near_duplicate_of // 1000 == i // 1000
        assert (s.theme, s.agent, s.action, s.outfit) == (src.theme, src.agent, src.action, src.outfit)
        assert len(s.objects) == len(src.objects)
        names_a, names_b = [o.name for o in s.objects], [o.name for o in src.objects]
        if names_a == names_b:   # one attribute changed
            assert sum(o1.attrs != o2.attrs for o1, o2 in zip(s.objects, src.objects)) == 1
            assert _changes(s, src) == 2
        else:                    # one object swapped
            assert sum(x != y for x, y in zip(names_a, names_b)) == 1
    assert all(s.near_duplicate_of is None for s in ts.sample_scenes("toy-f30k", "test", 50, near_dup_frac=0.0))


def test_near_duplicate_features_are_closer_than_random_pairs(tmp_path):
    folder = ts.generate_toyscenes(tmp_path, "toy-f30k", seed=0, splits={"test": 300}, n_regions=12, feat_dim=64,
                                   global_dim=16)
    g = np.load(folder / "test_global.npy")
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    scenes = ts.sample_scenes("toy-f30k", "test", 300, seed=0)
    pairs = [(i, s.near_duplicate_of) for i, s in enumerate(scenes) if s.near_duplicate_of is not None]
    dup_sim = np.mean([g[i] @ g[j] for i, j in pairs])
    rng = np.random.default_rng(0)
    rand = rng.integers(0, 300, size=(500, 2))
    rand_sim = np.mean([g[i] @ g[j] for i, j in rand if i != j])
    assert dup_sim > rand_sim + 0.1


def _mentioned_objects(caption: str) -> set[str]:
    """Canonical names of objects a caption mentions (longest surface forms first: 'palm tree' before 'tree')."""
    text = " " + caption.lower().replace(",", " ").replace(".", " ") + " "
    forms = sorted(((f, name) for name, w in ts.OBJECTS.items() for f in w.forms), key=lambda x: -len(x[0]))
    found = set()
    for form, name in forms:
        if f" {form} " in text:
            found.add(name)
            text = text.replace(f" {form} ", " | ")
    return found


def test_hallucinated_mentions_follow_the_knob():
    scenes = ts.sample_scenes("toy-f30k", "train", 150, seed=2)

    def absent_rate(p):
        k = ts._knobs({"hallucination_prob": p})
        rng = np.random.default_rng(0)
        bad = total = 0
        for s in scenes:
            present = {o.name for o in s.objects}
            for _ in range(5):
                total += 1
                bad += bool(_mentioned_objects(ts._caption(rng, s, k)) - present)
        return bad / total

    assert absent_rate(0.0) == 0.0
    assert 0.3 < absent_rate(0.5) < 0.6          # templates without objects never hallucinate
    assert absent_rate(0.1) > 0.03


def test_related_words_have_close_prototypes():
    w = ts.World(0, 64, closeness=1.0)
    cos = lambda a, b: float(w.proto[a] @ w.proto[b])  # noqa: E731
    assert cos("cup", "mug") > cos("cup", "horse") + 0.2          # same category and theme
    assert cos("cow", "sheep") > cos("cow", "laptop") + 0.2
    assert cos("colour:red", "colour:blue") > cos("colour:red", "material:wooden") + 0.2
    far = ts.World(0, 64, closeness=0.0)
    assert abs(far.proto["cup"] @ far.proto["mug"]) < cos("cup", "mug")


def test_vocabulary_is_large_enough_for_400_concepts(tmp_path):
    # CODER builds its concept vocabulary from the 400 most frequent non-stop words of the training captions
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    scenes = ts.sample_scenes("toy-f30k", "train", 2000, seed=0)
    rng, k = np.random.default_rng(0), ts._knobs({})
    words = {w.strip(".,").lower() for s in scenes for _ in range(5) for w in ts._caption(rng, s, k).split()}
    assert len(words - ENGLISH_STOP_WORDS) > 400


@pytest.mark.parametrize("kwargs, pattern", [
    ({"regionnoise": 0.1}, r"unknown key 'regionnoise'"),
    ({"near_dup_frac": 1.5}, r"'near_dup_frac' = 1.5; expected a probability"),
    ({"region_noise": "high"}, r"'region_noise' = 'high'; expected a number"),
    ({"n_regions": 3}, r"'n_regions' = 3; expected an integer >= 6"),
    ({"splits": {"train": 0}}, r"'splits.train' = 0"),
    ({"min_objects": 4, "max_objects": 2}, r"min_objects"),
])
def test_bad_options(tmp_path, kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        ts.generate_toyscenes(tmp_path, "toy-f30k", **kwargs)
    assert not any(tmp_path.iterdir())


def test_failure_leaves_no_partial_output(tmp_path, monkeypatch):
    good = ts.generate_toyscenes(tmp_path, "toy-f30k", seed=0, **SMALL)
    before = _files(good)
    calls = []
    real = ts._write_split

    def boom(folder, dataset, split, *a, **k):
        calls.append(split)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(folder, dataset, split, *a, **k)

    monkeypatch.setattr(ts, "_write_split", boom)
    with pytest.raises(RuntimeError):
        ts.generate_toyscenes(tmp_path, "toy-f30k", seed=9, **SMALL)
    assert _files(good) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy-f30k_precomp"]


# ------------------------------------------------------------------------------------------------ CLI
def _cli(args, capsys):
    from itrbench.cli import main

    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_toy_with_config(tmp_path, capsys):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text("n_regions: 6\nfeat_dim: 8\nglobal_dim: 4\ntoy-f30k:\n  splits: {train: 5, test: 3}\n")
    rc, out, err = _cli(["toy", "--out", str(tmp_path / "data"), "--dataset", "toy-f30k", "--config", str(cfg),
                         "--seed", "2"], capsys)
    assert rc == 0, err
    s = open_split(tmp_path / "data", "toy-f30k", "test")
    assert (s.n_images, s.n_regions, s.image_dim, s.global_dim) == (3, 6, 8, 4)
    assert json.loads((tmp_path / "data/toy-f30k_precomp/toyscenes.json").read_text())["seed"] == 2
    assert "toy-f30k_precomp" in out


@pytest.mark.parametrize("text, pattern", [
    ("n_regions: [unclosed\n", "not valid YAML"),
    ("- a list\n", "expected a mapping"),
    ("region_nosie: 0.3\n", "unknown key 'region_nosie'"),
    ("toy-f30k:\n  splitz: {}\n", "unknown key 'toy-f30k.splitz'"),
    ("toy-coco:\n  splits: {testall: -1}\n", "'splits.testall' = -1"),
    ("feat_dim: 2.5\n", "'feat_dim' = 2.5"),
])
def test_cli_toy_bad_config_one_line(tmp_path, capsys, text, pattern):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    rc, out, err = _cli(["toy", "--out", str(tmp_path / "data"), "--config", str(cfg)], capsys)
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("itrbench: error: ") and str(cfg) in lines[0], err
    assert pattern in lines[0]
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
