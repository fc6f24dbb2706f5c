"""Property-based tests: random invalid values, types, keys and list lengths thrown at the config loader and
the planner must end in a ConfigError/PlanError that names the key, never in another exception."""

from __future__ import annotations

import dataclasses
import math
import typing

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hdbl_mpi.config import config_from_dict
from hdbl_mpi.errors import ConfigError, HdblError, PlanError
from hdbl_mpi.rules.plan import make_plan
from hdbl_mpi.schema import Config


def leaf_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of the config, e.g. train.epochs."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


KEYS = leaf_keys()
BASE = {"dual": {"batch_large": 64}}

odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=3)), max_size=4),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def tree_with(key: str, value) -> dict:
    tree = {"dual": dict(BASE["dual"])}
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return tree


def names_key(message: str, key: str) -> bool:
    return key in message or f"'{key.rsplit('.', 1)[-1]}'" in message or key.rsplit(".", 1)[-1] in message


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=odd_values)
def test_any_value_for_any_key_is_accepted_or_refused_by_name(key, value):
    try:
        config_from_dict(tree_with(key, value))
    except ConfigError as err:
        message = str(err)
        assert message.endswith(".") or message.endswith("?") or "\n" not in message
        # The message names the key it refuses, or (for cross-key rules) the key that must change with it.
        assert names_key(message, key) or "dual." in message or "train." in message or "local." in message, \
            (key, value, message)


@settings(max_examples=200, deadline=None)
@given(section=st.sampled_from(["data", "model", "train", "dual", "ps", "local", "eval", "run", "debug"]),
       name=st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12), value=odd_values)
def test_unknown_keys_are_refused_with_the_valid_ones(section, name, value):
    valid = {f.name for f in dataclasses.fields(typing.get_type_hints(Config)[section])}
    if name in valid:
        return
    tree = tree_with(f"{section}.{name}", value)
    try:
        config_from_dict(tree)
    except ConfigError as err:
        assert f"unknown config key '{section}.{name}'" in str(err) and "Valid keys here:" in str(err)
    else:
        raise AssertionError(f"{section}.{name} was accepted")


@settings(max_examples=200, deadline=None)
@given(section=st.sampled_from(["data", "train", "dual", "ps", "schedule"]), value=odd_values)
def test_a_section_that_is_not_a_mapping_is_refused(section, value):
    if isinstance(value, dict):
        return
    try:
        config_from_dict({"dual": {"batch_large": 64}, section: value} if section != "dual" else {section: value})
    except ConfigError as err:
        assert section in str(err)
    else:
        raise AssertionError(f"section {section} = {value!r} was accepted")


numbers = st.one_of(st.none(), st.integers(-5, 10**7), st.floats(-1e3, 1e3), st.just(math.nan), st.just(math.inf))


@settings(max_examples=500, deadline=None)
@given(D=st.integers(-10, 10**6), n=st.integers(-2, 64), n_s=st.integers(-2, 64), B_L=st.integers(-5, 4096),
       a=numbers, b=numbers, t=st.one_of(st.floats(-2, 5), st.just(math.nan), st.just(math.inf)),
       factor=st.sampled_from(["ratio", "sqrt", "none", "bogus"]))
def test_the_planner_returns_a_plan_or_a_plan_error(D, n, n_s, B_L, a, b, t, factor):
    """Any numbers at all: a consistent plan, or a PlanError that says what to change; never a crash."""
    try:
        plan = make_plan(D, n, n_s, B_L, a, b, t, factor)
    except PlanError as err:
        assert str(err)
        return
    assert plan.d_large >= 1 and plan.steps_large >= 1
    if plan.small:
        assert plan.batch_small >= 1 and plan.d_small >= 1 and math.isfinite(plan.factor_small)
        # The shares cover the data set (up to rounding of each share).
        assert abs(plan.large * plan.d_large + plan.small * plan.d_small - D) <= n


@settings(max_examples=100, deadline=None)
@given(length=st.integers(1, 5), resolutions=st.integers(1, 4))
def test_per_resolution_lists_must_match_the_schedule(length, resolutions):
    from hdbl_mpi.rules.plan import plan_for_config

    tree = {"dual": {"batch_large": [64] * length, "workers": 2}}
    config = config_from_dict(tree)
    try:
        for index in range(resolutions):
            plan_for_config(config, 1000, None, index, resolutions)
    except HdblError as err:
        assert length != resolutions
        assert f"dual.batch_large has {length} values but the schedule has {resolutions} resolutions" in str(err)
    else:
        assert length == resolutions
