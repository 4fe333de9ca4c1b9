import pytest

from pipeline.config import (
    Config,
    ConfigError,
    from_dict,
    get_dotted,
    override,
    parse_overrides,
    to_dict,
)


def test_override_parses_types_and_nested_keys():
    cfg = override(
        Config(),
        parse_overrides(
            [
                "optim.lr=0.5",
                "data.augment.translate=2",
                "train.precision=mixed_bfloat16",
                "data.data_dir=/x",
                "model.params.widths=[8,16]",
            ]
        ),
    )
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.data.augment.translate == 2
    assert cfg.train.precision == "mixed_bfloat16"
    assert cfg.data.data_dir == "/x"
    assert cfg.model.params == {"widths": [8, 16]}


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'.*optim.lr"):
        override(Config(), {"optim.lrr": 1})


def test_a_mistyped_key_gets_a_did_you_mean():
    with pytest.raises(ConfigError, match="Did you mean 'optim.lookahead_every_steps'"):
        override(Config(), {"optim.lookahed_every_steps": 3})
    with pytest.raises(ConfigError) as refused:
        override(Config(), {"zzz": 3})
    assert "Did you mean" not in str(refused.value)


def test_bad_type_and_bad_choice_raise():
    with pytest.raises(ConfigError, match="data.batch_size.*int"):
        override(Config(), parse_overrides(["data.batch_size=ten"]))
    with pytest.raises(ConfigError, match="train.epochs.*float"):
        override(Config(), parse_overrides(["train.epochs=ten"]))
    with pytest.raises(ConfigError, match="one of auto, float32, mixed_bfloat16, mixed_float16"):
        override(Config(), {"train.precision": "fp8"})


def test_round_trip_through_dict():
    cfg = override(Config(), {"optim.lr": 0.25, "model.params": {"a": 1}})
    assert from_dict(to_dict(cfg)) == cfg


def test_override_needs_key_value():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["optim.lr"])


def test_whole_params_from_json_text_or_a_clear_error():
    cfg = override(Config(), parse_overrides(['model.params={"size": "small", "depth": 1}']))
    assert cfg.model.params == {"size": "small", "depth": 1}
    with pytest.raises(ConfigError, match="model.params must be a JSON object.*model.params.NAME"):
        override(Config(), parse_overrides(["model.params=small"]))


def test_allowed_values_come_from_the_field_types():
    from pipeline.config import choices, valid_keys

    assert choices("train.precision") == ("auto", "float32", "mixed_bfloat16", "mixed_float16")
    assert choices("data.augment.flip") == ("none", "random", "alternate")
    literal_keys = [k for k in valid_keys() if k != "model.params" and choices(k)]
    assert len(literal_keys) == 11
    for key in literal_keys:  # every default is allowed, every allowed value is accepted
        default = Config()
        for part in key.split("."):
            default = getattr(default, part)
        assert default in choices(key), key
        for value in choices(key):
            assert override(Config(), {key: value}) is not None
    with pytest.raises(ConfigError, match="train.tta must be one of none, flip, flip_translate"):
        override(Config(), parse_overrides(["train.tta=mirror"]))


def test_optional_and_boolean_fields_parse_from_text():
    texts = ["data.data_dir=none", "train.jit_compile=true", "train.out_dir=x"]
    cfg = override(Config(), parse_overrides(texts))
    assert cfg.data.data_dir is None and cfg.train.jit_compile is True
    assert cfg.train.out_dir == "x"
    with pytest.raises(ConfigError, match="train.jit_compile expects bool"):
        override(Config(), {"train.jit_compile": 1})


def test_cli_choices_are_the_config_types():
    from pipeline.config import choices
    from scripts import bench, train

    with pytest.raises(SystemExit):
        train.parse(["--precision", "fp8"])
    assert train.parse(["--precision", "mixed_float16"]).precision == "mixed_float16"
    args = bench.parse(["train", "--precision", choices("train.precision")[-1]])
    assert args.precision == "mixed_float16"


def test_a_recipe_keeps_what_is_trained_and_drops_where_it_ran():
    from pipeline.config import RUNTIME_KEYS, recipe, valid_keys

    ran = override(
        Config(),
        {
            "optim.lr": 0.3,
            "train.seed": 4,
            "train.strategy": "multi_worker",
            "train.out_dir": "/somewhere",
            "train.export": False,
        },
    )
    kept = recipe(ran)
    assert (kept.optim.lr, kept.train.seed) == (0.3, 4)
    assert (kept.train.strategy, kept.train.out_dir, kept.train.export) == ("default", None, True)
    assert all(k in valid_keys() for k in RUNTIME_KEYS)


def test_a_version_1_config_reads_with_its_durations_renamed():
    old = to_dict(Config())
    old["train"]["steps_per_epoch"] = old["train"].pop("max_steps_per_epoch")
    old["train"]["checkpoint_every"] = old["train"].pop("checkpoint_every_epochs")
    old["optim"]["lookahead_every"] = old["optim"].pop("lookahead_every_steps")
    old["train"].update(steps_per_epoch=7, checkpoint_every=3)
    old["optim"]["lookahead_every"] = 5
    for version in ({"version": 1}, {}):  # files from before versions existed are version 1
        cfg = from_dict({**old, **version})
        assert cfg.train.max_steps_per_epoch == 7 and cfg.train.checkpoint_every_epochs == 3
        assert cfg.optim.lookahead_every_steps == 5
    with pytest.raises(ConfigError, match="is now"):  # a version 2 file has the new names
        from_dict({**old, "version": 2})


def test_an_old_key_names_its_new_name():
    with pytest.raises(ConfigError, match="'train.steps_per_epoch' is now 'train.max_steps_"):
        override(Config(), {"train.steps_per_epoch": 5})


def test_a_wrong_value_names_the_type_expected_choices_and_none_included():
    # Planted by mutation testing (docs/mutation.md): the type in the message went untested.
    messages = []
    for change in ({"train.precision": "fp8"}, {"train.epochs": "abc"}, {"data.data_dir": 3}):
        with pytest.raises(ConfigError) as wrong:
            override(Config(), change)
        messages.append(str(wrong.value))
    assert messages[0].startswith(
        "train.precision must be one of auto, float32, mixed_bfloat16, mixed_float16; got 'fp8'"
    )
    assert messages[1].startswith("train.epochs: cannot parse 'abc' as float")
    assert messages[2].startswith("data.data_dir expects str or None, got 3")


def test_a_set_value_may_itself_hold_equals_signs():
    # Planted by mutation testing (docs/mutation.md): split at the first "=" only.
    assert parse_overrides(["data.data_dir=/data/a=b=c"]) == {"data.data_dir": "/data/a=b=c"}


def test_dotted_keys_are_read_from_configs_and_from_their_json_alike():
    cfg = override(Config(), {"optim.lr": 0.25, "model.params": {"widths": [8]}})
    as_json = to_dict(cfg)
    for key, value in [("optim.lr", 0.25), ("model.params", {"widths": [8]})]:
        assert get_dotted(cfg, key) == get_dotted(as_json, key) == value
    # An older config.json may lack a key: None, where a config's missing field is an error.
    assert get_dotted({"optim": {}}, "optim.lr") is None
    assert get_dotted({}, "optim.lr") is None
    with pytest.raises(AttributeError):
        get_dotted(cfg, "optim.lrr")
