"""Every conf/ file composes; the config hash and the _target_ allowlist keep their contracts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from synthmed.config import CONF_DIR, DisallowedTargetError, check_targets, instantiate
from synthmed.tracking.confighash import config_hash, semantic_config, short_hash
from tests.conftest import compose_train

# Nested groups too (`model/process`, selected as `model/process=rflow`).
GROUPS = sorted(p.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*")
                if p.is_dir() and p.relative_to(CONF_DIR).parts[0] not in ("hydra", "paths"))


APPS = {"classifier": "utility"}  # groups of another Hydra app than `train`


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_config_composes_and_resolves(tmp_path, group, option):
    overrides = [f"{group}={option}"]
    if group == "dataset" and not option.startswith("phantom"):
        overrides += (["dataset.source_root=/data/mr", "dataset.target_root=/data/ct"] if option == "unpaired"
                      else ["dataset.root=/data/somewhere"])  # the one required key (two for unpaired collections)
    app = APPS.get(group, "train")
    cfg = compose_train(tmp_path, overrides, config_name=app)
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=app == "train")
    check_targets(cfg)
    assert resolved["paths"]["root"] == str(tmp_path)
    if app == "train":
        assert isinstance(resolved["model"]["image_shape"], list)
    else:
        instantiate(cfg[group], group)  # builds without a run (nothing trains until prepare())


# Units that make a short comment enough ("# years", "# optimizer steps"); otherwise a comment gives a reason in
# three words or more.
UNITS = {"years", "steps", "step", "px", "pixels", "voxels", "mm", "hu", "seconds", "minutes", "images", "subjects",
         "samples", "processes", "machines", "gpus", "ranks", "bytes", "channels", "epochs", "batches", "percent"}


def uncommented(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every leaf key of a YAML text whose inline comment gives neither a unit nor a reason."""
    bad = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        key, _, value = stripped.partition(":")
        if value.strip() in ("", "|", ">") or value.strip().startswith("#") or key in ("_target_", "defaults"):
            continue  # a section header, a block, or a key whose meaning is its target
        match = re.search(r"\s#\s*(.*)$", value)  # " # ...": a '#' inside a value is not a comment
        words = [w.lower() for w in re.findall(r"[A-Za-z0-9]+", match.group(1) if match else "")]
        if len(words) < 3 and not UNITS & set(words):
            bad.append((number, stripped))
    return bad


def test_the_comment_check_refuses_bare_and_empty_comments():
    text = "a: 1  # years\nb: 2  # the reason it is two\nc: 3  #\nd: 4  # d\ne: x#y\nf:\n  g: 5  # in steps\n"
    assert [n for n, _ in uncommented(text)] == [3, 4, 5]


def test_every_leaf_key_is_commented():
    # DESIGN.md: every config value carries an inline comment with its unit and reason.
    missing = [f"{path.relative_to(CONF_DIR)}:{number}: {line}" for path in sorted(CONF_DIR.rglob("*.yaml"))
               for number, line in uncommented(path.read_text())]
    assert not missing, "keys without a unit or a reason in their inline comment:\n" + "\n".join(missing)


def test_hash_ignores_override_order_and_paths(tmp_path):
    a = compose_train(tmp_path / "a", ["seed=3", "trainer.max_steps=7"])
    b = compose_train(tmp_path / "b", ["trainer.max_steps=7", "seed=3"])
    assert config_hash(a) == config_hash(b)
    assert re.fullmatch(r"[0-9a-f]{64}", config_hash(a))
    assert short_hash(config_hash(a)) == config_hash(a)[:12]


@pytest.mark.parametrize("override", ["dataset.datamodule.num_workers=4", "trainer.log_every_n_steps=1",
                                      "trainer.enable_progress_bar=false", "logger.tracking_uri=sqlite:///x.db",
                                      "callbacks.sample_grid.n=4", "experiment_name=other"])
def test_hash_ignores_non_semantic_keys(tmp_path, override):
    assert config_hash(compose_train(tmp_path)) == config_hash(compose_train(tmp_path, [override]))


@pytest.mark.parametrize("override", ["seed=1", "trainer.max_steps=3", "dataset.datamodule.batch_size=8",
                                      "model.optimizer.lr=0.001", "hardware.devices=2", "hardware.precision=16-mixed",
                                      "dataset.size=32", "eval.n_samples=10"])
def test_hash_changes_with_semantic_keys(tmp_path, override):
    assert config_hash(compose_train(tmp_path)) != config_hash(compose_train(tmp_path, [override]))


def test_semantic_config_drops_locations(tmp_path):
    sem = semantic_config(compose_train(tmp_path))
    assert "paths" not in sem and "logger" not in sem and "callbacks" not in sem
    assert str(tmp_path) not in str(sem)


def test_disallowed_target_is_refused_with_its_key(tmp_path):
    cfg = compose_train(tmp_path, ["model.net._target_=os.system"])
    with pytest.raises(DisallowedTargetError, match=r"model\.net\._target_.*os\.system"):
        check_targets(cfg)
    with pytest.raises(DisallowedTargetError, match=r"model\.net\._target_"):
        instantiate(cfg.model, "model")


def test_metric_resolver_spells_names_once(tmp_path):
    from synthmed.metrics import names

    cfg = OmegaConf.create({"monitor": "${metric:FID}"})
    assert cfg.monitor == names.FID == "val/fid"
    with pytest.raises(Exception, match="unknown metric constant"):
        _ = OmegaConf.create({"m": "${metric:NOPE}"}).m


def test_data_inside_the_root_stays_in_the_hash(tmp_path):
    # Only derived output/cache folders are locations; a data path under paths.root is a setting.
    a = compose_train(Path("/proj"), ["+dataset.datamodule.dataset.root=/proj/data/a"])
    b = compose_train(Path("/proj"), ["+dataset.datamodule.dataset.root=/proj/data/b"])
    assert config_hash(a) != config_hash(b)
