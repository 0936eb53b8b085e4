"""nerfstudio's optimizer configs copy the curvature optimizers' constructors; the copies must agree."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch

pytest.importorskip("nerfstudio")

from nerfstudio.engine.optimizers import OptimizerConfig  # noqa: E402

from nf_precond_plugin.nerf import methods  # noqa: E402
from nf_precond_plugin.nerf.optimizers import CURVATURE_OPTIMIZER_CONFIGS, ESGDOptimizerConfig  # noqa: E402
from nf_precond_plugin.optim.base import CurvatureOptimizer  # noqa: E402
from nf_precond_plugin.optim.esgd import RULE_DEFAULTS  # noqa: E402

# Fields of nerfstudio's OptimizerConfig that are not constructor arguments: the class to build,
# and max_norm, which nerfstudio pops before building and applies as gradient clipping.
NOT_CONSTRUCTOR_ARGUMENTS = {"_target", "max_norm"}
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
    resolved = RULE_DEFAULTS[config.rule] if config_type is ESGDOptimizerConfig else {}
    for name in own_fields:
        assert name in parameters, f"{config_type.__name__}.{name} is not an argument of {target.__name__}"
        default = parameters[name].default
        if default is None and resolved.get(name) is not None:
            default = resolved[name]  # a None default means the rule's; the config resolves it eagerly
        assert getattr(config, name) == default, f"{config_type.__name__}.{name}"
    # ... and every constructor argument but params is reachable from the command line
    assert set(parameters) - NOT_CONFIG_FIELDS == own_fields
    # nerfstudio builds the optimizer exactly like this: the config's fields as keyword arguments
    built = target([torch.nn.Parameter(torch.zeros(2))], **{name: getattr(config, name) for name in own_fields})
    assert isinstance(built, target)


def test_the_base_config_fields_are_the_ones_excluded():
    assert {f.name for f in dataclasses.fields(OptimizerConfig)} - {"lr", "eps", "weight_decay"} == (
        NOT_CONSTRUCTOR_ARGUMENTS
    )


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
        fresh = type(optimizer)(**({"rule": optimizer.rule} if hasattr(optimizer, "rule") else {}))
        changed = {
            f.name for f in dataclasses.fields(optimizer) if getattr(optimizer, f.name) != getattr(fresh, f.name)
        }
        assert changed <= allowed, (name, changed)
