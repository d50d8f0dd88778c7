"""The run settings train and search share (tas.cli.RunSettings): one set of fields, one set of checks."""
import pytest

from tas.errors import TasError
from tas.nas.config import SearchConfig
from tas.train.config import TrainConfig


@pytest.mark.parametrize("config", [TrainConfig, SearchConfig])
@pytest.mark.parametrize("values, flag", [
    ({"workers": -1}, "--workers"), ({"device": "tpu"}, "--device"), ({"output": ""}, "--output"),
    ({"nan_policy": "ignore"}, "--nan-policy"), ({"checkpoint_every": -5}, "--checkpoint-every"),
    ({"resume": True, "overwrite": True}, "--resume"),
])
def test_both_commands_refuse_the_same_bad_run_settings(config, values, flag):
    with pytest.raises(TasError, match=f"^{flag}"):
        config(**values).validate()


def test_each_command_keeps_its_own_output_default():
    assert (TrainConfig().output, SearchConfig().output) == ("runs/teacher", "runs/search")
