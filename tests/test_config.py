"""Config machinery: YAML + dotted overrides into frozen dataclasses, errors that name the key."""

import dataclasses
import enum

import pytest

from justrl_jax.config_io import ConfigError, apply_overrides, dump_yaml, from_dict, load_yaml, to_dict


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Inner:
    rate: float = 1e-6
    steps: int = 10
    color: Color = Color.RED

    def __post_init__(self):
        if self.rate <= 0:
            raise ValueError(f"inner.rate must be > 0, got {self.rate}")


@dataclasses.dataclass(frozen=True)
class Outer:
    name: str = "x"
    flag: bool = False
    inner: Inner = dataclasses.field(default_factory=Inner)
    ids: tuple[int, ...] = (1,)
    path: str | None = None


def test_round_trip_and_overrides(tmp_path):
    data = {"name": "run", "inner": {"rate": 2, "color": "blue"}, "ids": [3, 4]}
    data = apply_overrides(data, ["inner.steps=20", "flag=true", "path=/tmp/x", "inner.rate=1e-5"])
    cfg = from_dict(Outer, data)
    assert cfg == Outer("run", True, Inner(1e-5, 20, Color.BLUE), (3, 4), "/tmp/x")
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    assert from_dict(Outer, load_yaml(path)) == cfg
    assert to_dict(cfg)["inner"]["color"] == "blue"


@pytest.mark.parametrize(
    "data, match",
    [
        ({"inner": {"rte": 1.0}}, "unknown config key 'inner.rte'"),
        ({"inner": {"steps": "ten"}}, "inner.steps must be an integer"),
        ({"inner": {"color": "green"}}, r"inner.color must be one of \['red', 'blue'\]"),
        ({"flag": "yes"}, "flag must be true or false"),
        ({"inner": {"rate": -1.0}}, "inner.rate must be > 0"),
        ({"inner": 3}, "inner must be a section"),
    ],
)
def test_bad_values_name_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(Outer, data)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["inner.steps"])
    with pytest.raises(ConfigError, match="'name' is a value"):
        apply_overrides({"name": "x"}, ["name.sub=1"])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
