"""Config parsing: defaults, overrides, types, and the bundled configs."""

from __future__ import annotations

import pytest
from vizoo.experiments.cli import bundled_configs
from vizoo.experiments.config import RunConfig, load_config, parse_config
from vizoo.experiments.report import to_toml
from vizoo.models.errors import ConfigError
from vizoo.models.gmm import GMMArgs


def test_defaults_fill_in():
    cfg = parse_config({"name": "x"})
    assert cfg.model == "gmm" and cfg.model_args == GMMArgs() and cfg.svi.elbo == "Trace_ELBO"


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[svi]\nsteps = 10\n')
    cfg = load_config(path, ["svi.lr=0.5", "svi.steps=3", "guides=[\"amortised\"]", "data.name=iris", "guide_args.hidden=[8, 4]"])
    assert cfg.name == "c" and cfg.svi.lr == 0.5 and cfg.svi.steps == 3
    assert cfg.guides == ("amortised",) and cfg.data.name == "iris" and cfg.guide_args.hidden == (8, 4)


def test_integer_accepted_where_a_float_is_expected():
    assert parse_config({"name": "x", "svi": {"lr": 1}}).svi.lr == 1.0


@pytest.mark.parametrize("value", [True, "1", [1]])
def test_bool_string_list_are_not_numbers(value):
    with pytest.raises(ConfigError, match="svi.lr must be a number"):
        parse_config({"name": "x", "svi": {"lr": value}})


def test_name_must_be_a_plain_folder_name():
    with pytest.raises(ConfigError, match="name must be a plain folder name"):
        parse_config({"name": "../escape"})


@pytest.mark.parametrize("name", sorted(bundled_configs()))
def test_bundled_configs_parse_and_round_trip(name):
    cfg = load_config(bundled_configs()[name])
    assert isinstance(cfg, RunConfig)
    assert parse_config(_reload(to_toml(cfg.to_dict()))) == cfg


def _reload(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)
