"""compare: a repeated (config hash, seed) is one sample; sweep parents do not split seeds; no key is hidden."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from synthmed import compare as C
from synthmed.tracking import tags as tk


def _entry(seed: str, value: float, name: str, lr: str = "0.0002", model: str = "ddpm", **extra) -> C.Entry:
    flat = {"seed": seed, "dataset.datamodule.seed": seed, "model.optimizer.lr": lr, **extra}
    tags = {tk.MODEL: model, tk.CONFIG_HASH: f"{model}{lr}{seed}{sorted(extra.items())}".ljust(64, "0")}
    run = SimpleNamespace(data=SimpleNamespace(tags=tags), info=SimpleNamespace(run_name=name, run_id=name))
    return C.Entry(run, {"val/fid": value}, seed, flat)


def test_a_config_run_twice_is_one_sample_with_its_repeats_listed():
    first = [_entry(s, v, f"sweep1-{s}") for s, v in [("0", 10.0), ("1", 12.0), ("2", 11.0)]]
    second = [_entry(s, v, f"sweep2-{s}") for s, v in [("0", 10.5), ("1", 12.5), ("2", 14.0)]]
    kept, notes = C.drop_repeats([*first, _entry("3", 9.0, "single"), *second])
    assert [e.run.info.run_name for e in kept] == ["single", "sweep2-0", "sweep2-1", "sweep2-2"]  # newest kept
    assert sorted(n.split(":")[0] for n in notes) == ["sweep1-0", "sweep1-1", "sweep1-2"]
    assert all("counted once" in n for n in notes)
    (group,) = C.group_entries(kept)
    mean, std, n = group.stats("val/fid")
    values = [9.0, 10.5, 12.5, 14.0]
    assert n == 4  # not 7
    assert np.isclose(mean, np.mean(values)) and np.isclose(std, np.std(values, ddof=1))


def test_a_sweep_parent_kept_with_include_parents_does_not_split_seeds():
    parent = _entry("?", 0.0, "sweep-parent", model="?")
    parent.flat = {"hydra.sweeper": "basic"}  # a parent records no config: no seed and no `${seed}` keys
    groups = C.group_entries([_entry("0", 1.0, "a"), _entry("1", 2.0, "b"), parent])
    assert sorted(len(g.entries) for g in groups) == [1, 2]


def test_the_config_column_says_how_many_differing_keys_it_leaves_out():
    many = {f"model.k{i}": str(i) for i in range(6)}
    groups = C.group_entries([_entry("0", 1.0, "a"), _entry("0", 2.0, "b", lr="0.001", **many)])
    label = groups[1].label
    assert label.endswith("+3 more (report.json)")
    assert len(groups[1].differs) == 7 and "optimizer.lr=0.001" in groups[1].differs
