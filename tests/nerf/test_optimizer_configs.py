"""nerfstudio's optimizer configs copy the curvature optimizers' constructors; the copies must agree."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

pytest.importorskip("nerfstudio")

from nerfstudio.engine.optimizers import OptimizerConfig  # noqa: E402

from nf_precond_plugin.nerf import methods  # noqa: E402
from nf_precond_plugin.nerf.optimizers import (  # noqa: E402
    CURVATURE_OPTIMIZER_CONFIGS,
    ESGD_RULE_CONFIGS,
    ESGDOptimizerConfig,
    PaperESGDOptimizerConfig,
    with_chosen_rule,
)
from nf_precond_plugin.optim.base import CurvatureOptimizer  # noqa: E402

# Fields of nerfstudio's OptimizerConfig that are not constructor arguments: the class to build,
# and max_norm, which nerfstudio pops before building and applies as gradient clipping; the ESGD
# configs' ``rule``, which picks the class.
NOT_CONSTRUCTOR_ARGUMENTS = {"_target", "max_norm", "rule"}
# Constructor arguments that are not settings: the process group is a live object, and the
# default (every device of the run) is the one the trainer needs.
NOT_CONFIG_FIELDS = {"params", "process_group"}


@pytest.mark.parametrize("config_type", CURVATURE_OPTIMIZER_CONFIGS, ids=lambda t: t.__name__)
def test_every_config_field_is_a_constructor_parameter_with_the_same_default(config_type):
    target = config_type._target
    assert issubclass(target, CurvatureOptimizer)
    parameters = inspect.signature(target).parameters
    config = config_type()
    own_fields = {f.name for f in dataclasses.fields(config_type)} - NOT_CONSTRUCTOR_ARGUMENTS
    assert own_fields, config_type
    for name in own_fields:
        assert name in parameters, f"{config_type.__name__}.{name} is not an argument of {target.__name__}"
        assert getattr(config, name) == parameters[name].default, f"{config_type.__name__}.{name}"
    # ... and every constructor argument but params is reachable from the command line
    assert set(parameters) - NOT_CONFIG_FIELDS == own_fields
    # nerfstudio builds the optimizer exactly like this: the config's fields as keyword arguments
    built = target([torch.nn.Parameter(torch.zeros(2))], **{name: getattr(config, name) for name in own_fields})
    assert isinstance(built, target)


def test_the_base_config_fields_are_the_ones_excluded():
    assert {f.name for f in dataclasses.fields(OptimizerConfig)} - {"lr", "eps", "weight_decay"} == (
        NOT_CONSTRUCTOR_ARGUMENTS - {"rule"}
    )


@pytest.mark.parametrize("rule", list(ESGD_RULE_CONFIGS))
def test_each_esgd_config_names_its_own_rule(rule):
    config = ESGD_RULE_CONFIGS[rule]()
    assert config.rule == rule and with_chosen_rule(config) is config


def test_switching_rule_keeps_what_was_set_and_takes_the_other_rules_defaults():
    """gaussian-esgd with --optimizers.fields.optimizer.rule paper: the paper's defaults, the user's d_warmup."""
    clipped = ESGDOptimizerConfig(clip=1e-3, sparse_threshold=0.3, d_warmup=7)
    clipped.rule = "paper"  # as tyro sets it from the command line, after the method built the config
    paper = with_chosen_rule(clipped)
    assert type(paper) is PaperESGDOptimizerConfig
    expected = {**dataclasses.asdict(PaperESGDOptimizerConfig()), "d_warmup": 7}
    assert dataclasses.asdict(paper) == expected
    back = PaperESGDOptimizerConfig(lr=0.2)
    back.rule = "clipped"
    assert dataclasses.asdict(with_chosen_rule(back)) == {**dataclasses.asdict(ESGDOptimizerConfig()), "lr": 0.2}


def test_methods_override_only_what_they_tune():
    """The method presets change only what the README says they tune on fern."""
    tuned = {
        "gaussian-esgd": set(methods.ESGD_CLIPPED),
        "gaussian-esgd-cpu": set(methods.ESGD_CLIPPED),
        "gaussian-esgd-paper": {"lr"},
        "gaussian-esgd-paper-cpu": {"lr"},
        "gaussian-adahessian": {"lr"},
    }
    for name, allowed in tuned.items():
        optimizer = getattr(methods, name.replace("-", "_")).config.optimizers["fields"]["optimizer"]
        fresh = type(optimizer)()
        changed = {
            f.name for f in dataclasses.fields(optimizer) if getattr(optimizer, f.name) != getattr(fresh, f.name)
        }
        assert changed <= allowed, (name, changed)


def test_the_readme_method_table_is_the_one_generated_from_the_configs():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert methods.method_table() in readme


def test_every_registered_method_is_in_the_table():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    registered = pyproject["project"]["entry-points"]["nerfstudio.method_configs"]
    assert set(registered) == set(methods.METHODS)
    for name, target in registered.items():
        assert getattr(methods, target.split(":")[1]) is methods.METHODS[name]
