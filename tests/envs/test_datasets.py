"""Tests for envs/datasets.py and scripts/collect_dataset.py: schema round trip, every malformed file
rejected with file + field named, nothing unpickled, episode boundaries kept, the CLI end to end."""

from __future__ import annotations

import builtins
import json
import pickle
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY, run_script
from omegaconf import OmegaConf

import envs.task_families as tf
import scripts.collect_dataset as collect_dataset
from envs.datasets import (
    FIELDS,
    DatasetError,
    concatenate_datasets,
    iter_episodes,
    load_dataset,
    load_dataset_dir,
    save_dataset,
    to_replay_buffer,
    validate,
)
from training.buffer import ReplayBuffer
from training.checkpoint import save_checkpoint
from training.setup import compose_config

EPISODE_LENGTHS = (4, 5, 3)
POLICY = {
    "mix": {"random": 0.5, "expert": 0.5},
    "policies": [{"id": 0, "name": "random"}, {"id": 2, "name": "expert", "checkpoint": "x", "step": 7}],
}


def make_data(task_id: int = 13, obs_dim: int = 3) -> dict[str, np.ndarray]:
    """Three episodes; obs = (episode, step within episode, 0...) so windows can be checked."""
    rows = [(e, t) for e, n in enumerate(EPISODE_LENGTHS) for t in range(n)]
    n = len(rows)
    obs = np.zeros((n, obs_dim), dtype=np.float32)
    obs[:, :2] = np.array(rows, dtype=np.float32)
    nxt = obs.copy()
    nxt[:, 1] += 1
    ends = np.zeros(n, dtype=bool)
    ends[np.cumsum(EPISODE_LENGTHS) - 1] = True
    terminals = np.zeros(n, dtype=bool)
    terminals[EPISODE_LENGTHS[0] - 1] = True  # episode 0 terminates, the others time out
    return {
        "observations": obs,
        "actions": np.linspace(-1, 1, 2 * n, dtype=np.float32).reshape(n, 2),
        "rewards": np.arange(n, dtype=np.float32),
        "next_observations": nxt,
        "terminals": terminals,
        "timeouts": ends & ~terminals,
        "task_ids": np.full(n, task_id, dtype=np.int64),
        "task_params": np.full((n, 1), 1.4, dtype=np.float32),
        "policy_ids": np.repeat(np.array([0, 2, 2], dtype=np.int16), EPISODE_LENGTHS),
    }


def make_attrs() -> dict[str, Any]:
    return {
        "env_id": "cheetah_vel/train-3",
        "schema_version": 1,
        "collection_policy": json.dumps(POLICY),
        "created_by": "tests",
        "family": "cheetah_vel",
        "task_param_names": json.dumps(["target_velocity"]),
        "seed": 3,
    }


def write_raw(path: Path, data: dict[str, Any], attrs: dict[str, Any]) -> Path:
    """Write with h5py directly (no validation), to build malformed files."""
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            f.create_dataset(k, data=v)
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


# --------------------------------------------------------------------------------------------------
# round trip and saving


def test_round_trip_keeps_arrays_and_attrs(tmp_path: Path) -> None:
    data, attrs = make_data(), make_attrs()
    path = save_dataset(tmp_path / "d.h5", data, attrs, compression="gzip")
    ds = load_dataset(path)
    for k, v in data.items():
        got = getattr(ds, k)
        assert got.dtype == FIELDS[k].dtype
        np.testing.assert_array_equal(got, v)
    assert ds.attrs == attrs
    assert ds.path == path and len(ds) == 12 and ds.num_episodes == 3
    assert ds.obs_dim == 3 and ds.action_dim == 2
    assert ds.policy_names == {0: "random", 2: "expert"}
    assert ds.task_param_names == ["target_velocity"]
    np.testing.assert_allclose(ds.episode_returns(), [0 + 1 + 2 + 3, 4 + 5 + 6 + 7 + 8, 9 + 10 + 11])
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]  # no temporary file left behind
    resaved = save_dataset(tmp_path / "e.h5", ds.arrays(), ds.attrs)
    assert load_dataset(resaved).attrs == attrs


def test_save_casts_losslessly_and_fills_single_task_defaults(tmp_path: Path) -> None:
    data = make_data()
    data["observations"] = data["observations"].astype(np.float64)
    data["terminals"] = data["terminals"].astype(np.int32)
    del data["task_ids"], data["task_params"]
    attrs = {"env_id": "dmc/walker-walk", "collection_policy": POLICY}  # dict -> JSON; version + created_by set
    ds = load_dataset(save_dataset(tmp_path / "s.h5", data, attrs))
    assert ds.observations.dtype == np.float32 and ds.terminals.dtype == np.bool_
    assert (ds.task_ids == 0).all() and ds.task_params is None
    assert ds.attrs["schema_version"] == 1 and ds.attrs["created_by"] == "envs.datasets.save_dataset"
    assert ds.collection_policy == POLICY


def test_failed_save_leaves_the_old_file(tmp_path: Path) -> None:
    path = save_dataset(tmp_path / "d.h5", make_data(), make_attrs())
    bad = make_data()
    bad["rewards"][2] = np.nan
    with pytest.raises(DatasetError, match="rewards"):
        save_dataset(path, bad, make_attrs())
    np.testing.assert_array_equal(load_dataset(path).rewards, make_data()["rewards"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]


# --------------------------------------------------------------------------------------------------
# malformed files


def _drop(key: str):
    return lambda d, a: d.pop(key)


def _set(key: str, value: Any):
    return lambda d, a: d.__setitem__(key, value(d[key]) if callable(value) else value)


def _put(key: str, index: Any, value: Any):
    return lambda d, a: d[key].__setitem__(index, value)


def _attr(key: str, value: Any):
    return lambda d, a: a.pop(key) if value is None else a.__setitem__(key, value)


MALFORMED = {
    "missing observations": (_drop("observations"), "observations"),
    "missing timeouts": (_drop("timeouts"), "timeouts"),
    "missing policy_ids": (_drop("policy_ids"), "policy_ids"),
    "float64 observations": (_set("observations", lambda x: x.astype(np.float64)), "observations"),
    "int8 terminals": (_set("terminals", lambda x: x.astype(np.int8)), "terminals"),
    "int32 task_ids": (_set("task_ids", lambda x: x.astype(np.int32)), "task_ids"),
    "float16 actions": (_set("actions", lambda x: x.astype(np.float16)), "actions"),
    "rewards 2-D": (_set("rewards", lambda x: x[:, None]), "rewards"),
    "actions 1-D": (_set("actions", lambda x: x[:, 0]), "actions"),
    "next_observations wider": (_set("next_observations", lambda x: np.pad(x, ((0, 0), (0, 1)))), "next_observations"),
    "NaN observation": (_put("observations", (5, 1), np.nan), "observations"),
    "inf action": (_put("actions", (0, 0), np.inf), "actions"),
    "NaN reward": (_put("rewards", 11, np.nan), "rewards"),
    "-inf next observation": (_put("next_observations", (3, 2), -np.inf), "next_observations"),
    "NaN task parameter": (_put("task_params", (2, 0), np.nan), "task_params"),
    "short rewards": (_set("rewards", lambda x: x[:-1]), "rewards"),
    "long task_ids": (_set("task_ids", lambda x: np.r_[x, x[:1]]), "task_ids"),
    "short actions": (_set("actions", lambda x: x[:-2]), "actions"),
    "no episode end": (
        lambda d, a: (_put("timeouts", -1, False)(d, a), _put("terminals", -1, False)(d, a)),
        "terminals|timeouts",
    ),
    "task id inside an episode": (_put("task_ids", 5, 7), "task_ids"),
    "task params disagree": (_put("task_params", (6, 0), 2.0), "task_params"),
    "undescribed policy id": (_put("policy_ids", 0, 9), "policy_ids"),
    "schema version 2": (_attr("schema_version", 2), "attrs/schema_version"),
    "schema version missing": (_attr("schema_version", None), "attrs/schema_version"),
    "schema version text": (_attr("schema_version", "1"), "attrs/schema_version"),
    "env_id missing": (_attr("env_id", None), "attrs/env_id"),
    "collection_policy not JSON": (_attr("collection_policy", "random=0.3"), "attrs/collection_policy"),
    "collection_policy without policies": (_attr("collection_policy", '{"random": 1.0}'), "attrs/collection_policy"),
    "task_param_names wrong length": (_attr("task_param_names", '["a", "b"]'), "attrs/task_param_names"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_is_rejected_naming_file_and_field(tmp_path: Path, case: str) -> None:
    data, attrs = make_data(), make_attrs()
    validate(data, attrs)  # the unmodified data is valid: the error below comes from the change
    change, field = MALFORMED[case]
    change(data, attrs)
    path = write_raw(tmp_path / "bad.h5", data, attrs)
    with pytest.raises(DatasetError) as e:
        load_dataset(path)
    assert e.value.field == field
    assert str(path) in str(e.value) and repr(field) in str(e.value)
    with pytest.raises(DatasetError, match="bad.h5"):  # validate(path) is the same check
        validate(path)


def test_truncated_and_garbage_files_are_rejected(tmp_path: Path) -> None:
    good = save_dataset(tmp_path / "good.h5", make_data(), make_attrs())
    raw = good.read_bytes()
    for name, content in [("half.h5", raw[: len(raw) // 2]), ("tiny.h5", raw[:100]), ("text.h5", b"not hdf5\n" * 50)]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(DatasetError) as e:
            load_dataset(path)
        assert str(path) in str(e.value) and e.value.field
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(tmp_path / "missing.h5")


class _Payload:
    """Unpickling this object creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


@pytest.mark.parametrize("kind", ["opaque dataset", "object dataset", "opaque attr"])
def test_pickled_objects_are_rejected_not_unpickled(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "unpickled"
    blob = pickle.dumps(_Payload(marker))
    pickle.loads(blob)  # the payload works: unpickling it *would* create the marker
    assert marker.exists()
    marker.unlink()
    data, attrs = make_data(), make_attrs()
    path = write_raw(tmp_path / "evil.h5", data, attrs)
    with h5py.File(path, "r+") as f:
        if kind == "opaque dataset":
            del f["observations"]
            f.create_dataset("observations", data=np.array([np.void(blob)] * len(data["rewards"])))
            field = "observations"
        elif kind == "object dataset":
            del f["actions"]
            ds = f.create_dataset("actions", (len(data["rewards"]),), dtype=h5py.vlen_dtype(np.uint8))
            for i in range(len(data["rewards"])):
                ds[i] = np.frombuffer(blob, dtype=np.uint8)
            field = "actions"
        else:
            f.attrs["collection_policy"] = np.void(blob)
            field = "attrs/collection_policy"
    with pytest.raises(DatasetError) as e:
        load_dataset(path)
    assert e.value.field == field and str(path) in str(e.value)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# episodes, replay buffer, directories


def test_iter_episodes_splits_at_terminals_and_timeouts(tmp_path: Path) -> None:
    ds = load_dataset(save_dataset(tmp_path / "d.h5", make_data(), make_attrs()))
    episodes = list(iter_episodes(ds))
    assert [len(ep["rewards"]) for ep in episodes] == list(EPISODE_LENGTHS)
    for e, ep in enumerate(episodes):
        assert (ep["observations"][:, 0] == e).all()
        assert (ep["terminals"] | ep["timeouts"]).sum() == 1 and (ep["terminals"] | ep["timeouts"])[-1]
    np.testing.assert_array_equal(np.concatenate([ep["actions"] for ep in episodes]), ds.actions)


def test_to_replay_buffer_keeps_episode_boundaries(tmp_path: Path) -> None:
    ds = load_dataset(save_dataset(tmp_path / "d.h5", make_data(), make_attrs()))
    buf = ReplayBuffer(64, 3, 2, seed=0)
    assert to_replay_buffer(ds, buf) == 12
    assert len(buf) == 12 and buf.num_episodes == 3
    batch = buf.sample(256, 4)
    obs = batch["obs"].numpy()  # [B, 5, 3]: (episode, step, 0)
    assert (obs[:, :, 0] == obs[:, :1, 0]).all()  # one episode per window
    np.testing.assert_array_equal(np.diff(obs[:, :, 1], axis=1), 1)  # consecutive steps
    # the terminal of episode 0 (its step 3) is kept; timeouts are not terminals
    term = batch["terminated"].numpy()
    is_last_of_ep0 = (obs[:, 1:, 0] == 0) & (obs[:, 1:, 1] == EPISODE_LENGTHS[0])
    np.testing.assert_array_equal(term > 0, is_last_of_ep0)
    assert {int(w) for w in obs[:, 0, 0]} == {0, 1}  # episode 2 (3 steps) is too short for 4

    only_expert = ReplayBuffer(64, 3, 2)
    assert to_replay_buffer(ds, only_expert, policy_ids=[2]) == 8 and only_expert.num_episodes == 2
    with pytest.raises(ValueError, match="obs_dim"):
        to_replay_buffer(ds, ReplayBuffer(64, 4, 2))
    with pytest.raises(ValueError, match="holds only 10"):
        to_replay_buffer(ds, ReplayBuffer(10, 3, 2))


def test_load_dataset_dir_concatenates_and_keeps_task_ids(tmp_path: Path) -> None:
    a = make_data(task_id=10)
    b = make_data(task_id=4)
    b["task_params"][:] = 0.5
    save_dataset(tmp_path / "parts" / "a.h5", a, make_attrs())
    save_dataset(tmp_path / "parts" / "b.h5", b, dict(make_attrs(), env_id="cheetah_vel/test-4"))
    ds = load_dataset_dir(tmp_path / "parts")
    assert len(ds) == 24 and ds.num_episodes == 6
    np.testing.assert_array_equal(ds.task_ids, np.r_[a["task_ids"], b["task_ids"]])
    np.testing.assert_array_equal(ds.task_params[:, 0], np.r_[[1.4] * 12, [0.5] * 12].astype(np.float32))
    assert ds.env_id == "cheetah_vel/*" and len(json.loads(ds.attrs["source_files"])) == 2
    re = concatenate_datasets([load_dataset(tmp_path / "parts" / "a.h5")] * 2, reindex=True)
    assert sorted(set(re.task_ids.tolist())) == [0, 1]

    wide = make_data(task_id=5, obs_dim=4)
    save_dataset(tmp_path / "parts" / "c.h5", wide, make_attrs())
    with pytest.raises(DatasetError) as e:
        load_dataset_dir(tmp_path / "parts")
    assert "c.h5" in str(e.value) and e.value.field == "observations"
    with pytest.raises(DatasetError, match="no files"):
        load_dataset_dir(tmp_path / "parts", pattern="*.hdf5")


# --------------------------------------------------------------------------------------------------
# collection CLI


def test_cli_random_rollouts_write_a_valid_file(tmp_path: Path) -> None:
    out = tmp_path / "cv.h5"
    args = ["--env", "cheetah_vel/train-1", "--policy", "random", "--episodes", "3", "--max-episode-steps", "20"]
    res = run_script("scripts/collect_dataset.py", [*args, "--seed", "5", "--out", str(out)], timeout=120)
    assert res.returncode == 0, res.stderr
    assert str(out) in res.stdout and "random" in res.stdout  # summary table
    ds = load_dataset(out)
    task = tf.resolve_task("cheetah_vel/train-1")[1]
    assert len(ds) == 30 and ds.num_episodes == 3  # 20 env steps at repeat 2 = 10 decisions
    assert ds.timeouts.sum() == 3 and not ds.terminals.any()
    assert (ds.task_ids == task.global_index).all() and np.allclose(ds.task_params, task.param_vector())
    assert (ds.policy_ids == 0).all() and ds.policy_names == {0: "random"}
    assert ds.collection_policy["mix"] == {"random": 1.0}
    assert ds.attrs["env_id"] == "cheetah_vel/train-1" and ds.attrs["family"] == "cheetah_vel"
    assert ds.attrs["action_repeat"] == 2 and ds.attrs["max_episode_steps"] == 20
    assert (np.abs(ds.actions) <= 1).all()
    for ep in iter_episodes(ds):  # chronological: each next observation is the following observation
        np.testing.assert_array_equal(ep["next_observations"][:-1], ep["observations"][1:])
    first = [ep["observations"][0] for ep in iter_episodes(ds)]
    assert not np.array_equal(first[0], first[1])  # episode k resets with seed + k


def test_cli_family_tasks_write_one_file_per_task(tmp_path: Path) -> None:
    cli = collect_dataset
    out = tmp_path / "wp"
    args = ["--env", "walker_param", "--tasks", "test", "--episodes", "1", "--max-episode-steps", "4"]
    paths = cli.run([*args, "--out", str(out)])
    fam = tf.get_family("walker_param")
    assert len(paths) == len(fam.test_tasks()) == 12
    ds = load_dataset_dir(out)
    assert sorted(set(ds.task_ids.tolist())) == sorted(fam.task(t).global_index for t in fam.test_tasks())
    assert ds.attrs["family"] == "walker_param" and ds.task_param_names == ["mass_scale", "damping_scale"]
    assert cli.main(["--env", "walker_param", "--episodes", "1", "--out", str(tmp_path / "x.h5")]) == 2


def test_cli_mix_with_checkpoint_policy(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "device=cpu"])
    from training.setup import build_agent, build_env

    env = build_env(cfg)
    agent = build_agent(cfg, env, torch.device("cpu"))
    env.close()
    save_checkpoint(
        tmp_path / "run",
        400,
        {"agent": agent.state_dict(), "trainer": {"episode": 2}},
        OmegaConf.to_yaml(cfg, resolve=True),
    )
    cli = collect_dataset
    out = tmp_path / "mix.h5"
    args = ["--env", "gym/Pendulum-v1", "--episodes", "4", "--max-episode-steps", "10", "--out", str(out)]
    cli.run([*args, "--mix", "random=0.5,medium=0.5", "--medium", str(tmp_path / "run")])
    ds = load_dataset(out)
    assert len(ds) == 40 and ds.num_episodes == 4
    np.testing.assert_array_equal(ds.policy_ids, np.repeat([0, 1], 20))
    medium = [p for p in ds.collection_policy["policies"] if p["name"] == "medium"][0]
    assert medium["step"] == 400 and medium["eval_mode"] is False and medium["episodes"] == 2
    assert medium["checkpoint"].endswith("step_000000000400") and medium["fraction"] == 0.5
    assert ds.attrs.get("family") is None and (ds.task_ids == 0).all()
    with pytest.raises(cli.CollectError, match="--expert"):
        cli.run([*args, "--mix", "random=0.5,expert=0.5"])
    # a policy trained on Pendulum (obs 3) cannot act in MountainCarContinuous (obs 2): named, not a stack trace
    other = ["--env", "gym/MountainCarContinuous-v0", "--episodes", "2", "--out", str(tmp_path / "mc.h5")]
    with pytest.raises(cli.CollectError, match=r"--medium: .*step_000000000400: weights do not match .*Pendulum-v1"):
        cli.run([*other, "--mix", "medium=1.0", "--medium", str(tmp_path / "run")])
    assert not (tmp_path / "mc.h5").exists()
    assert cli.split_episodes(10, {"random": 0.3, "medium": 0.4, "expert": 0.3}) == {
        "random": 3,
        "medium": 4,
        "expert": 3,
    }


def test_cli_exports_a_run_buffer_in_chronological_order(tmp_path: Path) -> None:
    """A ring buffer that wrapped: export oldest first, mark episode ends, drop the open episode."""
    buf = ReplayBuffer(25, 3, 2)
    g = 0
    for episode, length in enumerate([8, 8, 8, 8, 3]):  # 35 rows into 25: the ring wraps; the last is open
        for t in range(length):
            end = t == length - 1 and episode < 4
            obs = np.array([g, episode, t], dtype=np.float32)
            buf.add(obs, np.zeros(2), float(g), obs + 1, terminated=end and episode == 2, episode_end=end)
            g += 1
    config = {
        "env": "cheetah_vel/train-2",
        "seed": 1,
        "env_settings": {"action_repeat": None, "max_episode_steps": None, "render_size": 64, "obs_mask": None},
        "suite_defaults": {"dmc": {"action_repeat": 2, "max_episode_steps": 1000}},
        "trainer": {"seed_steps": 24},
        "agent": {"name": "iqrl"},
    }
    save_checkpoint(
        tmp_path / "run", 70, {"agent": {}}, OmegaConf.to_yaml(OmegaConf.create(config)), buffer=buf.state_dict()
    )
    cli = collect_dataset
    out = tmp_path / "replay.h5"
    cli.run(["--from-run", str(tmp_path / "run"), "--out", str(out)])
    ds = load_dataset(out)
    np.testing.assert_array_equal(ds.observations[:, 0], np.arange(10, 32))  # rows 10..31, oldest first
    np.testing.assert_array_equal(ds.rewards, np.arange(10, 32))
    np.testing.assert_array_equal(np.flatnonzero(ds.episode_ends) + 10, [15, 23, 31])
    np.testing.assert_array_equal(np.flatnonzero(ds.terminals) + 10, [23])  # episode 2 terminated
    np.testing.assert_array_equal(ds.policy_ids, np.where(np.arange(10, 32) * 2 < 24, 0, 4))  # seed phase: random
    task = tf.resolve_task("cheetah_vel/train-2")[1]
    assert (ds.task_ids == task.global_index).all() and ds.attrs["family"] == "cheetah_vel"
    assert ds.collection_policy["source"] == "replay_buffer" and ds.collection_policy["step"] == 70
