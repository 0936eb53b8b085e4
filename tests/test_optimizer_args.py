"""--optimizer-arg on the standalone CLIs: typed from the constructor's signature, one line otherwise."""

from __future__ import annotations

import inspect

import pytest
import torch
from test_image_task import SMALL, image_cli, only_run_dir

from nf_precond_plugin.errors import UserInputError
from nf_precond_plugin.optim import ESGD, PaperESGD
from nf_precond_plugin.optim.factory import OPTIMIZERS, optimizer_arguments
from nf_precond_plugin.tasks.cli_support import parse_optimizer_args


def test_values_take_the_type_of_the_constructor_default():
    parsed = parse_optimizer_args(
        ["clip=1e-3", "betas=0.8,0.95", "d_warmup=0", "update-d-every=5", "probe_seed=7"], ["esgd"]
    )
    assert parsed == {"esgd": {"clip": 1e-3, "betas": (0.8, 0.95), "d_warmup": 0, "update_d_every": 5, "probe_seed": 7}}
    assert isinstance(parse_optimizer_args(["clip=1"], ["esgd"])["esgd"]["clip"], float)  # 1 → 1.0
    assert parse_optimizer_args(["esgd-paper:bias_correction=hvp"], ["esgd-paper", "adam"]) == {
        "esgd-paper": {"bias_correction": "hvp"},
        "adam": {},
    }
    assert parse_optimizer_args(["amsgrad=True"], ["adam"]) == {"adam": {"amsgrad": True}}
    # torch writes some float defaults as the int 0: the annotation says float
    assert parse_optimizer_args(["momentum=0.9"], ["sgd"]) == {"sgd": {"momentum": 0.9}}
    assert parse_optimizer_args(["weight_decay=1e-4"], ["adam"]) == {"adam": {"weight_decay": 1e-4}}
    # a colon inside the value belongs to the value
    assert parse_optimizer_args(["esgd-paper:bias_correction=a:b"], ["esgd-paper"]) == {
        "esgd-paper": {"bias_correction": "a:b"}
    }


@pytest.mark.parametrize(
    "texts, names, fragment",
    [
        (["clip=abc"], ["esgd"], "expected a float like the default 0.003, got 'abc'"),
        (["betas=0.9"], ["esgd"], "expected 2 comma-separated values"),
        (["update_d_every=2.5"], ["esgd"], "expected a int like the default 20"),
        (["clip=1e-3"], ["adam", "esgd"], "adam has no argument clip"),
        (["sgd:momentum=0.5"], ["esgd"], "sgd is not one of the optimizers of this run"),
        (["lr=3"], ["esgd"], "use --lr"),
        (["clip"], ["esgd"], "expected [OPTIMIZER:]NAME=VALUE"),
        (["newton_schulz_dtype=float32"], ["muon"], "expected a number or None"),  # a None default: the annotation
    ],
)
def test_bad_arguments_are_one_line_naming_the_flag(texts, names, fragment):
    with pytest.raises(UserInputError) as caught:
        parse_optimizer_args(texts, names)
    message = str(caught.value)
    assert message.startswith(f"--optimizer-arg {texts[0]}") and fragment in message and "\n" not in message


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_registry_optimizer_lists_its_settable_arguments_with_defaults(name):
    arguments = optimizer_arguments(name)
    assert "lr" not in arguments and "params" not in arguments and "model" not in arguments
    assert all(p.default is not inspect.Parameter.empty for p in arguments.values()), name


def test_the_rules_expose_only_their_own_arguments():
    assert "clip" in optimizer_arguments("esgd") and "clip" not in optimizer_arguments("esgd-paper")
    assert set(optimizer_arguments("esgd-paper")) == set(inspect.signature(PaperESGD).parameters) - {
        "params",
        "lr",
        "process_group",
    }


def test_an_optimizer_arg_reaches_the_optimizer_of_the_run(tmp_path):
    result = image_cli(
        *SMALL, "--epochs", "1", "--optimizer-arg", "clip=0.01", "betas=0.8,0.95", "--output-dir", "out", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    checkpoint = only_run_dir(tmp_path / "out") / "checkpoints" / "esgd.pt"
    # ESGD's default run is schedule-free: the wrapper's state holds ESGD's; the betas given beat
    # the rule that turns a wrapped optimizer's momentum off
    group = torch.load(checkpoint, weights_only=True)["optimizer"]["base"]["param_groups"][0]
    assert group["clip"] == 0.01 and tuple(group["betas"]) == (0.8, 0.95)
    assert inspect.signature(ESGD).parameters["clip"].default != 0.01  # not the default by chance


def test_a_refused_value_stops_before_a_run_directory_exists(tmp_path):
    result = image_cli(*SMALL, "--epochs", "1", "--optimizer-arg", "clip=-1", "--output-dir", "out", cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "clip" in lines[0] and "expected clip > 0" in lines[0], result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_without_an_optimizer_a_relu_pe_field_trains_with_muon_and_a_gaussian_with_esgd(tmp_path):
    """The default follows the H·v density of the field, as the advisor's recommendation does."""
    from nf_precond_plugin.advisor.recommend import FIELD_CHOICES

    for activation, expected in (("relu-pe", FIELD_CHOICES["sparse"]), ("gaussian", FIELD_CHOICES["dense"])):
        result = image_cli(
            *SMALL, "--epochs", "1", "--activation", activation, "--output-dir", activation, cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        assert [p.stem for p in (only_run_dir(tmp_path / activation) / "checkpoints").glob("*.pt")] == [expected]
    assert FIELD_CHOICES == {"dense": "esgd", "sparse": "muon"}
    # Muon needs a hidden weight matrix: a two-layer ReLU-PE field falls back to Adam
    options = ["--epochs", "1", "--activation", "relu-pe", "--num-layers", "2", "--output-dir", "two"]
    result = image_cli(*SMALL, *options, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [p.stem for p in (only_run_dir(tmp_path / "two") / "checkpoints").glob("*.pt")] == ["adam"]


@pytest.mark.parametrize(
    "options, named",
    [
        (["--lr", "inf"], "--lr inf"),
        (["--batch-size", "100000000"], "--batch-size 100000000"),
        (["--schedule", "linear"], "--schedule linear"),
        (["--warmup-epochs", "-1"], "--warmup-epochs -1"),
        (["--decay-epochs", "inf"], "--decay-epochs inf"),
        (["--decay-end", "0"], "--decay-end 0"),  # exponential decay never reaches 0
    ],
)
def test_a_bad_run_option_is_one_line_and_leaves_no_run_directory(tmp_path, options, named):
    result = image_cli(*SMALL, "--epochs", "1", *options, "--output-dir", "out", cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and named in lines[0], result.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
