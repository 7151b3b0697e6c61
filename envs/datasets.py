"""Offline datasets on disk: one HDF5 schema, atomic saving, strict validation, replay-buffer filling.

A dataset file holds ``N`` transitions ``(o_t, a_t, r_t, o_{t+1})`` in the order they happened,
episode after episode. Every step of every episode is stored; an episode ends at a step whose
``terminals`` or ``timeouts`` flag is set, and the last step of the file must end an episode.

Schema (``schema_version = 1``)
-------------------------------

| name | kind | shape | dtype | meaning |
|---|---|---|---|---|
| ``observations`` | dataset | ``[N, obs_dim]`` | float32 | ``o_t``, the observation ``a_t`` was chosen from |
| ``actions`` | dataset | ``[N, act_dim]`` | float32 | ``a_t``, in the env's [-1, 1] action space |
| ``rewards`` | dataset | ``[N]`` | float32 | ``r_t`` (summed over the action repeat) |
| ``next_observations`` | dataset | ``[N, obs_dim]`` | float32 | ``o_{t+1}`` (the last one at an episode end) |
| ``terminals`` | dataset | ``[N]`` | bool | ``o_{t+1}`` is terminal: do not bootstrap from it |
| ``timeouts`` | dataset | ``[N]`` | bool | the episode was cut after this step (time limit) |
| ``task_ids`` | dataset | ``[N]`` | int64 | task of the step (see below); constant in an episode |
| ``task_params`` | dataset, optional | ``[N, P]`` | float32 | the task's parameters; equal for equal task ids |
| ``policy_ids`` | dataset | ``[N]`` | int16 | behaviour policy of ``a_t``: an id of collection_policy |
| ``env_id`` | attr | | str | name given to ``make_env``, e.g. ``cheetah_vel/train-3`` |
| ``schema_version`` | attr | | int | ``1``; other versions are rejected |
| ``collection_policy`` | attr | | str (JSON) | the behaviour-policy mix, see below |
| ``created_by`` | attr | | str | tool that wrote the file |
| ``family`` | attr, optional | | str | task family (``cheetah_vel``) for meta-RL data |
| ``task_param_names`` | attr, optional | | str (JSON) | list of the ``P`` names of the task_params columns |

``task_ids``: for family data the task's ``Task.global_index`` (:mod:`envs.task_families`), so files
of different tasks concatenate without clashes; 0 for single-task data. ``task_params`` rows are
``TaskFamily.param_vector(task)``.

Other scalar attrs (str, int, float, bool) are allowed and kept (e.g. ``action_repeat``,
``max_episode_steps``, ``seed``). ``collection_policy`` is a JSON object whose ``"policies"`` list maps
every ``policy_ids`` value to a policy, e.g.::

    {"source": "rollout", "mix": {"random": 0.3, "medium": 0.4, "expert": 0.3},
     "policies": [{"id": 0, "name": "random", "fraction": 0.3, "episodes": 3},
                  {"id": 1, "name": "medium", "fraction": 0.4, "episodes": 4,
                   "checkpoint": "runs/.../step_000050000", "step": 50000, "eval_mode": false},
                  {"id": 2, "name": "expert", ...}]}

Loading (:func:`load_dataset`) uses h5py only and never unpickles anything: every dataset's dtype
and rank are checked *before* its data is read, so object, opaque (pickled bytes) or string datasets
are rejected unread. Every problem raises :class:`DatasetError` (a ``ValueError``) whose message names
the file and the field: unreadable/truncated file, missing field, wrong dtype, wrong shape, lengths that
disagree, NaN/inf in observations/actions/rewards/task parameters, unknown ``schema_version``, a last
step that ends no episode, task ids that change inside an episode, policy ids missing from
``collection_policy``.

Saving (:func:`save_dataset`) validates first, writes a temporary file next to the target, fsyncs it
and renames it into place, so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from common.files import atomic_replace

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (1,)


class FieldSpec(NamedTuple):
    """Expected dtype and rank of a dataset field, whether it is required and must be finite."""

    dtype: np.dtype
    ndim: int
    required: bool
    finite: bool


FIELDS: dict[str, FieldSpec] = {
    "observations": FieldSpec(np.dtype(np.float32), 2, True, True),
    "actions": FieldSpec(np.dtype(np.float32), 2, True, True),
    "rewards": FieldSpec(np.dtype(np.float32), 1, True, True),
    "next_observations": FieldSpec(np.dtype(np.float32), 2, True, True),
    "terminals": FieldSpec(np.dtype(np.bool_), 1, True, False),
    "timeouts": FieldSpec(np.dtype(np.bool_), 1, True, False),
    "task_ids": FieldSpec(np.dtype(np.int64), 1, True, False),
    "task_params": FieldSpec(np.dtype(np.float32), 2, False, True),
    "policy_ids": FieldSpec(np.dtype(np.int16), 1, True, False),
}
"""The schema's datasets (see the module docstring)."""

REQUIRED_ATTRS: tuple[str, ...] = ("env_id", "schema_version", "collection_policy", "created_by")
OPTIONAL_ATTRS: tuple[str, ...] = ("family", "task_param_names")
DEFAULT_CREATED_BY = "envs.datasets.save_dataset"


class DatasetError(ValueError):
    """A dataset file or array set does not follow the schema; names the file (``source``) and ``field``."""

    def __init__(self, source: str | Path, field: str, problem: str) -> None:
        self.source = str(source)
        self.field = field
        self.problem = problem
        super().__init__(f"{self.source}: field {field!r}: {problem}")


@dataclass
class Dataset:
    """A loaded (validated) dataset: the schema's arrays plus the file attrs.

    ``attrs`` holds plain Python values; ``collection_policy`` and ``task_param_names`` stay JSON
    strings there (parsed by the properties below). ``path`` is the file (or directory) it came from.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    task_ids: np.ndarray
    policy_ids: np.ndarray
    task_params: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def episode_ends(self) -> np.ndarray:
        """``terminals | timeouts``: True at the last step of each episode."""
        return self.terminals | self.timeouts

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ends.sum())

    @property
    def env_id(self) -> str:
        return str(self.attrs.get("env_id", ""))

    @property
    def collection_policy(self) -> dict[str, Any]:
        """The parsed ``collection_policy`` attr."""
        return json.loads(self.attrs["collection_policy"])

    @property
    def policy_names(self) -> dict[int, str]:
        """``{policy id: name}`` from ``collection_policy``."""
        return {int(p["id"]): str(p["name"]) for p in self.collection_policy.get("policies", [])}

    @property
    def task_param_names(self) -> list[str] | None:
        raw = self.attrs.get("task_param_names")
        return None if raw is None else list(json.loads(raw))

    def arrays(self) -> dict[str, np.ndarray]:
        """The schema fields present, by name (what :func:`save_dataset` takes as ``data``)."""
        out = {name: getattr(self, name) for name in FIELDS}
        if out["task_params"] is None:
            del out["task_params"]
        return out

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of every episode, in file order."""
        ends = np.flatnonzero(self.episode_ends)
        sums = np.cumsum(self.rewards, dtype=np.float64)
        totals = sums[ends]
        return np.diff(np.concatenate([[0.0], totals]))


# ---------------------------------------------------------------------------------------------------
# validation


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0])


def _check_version(version: Any, source: str) -> None:
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)):
        raise DatasetError(source, "attrs/schema_version", f"must be an integer, got {version!r}")
    if int(version) not in SUPPORTED_SCHEMA_VERSIONS:
        raise DatasetError(
            source,
            "attrs/schema_version",
            f"unsupported schema version {int(version)}; this code reads {list(SUPPORTED_SCHEMA_VERSIONS)}",
        )


def _check_attrs(attrs: Mapping[str, Any], source: str, num_params: int | None) -> dict[str, Any]:
    """Check the attrs of the schema; return the parsed ``collection_policy``."""
    for name in REQUIRED_ATTRS:
        if name not in attrs:
            raise DatasetError(source, f"attrs/{name}", "required attribute is missing")
    _check_version(attrs["schema_version"], source)
    for name in ("env_id", "created_by", "family"):
        if name in attrs and (not isinstance(attrs[name], str) or not attrs[name]):
            raise DatasetError(source, f"attrs/{name}", f"must be a non-empty string, got {attrs[name]!r}")
    raw = attrs["collection_policy"]
    if not isinstance(raw, str):
        raise DatasetError(source, "attrs/collection_policy", f"must be a JSON string, got {type(raw).__name__}")
    try:
        policy = json.loads(raw)
    except json.JSONDecodeError as e:
        raise DatasetError(source, "attrs/collection_policy", f"not valid JSON ({e})") from None
    policies = policy.get("policies") if isinstance(policy, dict) else None
    if not isinstance(policies, list) or not all(
        isinstance(p, dict)
        and isinstance(p.get("id"), int)
        and not isinstance(p.get("id"), bool)
        and isinstance(p.get("name"), str)
        for p in policies
    ):
        raise DatasetError(
            source,
            "attrs/collection_policy",
            'must be a JSON object with a "policies" list of {"id": int, "name": str, ...} entries',
        )
    ids = [p["id"] for p in policies]
    if len(set(ids)) != len(ids):
        raise DatasetError(source, "attrs/collection_policy", f"policy ids are not unique: {ids}")
    if "task_param_names" in attrs:
        names_raw = attrs["task_param_names"]
        try:
            names = json.loads(names_raw) if isinstance(names_raw, str) else None
        except json.JSONDecodeError:
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DatasetError(source, "attrs/task_param_names", f"must be a JSON list of strings, got {names_raw!r}")
        if num_params is None:
            raise DatasetError(source, "attrs/task_param_names", "given but the task_params field is absent")
        if len(names) != num_params:
            raise DatasetError(
                source, "attrs/task_param_names", f"names {len(names)} columns, task_params has {num_params}"
            )
    return policy


def validate(
    data: Mapping[str, np.ndarray] | Dataset | str | Path,
    attrs: Mapping[str, Any] | None = None,
    *,
    source: str | Path = "<in-memory dataset>",
) -> Dataset:
    """Check arrays + attrs against the schema and return them as a :class:`Dataset`.

    ``data`` is a mapping of field name to array (with ``attrs``), a :class:`Dataset`, or a path (then
    the file is loaded with :func:`load_dataset`, which validates). Raises :class:`DatasetError` naming
    ``source`` and the offending field on the first problem found.
    """
    if isinstance(data, (str, Path)):
        return load_dataset(data)
    if isinstance(data, Dataset):
        attrs = data.attrs if attrs is None else attrs
        source = data.path if data.path is not None else source
        data = data.arrays()
    source = str(source)
    if attrs is None:
        raise DatasetError(source, "attrs", "no attributes given")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise DatasetError(source, unknown[0], f"unknown field; schema fields: {list(FIELDS)}")
    arrays: dict[str, np.ndarray] = {}
    for name, spec in FIELDS.items():
        if name not in data or data[name] is None:
            if spec.required:
                raise DatasetError(source, name, "required field is missing")
            continue
        x = data[name]
        if not isinstance(x, np.ndarray):
            raise DatasetError(source, name, f"must be a numpy array, got {type(x).__name__}")
        if x.dtype != spec.dtype:
            raise DatasetError(source, name, f"dtype {x.dtype}, expected {spec.dtype}")
        if x.ndim != spec.ndim:
            raise DatasetError(source, name, f"shape {x.shape} has {x.ndim} dims, expected {spec.ndim}")
        arrays[name] = x

    n = arrays["observations"].shape[0]
    if n == 0:
        raise DatasetError(source, "observations", "dataset holds no transitions")
    for name, x in arrays.items():
        if x.shape[0] != n:
            raise DatasetError(source, name, f"has {x.shape[0]} rows, observations has {n}")
    if arrays["next_observations"].shape != arrays["observations"].shape:
        raise DatasetError(
            source,
            "next_observations",
            f"shape {arrays['next_observations'].shape} != observations shape {arrays['observations'].shape}",
        )
    for name, x in arrays.items():
        if x.ndim == 2 and x.shape[1] == 0:
            raise DatasetError(source, name, f"shape {x.shape} has an empty feature dimension")
        if FIELDS[name].finite:
            bad = ~np.isfinite(x)
            if bad.any():
                raise DatasetError(source, name, f"non-finite value (NaN or inf) at row {_first_bad(bad)}")

    ends = arrays["terminals"] | arrays["timeouts"]
    if not ends[-1]:
        raise DatasetError(
            source, "terminals|timeouts", "the last step ends no episode (neither terminal nor timeout is set)"
        )
    task_ids = arrays["task_ids"]
    if (task_ids < 0).any():
        raise DatasetError(source, "task_ids", f"negative task id at row {_first_bad(task_ids < 0)}")
    starts = np.concatenate([[0], np.flatnonzero(ends[:-1]) + 1])
    episode_of_row = np.repeat(np.arange(len(starts)), np.diff(np.concatenate([starts, [n]])))
    changed = task_ids != task_ids[starts][episode_of_row]
    if changed.any():
        raise DatasetError(source, "task_ids", f"task id changes inside an episode (row {_first_bad(changed)})")
    if "task_params" in arrays:
        params = arrays["task_params"]
        _, first, inverse = np.unique(task_ids, return_index=True, return_inverse=True)
        differ = (params != params[first][inverse.reshape(-1)]).any(axis=1)
        if differ.any():
            row = _first_bad(differ)
            raise DatasetError(
                source, "task_params", f"row {row} has other parameters than earlier rows of task {task_ids[row]}"
            )

    policy = _check_attrs(attrs, source, arrays["task_params"].shape[1] if "task_params" in arrays else None)
    known = {int(p["id"]) for p in policy["policies"]}
    used = {int(v) for v in np.unique(arrays["policy_ids"])}
    missing = sorted(used - known)
    if missing:
        raise DatasetError(
            source, "policy_ids", f"ids {missing} are not described in attrs/collection_policy (known: {sorted(known)})"
        )
    return Dataset(
        **{name: arrays.get(name) for name in FIELDS},
        attrs=dict(attrs),
        path=None if source.startswith("<") else Path(source),
    )


# ---------------------------------------------------------------------------------------------------
# saving


def _coerce(name: str, value: Any, source: str) -> np.ndarray:
    """Cast a user array to the field's dtype where no information is lost; else DatasetError."""
    spec = FIELDS[name]
    x = np.asarray(value)
    if x.dtype == spec.dtype:
        return x
    kind = spec.dtype.kind
    if kind == "f" and x.dtype.kind in "fiu":
        return x.astype(spec.dtype)
    if kind == "i" and x.dtype.kind in "iu":
        info = np.iinfo(spec.dtype)
        if x.size and (x.min() < info.min or x.max() > info.max):
            raise DatasetError(source, name, f"values outside the range of {spec.dtype}")
        return x.astype(spec.dtype)
    if kind == "b" and x.dtype.kind in "iu" and np.isin(x, (0, 1)).all():
        return x.astype(bool)
    raise DatasetError(source, name, f"dtype {x.dtype} cannot be stored as {spec.dtype}")


def _plain_attr(name: str, value: Any, source: str) -> str | int | float | bool:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, (str, int, float, bool)):
        raise DatasetError(source, f"attrs/{name}", f"attributes must be str, int, float or bool; got {value!r}")
    return value


def save_dataset(
    path: str | Path,
    data: Mapping[str, Any],
    attrs: Mapping[str, Any],
    *,
    compression: str | None = None,
) -> Path:
    """Validate ``data`` + ``attrs`` and write them to ``path`` atomically (temp file, fsync, rename).

    ``data`` maps field names to arrays; numeric arrays are cast to the schema dtype when nothing is
    lost (float64 -> float32, int32 -> int64, 0/1 ints -> bool); ``task_ids`` defaults to zeros
    (single-task data). ``attrs`` needs ``env_id`` and ``collection_policy`` (a dict or its JSON);
    ``schema_version`` is set to :data:`SCHEMA_VERSION`, ``created_by`` defaults to
    ``"envs.datasets.save_dataset"``, lists/dicts (e.g. ``task_param_names``) are stored as JSON.
    ``compression`` (``"gzip"``, ``"lzf"`` or None) applies to every dataset. Returns the path.
    """
    path = Path(path)
    source = str(path)
    values = dict(data)
    if values.get("task_ids") is None and values.get("observations") is not None:
        values["task_ids"] = np.zeros(len(values["observations"]), dtype=np.int64)
    arrays = {k: _coerce(k, v, source) for k, v in values.items() if k in FIELDS and v is not None}
    arrays.update({k: v for k, v in values.items() if k not in FIELDS})  # validate() names unknown fields
    plain = {k: _plain_attr(k, v, source) for k, v in attrs.items()}
    if plain.setdefault("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise DatasetError(
            source, "attrs/schema_version", f"this code writes version {SCHEMA_VERSION}, got {plain['schema_version']}"
        )
    plain.setdefault("created_by", DEFAULT_CREATED_BY)
    validate(arrays, plain, source=source)

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_replace(path) as tmp, h5py.File(tmp, "w") as f:
        for name, x in arrays.items():
            f.create_dataset(name, data=x, compression=compression if x.size else None)
        for name, v in plain.items():
            f.attrs[name] = v
    return path


# ---------------------------------------------------------------------------------------------------
# loading


def _read_attr(f: h5py.File, name: str, source: str) -> Any:
    try:
        value = f.attrs[name]
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(source, f"attrs/{name}", f"cannot be read ({e})") from None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise DatasetError(source, f"attrs/{name}", "bytes that are not UTF-8 text") from None
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        return value.item()
    if isinstance(value, (str, int, float, bool)):
        return value
    raise DatasetError(
        source, f"attrs/{name}", f"unsupported attribute type {type(value).__name__} (only str/int/float/bool)"
    )


def load_dataset(path: str | Path) -> Dataset:
    """Read and validate one dataset file (h5py only; nothing is unpickled); DatasetError if malformed."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise DatasetError(source, "(file)", "no such file")
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise DatasetError(source, "(file)", f"cannot be opened as HDF5 (truncated or corrupt?): {e}") from None
    with f:
        try:
            names = list(f.attrs.keys())
        except (OSError, RuntimeError) as e:
            raise DatasetError(source, "attrs", f"cannot be read (truncated or corrupt?): {e}") from None
        attrs = {name: _read_attr(f, name, source) for name in names}
        if "schema_version" not in attrs:  # check first: other versions may use other fields
            raise DatasetError(source, "attrs/schema_version", "required attribute is missing")
        _check_version(attrs["schema_version"], source)
        arrays: dict[str, np.ndarray] = {}
        for name, spec in FIELDS.items():
            try:
                link = f.get(name, getlink=True)
            except (OSError, RuntimeError, KeyError) as e:
                raise DatasetError(source, name, f"cannot be read (truncated or corrupt?): {e}") from None
            if link is None:
                if spec.required:
                    raise DatasetError(source, name, "required field is missing")
                continue
            if not isinstance(link, h5py.HardLink):
                raise DatasetError(source, name, f"is a {type(link).__name__}; only plain datasets are read")
            try:
                obj = f[name]
            except (OSError, RuntimeError, KeyError) as e:
                raise DatasetError(source, name, f"cannot be read (truncated or corrupt?): {e}") from None
            if not isinstance(obj, h5py.Dataset):
                raise DatasetError(source, name, f"is an HDF5 {type(obj).__name__}, not a dataset")
            dtype = obj.dtype
            if dtype != spec.dtype:  # checked before any data is read: object/opaque/str data stays unread
                hint = ""
                if dtype.kind in "OVS" or h5py.check_dtype(vlen=dtype) is not None:
                    hint = " (object, opaque or string data is never deserialised)"
                raise DatasetError(source, name, f"dtype {dtype}, expected {spec.dtype}{hint}")
            if obj.ndim != spec.ndim:
                raise DatasetError(source, name, f"shape {obj.shape} has {obj.ndim} dims, expected {spec.ndim}")
            try:
                arrays[name] = obj[()]
            except (OSError, RuntimeError, ValueError) as e:
                raise DatasetError(source, name, f"data cannot be read (truncated or corrupt?): {e}") from None
    return validate(arrays, attrs, source=source)


# ---------------------------------------------------------------------------------------------------
# several files


def _merge_policies(datasets: Sequence[Dataset]) -> str:
    raws = [d.attrs["collection_policy"] for d in datasets]
    if all(r == raws[0] for r in raws):
        return raws[0]
    union: dict[int, dict[str, Any]] = {}
    for d in datasets:
        for p in d.collection_policy["policies"]:
            pid = int(p["id"])
            if pid in union and union[pid]["name"] != p["name"]:
                raise DatasetError(
                    d.path or "<dataset>",
                    "policy_ids",
                    f"policy id {pid} is {p['name']!r} here but {union[pid]['name']!r} in an earlier file",
                )
            union.setdefault(pid, {"id": pid, "name": p["name"]})
    per_file = {str(d.path.name if d.path else i): d.collection_policy for i, d in enumerate(datasets)}
    return json.dumps({"source": "concatenated", "policies": [union[k] for k in sorted(union)], "per_file": per_file})


def concatenate_datasets(datasets: Sequence[Dataset], *, reindex: bool = False) -> Dataset:
    """One dataset holding ``datasets`` one after the other, task ids kept (or renumbered).

    Every part must have the same ``obs_dim``/``act_dim``, the same ``family`` attr (or none) and
    ``task_params`` in all or none. ``reindex=False`` keeps each file's ``task_ids`` (family data: the
    global task indices); parts without a family but with different ``env_id`` then need
    ``reindex=True``, which gives part ``k`` task id ``k``. The result's ``env_id`` is the common one,
    else ``"<family>/*"``, else the JSON list of env ids; ``source_files`` lists the parts.
    """
    if not datasets:
        raise ValueError("concatenate_datasets needs at least one dataset")
    first = datasets[0]
    fam = first.attrs.get("family")
    env_ids = [d.env_id for d in datasets]
    for d in datasets[1:]:
        src = d.path or "<dataset>"
        if d.obs_dim != first.obs_dim:
            raise DatasetError(
                src, "observations", f"obs_dim {d.obs_dim} differs from the first part's {first.obs_dim}"
            )
        if d.action_dim != first.action_dim:
            raise DatasetError(
                src, "actions", f"act_dim {d.action_dim} differs from the first part's {first.action_dim}"
            )
        if d.attrs.get("family") != fam:
            raise DatasetError(src, "attrs/family", f"{d.attrs.get('family')!r} differs from the first part's {fam!r}")
        if (d.task_params is None) != (first.task_params is None):
            raise DatasetError(src, "task_params", "present in some parts and absent in others")
        if d.task_params is not None and d.task_params.shape[1] != first.task_params.shape[1]:
            raise DatasetError(src, "task_params", "number of task parameters differs between parts")
    if not reindex and fam is None and len(set(env_ids)) > 1:
        raise DatasetError(
            datasets[1].path or "<dataset>",
            "task_ids",
            f"parts of different envs {sorted(set(env_ids))} without a family would share task ids; pass reindex=True",
        )
    if reindex:
        task_ids = np.concatenate([np.full(len(d), k, dtype=np.int64) for k, d in enumerate(datasets)])
    else:
        task_ids = np.concatenate([d.task_ids for d in datasets])
    attrs = dict(first.attrs)
    if len(set(env_ids)) == 1:
        attrs["env_id"] = env_ids[0]
    elif fam is not None:
        attrs["env_id"] = f"{fam}/*"
    else:
        attrs["env_id"] = json.dumps(env_ids)
    attrs["collection_policy"] = _merge_policies(datasets)
    attrs["source_files"] = json.dumps([str(d.path) if d.path else f"<part {i}>" for i, d in enumerate(datasets)])

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(d, name) for d in datasets])

    data = {name: cat(name) for name in FIELDS if name not in ("task_ids", "task_params")}
    data["task_ids"] = task_ids
    if first.task_params is not None:
        data["task_params"] = cat("task_params")
    return validate(data, attrs, source="<concatenated: " + ", ".join(str(d.path) for d in datasets) + ">")


def load_dataset_dir(directory: str | Path, pattern: str = "*.h5", *, reindex: bool = False) -> Dataset:
    """Load every file matching ``pattern`` in ``directory`` (sorted by name) and concatenate them.

    One file per task (as ``scripts/collect_dataset.py --tasks`` writes) or several files of any split:
    task ids are kept (see :func:`concatenate_datasets`). ``path`` of the result is the directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(directory, "(directory)", "no such directory")
    files = sorted(p for p in directory.glob(pattern) if p.is_file())
    if not files:
        raise DatasetError(directory, "(directory)", f"no files matching {pattern!r}")
    out = concatenate_datasets([load_dataset(p) for p in files], reindex=reindex)
    out.path = directory
    return out


# ---------------------------------------------------------------------------------------------------
# using a dataset


def iter_episodes(dataset: Dataset) -> Iterator[dict[str, np.ndarray]]:
    """Yield each episode as ``{field: rows}`` (views), in file order; episodes end at terminals|timeouts."""
    ends = np.flatnonzero(dataset.episode_ends)
    start = 0
    arrays = dataset.arrays()
    for end in ends:
        yield {name: x[start : end + 1] for name, x in arrays.items()}
        start = int(end) + 1


def to_replay_buffer(
    dataset: Dataset,
    buffer: Any,
    *,
    task_ids: Sequence[int] | None = None,
    policy_ids: Sequence[int] | None = None,
) -> int:
    """Append the dataset's episodes to a ``training.buffer.ReplayBuffer`` with ``buffer.add``.

    Each step is added with ``terminated = terminals[t]`` and ``episode_end = terminals[t] |
    timeouts[t]``, so the buffer's episode numbers follow the dataset's episodes and sampled windows
    never cross an episode. ``task_ids`` / ``policy_ids`` keep only episodes of those tasks / whose first
    step came from those policies. Raises ValueError when the dimensions differ from the buffer's or the
    selection does not fit in its capacity (the ring would silently drop the oldest data). Returns the
    number of transitions added.
    """
    obs_dim, action_dim = getattr(buffer, "obs_dim", None), getattr(buffer, "action_dim", None)
    if obs_dim is not None and obs_dim != dataset.obs_dim:
        raise ValueError(f"dataset obs_dim {dataset.obs_dim} != buffer obs_dim {obs_dim}")
    if action_dim is not None and action_dim != dataset.action_dim:
        raise ValueError(f"dataset act_dim {dataset.action_dim} != buffer action_dim {action_dim}")
    keep_tasks = None if task_ids is None else {int(t) for t in task_ids}
    keep_policies = None if policy_ids is None else {int(p) for p in policy_ids}
    episodes = [
        ep
        for ep in iter_episodes(dataset)
        if (keep_tasks is None or int(ep["task_ids"][0]) in keep_tasks)
        and (keep_policies is None or int(ep["policy_ids"][0]) in keep_policies)
    ]
    total = sum(len(ep["rewards"]) for ep in episodes)
    capacity = getattr(buffer, "capacity", None)
    if capacity is not None and total > capacity:
        raise ValueError(f"{total} transitions selected but the buffer holds only {capacity}")
    for ep in episodes:
        n = len(ep["rewards"])
        for t in range(n):
            terminal = bool(ep["terminals"][t])
            buffer.add(
                ep["observations"][t],
                ep["actions"][t],
                float(ep["rewards"][t]),
                ep["next_observations"][t],
                terminal,
                episode_end=terminal or bool(ep["timeouts"][t]),
            )
    return total


__all__ = [
    "FIELDS",
    "SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "Dataset",
    "DatasetError",
    "concatenate_datasets",
    "iter_episodes",
    "load_dataset",
    "load_dataset_dir",
    "save_dataset",
    "to_replay_buffer",
    "validate",
]
