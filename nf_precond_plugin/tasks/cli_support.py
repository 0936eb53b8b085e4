"""What the standalone CLIs share: ``--config FILE`` defaults, ``--compare``, one-line errors."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from nf_precond_plugin.errors import UserInputError, exit_code_of, reported_as_one_line

ConfigT = TypeVar("ConfigT")


def config_defaults(config_type: type[ConfigT], argv: list[str]) -> tuple[ConfigT, list[str]]:
    """Pop ``--config FILE`` from argv and return the dataclass it describes (flags still override)."""
    argv = [part for arg in argv for part in (arg.split("=", 1) if arg.startswith("--config=") else [arg])]
    if "--config" not in argv:
        return config_type(), argv
    index = argv.index("--config")
    if index + 1 >= len(argv):
        raise UserInputError("--config: expected a YAML file path")
    path = Path(argv[index + 1])
    del argv[index : index + 2]
    if not path.is_file():
        raise UserInputError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise UserInputError(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserInputError(f"--config {path}: expected a mapping of option names to values")
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserInputError(
            f"--config {path}: unknown option(s) {', '.join(unknown)}; expected some of {', '.join(fields)}"
        )
    for name, value in values.items():
        if value is not None and "Path" in str(fields[name].type):
            values[name] = Path(value)
    return config_type(**values), argv


def split_names(text: str, allowed: tuple[str, ...], option: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if not names or unknown:
        raise UserInputError(
            f"{option}: unknown {', '.join(unknown) or '(empty)'}; "
            f"expected a comma-separated subset of {', '.join(allowed)}"
        )
    if len(set(names)) != len(names):
        raise UserInputError(f"{option}: each optimizer may appear once, got {text}")
    return names


def _literal(text: str) -> Any:
    """A Python literal (1e-3, 0.8,0.95, True, None), or the bare text (a choice such as hvp)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _typed(value: Any, default: Any, where: str, annotation: Any = inspect.Parameter.empty) -> Any:
    """``value`` converted to the type of the constructor's ``default`` (its annotation where the
    default says too little: None, or an int 0 standing for a float), or UserInputError."""
    kind = type(default)
    annotated = str(annotation)
    if default is None or default is inspect.Parameter.empty:
        if isinstance(value, str) and not any(word in annotated for word in ("str", "Literal")):
            raise UserInputError(f"{where}: expected a number or None ({annotated}), got {value!r}")
        return value
    if kind is int and "float" in annotated and isinstance(value, float):
        return value
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is tuple:
        if isinstance(value, (tuple, list)) and len(value) == len(default):
            return tuple(_typed(item, item_default, where) for item, item_default in zip(value, default))
    elif kind is str:
        if isinstance(value, str):
            return value
    else:
        return value
    shown = f"{len(default)} comma-separated values" if kind is tuple else f"a {kind.__name__}"
    raise UserInputError(f"{where}: expected {shown} like the default {default!r}, got {value!r}")


def parse_optimizer_args(texts: tuple[str, ...] | list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    """``--optimizer-arg [OPTIMIZER:]NAME=VALUE …`` as constructor arguments per optimizer name,
    each typed like its constructor default; one-line UserInputError for anything else."""
    from nf_precond_plugin.optim.factory import NOT_OPTIMIZER_ARGS, optimizer_arguments

    parsed: dict[str, dict[str, Any]] = {name: {} for name in names}
    for text in texts:
        where = f"--optimizer-arg {text}"
        name_part = text.partition("=")[0]  # a colon in the value is the value's
        target, assignment = (
            (name_part.partition(":")[0], text[len(name_part.partition(":")[0]) + 1 :])
            if (":" in name_part)
            else ("", text)
        )
        key, equals, raw = assignment.partition("=")
        key = key.strip().replace("-", "_")
        if not equals or not key:
            raise UserInputError(f"{where}: expected [OPTIMIZER:]NAME=VALUE, e.g. clip=1e-3 or esgd:betas=0.8,0.95")
        if target and target not in names:
            raise UserInputError(f"{where}: {target} is not one of the optimizers of this run ({', '.join(names)})")
        if key in NOT_OPTIMIZER_ARGS:
            raise UserInputError(f"{where}: {key} is not an optimizer setting" + (" (use --lr)" if key == "lr" else ""))
        for name in [target] if target else names:
            accepted = optimizer_arguments(name)
            if key not in accepted:
                hint = (
                    ""
                    if target or len(names) == 1
                    else f"; prefix it with the optimizer it is for, e.g. {names[-1]}:{key}=…"
                )
                raise UserInputError(
                    f"{where}: {name} has no argument {key}; expected one of {', '.join(accepted) or '(none)'}{hint}"
                )
            parameter = accepted[key]
            parsed[name][key] = _typed(_literal(raw.strip()), parameter.default, where, parameter.annotation)
    return parsed


def run_cli(main: Callable[[list[str]], Any], argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run ``main`` with the project's one error idiom; returns the exit status."""

    def guarded() -> None:
        with reported_as_one_line(prog or Path(sys.argv[0]).name):
            main(sys.argv[1:] if argv is None else argv)

    return exit_code_of(guarded)


RESUME_MAY_CHANGE = ("resume", "device")
"""Options a resumed run may set differently from its record: where to resume from, and where to
train (checkpoints hold replicated CPU-loadable state, so a run resumes on any device)."""
RESUME_MAY_PIN = ("lr", "schedule")
"""Defaults a record holds as resolved; one that left them unset (each optimizer's default, as
records did before they were pinned) takes them from the flags, so that a run begun under an
earlier default resumes with ``--lr``/``--schedule`` set to it."""


def parse_config(config_type: type[ConfigT], argv: list[str], prog: str) -> ConfigT:
    """The run's options: ``--config FILE`` defaults, then flags; with ``--resume DIR``, the run's
    own record (DIR/config.yaml), where a flag that contradicts it is refused in one line."""
    import tyro

    from nf_precond_plugin.training.reports import plain

    resume = _resume_dir(argv)
    if resume is None:
        defaults, argv = config_defaults(config_type, argv)
        return tyro.cli(config_type, args=argv, default=defaults, prog=prog)
    if any(arg == "--config" or arg.startswith("--config=") for arg in argv):
        raise UserInputError(f"--config with --resume {resume}: a resumed run takes its options from its own record")
    record_path = resume / "config.yaml"
    if not record_path.is_file():
        raise UserInputError(f"--resume {resume}: no config.yaml there (expected a run directory this program wrote)")
    try:
        recorded = yaml.safe_load(record_path.read_text())
        recorded_config = _config_from_record(config_type, recorded, record_path)
    except yaml.YAMLError as error:
        raise UserInputError(
            f"--resume {resume}: {record_path} is not valid YAML ({error.__class__.__name__})"
        ) from None
    config = tyro.cli(config_type, args=argv, default=recorded_config, prog=prog)
    given_config, recorded_config = _with_absolute_inputs(config), _with_absolute_inputs(recorded_config)
    for item in dataclasses.fields(config_type):
        if item.name in RESUME_MAY_CHANGE:
            continue
        # compared as the record holds them (paths as strings, tuples as lists)
        given, kept = plain(getattr(given_config, item.name)), plain(getattr(recorded_config, item.name))
        if given != kept and not (kept is None and item.name in RESUME_MAY_PIN):
            flag = "--" + item.name.replace("_", "-")
            raise UserInputError(
                f"{flag} {given}: this run was started with {flag} {kept} ({record_path}); "
                f"resume it without {flag}, or start a new run"
            )
    return config


def _with_absolute_inputs(config: ConfigT) -> ConfigT:
    """``config`` with its input files (--image, --mesh, …) as absolute paths: the run's record,
    which resumes from any working directory, and a path given either way compares equal. (Errors
    name the files as the user typed them.)"""
    outputs = {"output_dir", "resume"}
    changes = {
        item.name: Path(value).resolve()
        for item in dataclasses.fields(config)
        if item.name not in outputs and isinstance(value := getattr(config, item.name), Path)
    }
    return dataclasses.replace(config, **changes) if changes else config


def _resume_dir(argv: list[str]) -> Path | None:
    for index, arg in enumerate(argv):
        if arg == "--resume" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if arg.startswith("--resume="):
            return Path(arg.split("=", 1)[1])
    return None


def _config_from_record(config_type: type[ConfigT], recorded: Any, record_path: Path) -> ConfigT:
    """The dataclass a run recorded in its config.yaml (paths and tuples restored)."""
    fields = {item.name: item for item in dataclasses.fields(config_type)}
    if not isinstance(recorded, dict) or not set(recorded) <= set(fields):
        unknown = sorted(set(recorded) - set(fields)) if isinstance(recorded, dict) else []
        raise UserInputError(
            f"--resume: {record_path} is not a record of this program's options"
            + (f" (unknown: {', '.join(unknown)})" if unknown else "")
        )
    values = {}
    for name, value in recorded.items():
        kind = str(fields[name].type)
        if value is not None and "Path" in kind:
            value = Path(value)
        elif isinstance(value, list) and "tuple" in kind:
            value = tuple(value)
        values[name] = value
    return config_type(**values)


def parse_schedule(config: Any, names: list[str]) -> dict[str, Any]:
    """``--schedule`` and its options as a ``ScheduleChoice`` for every optimizer of the run (none
    given: each optimizer's default), with one-line errors naming the option."""
    from nf_precond_plugin.training.schedules import SCHEDULES, ScheduleChoice

    if config.schedule is not None and config.schedule not in SCHEDULES:
        raise UserInputError(f"--schedule {config.schedule}: expected one of {', '.join(SCHEDULES)}")
    if not (config.warmup_epochs >= 0 and math.isfinite(config.warmup_epochs)):
        raise UserInputError(f"--warmup-epochs {config.warmup_epochs:g}: expected a number of epochs >= 0")
    if config.warmup_epochs > config.epochs:
        raise UserInputError(f"--warmup-epochs {config.warmup_epochs:g}: longer than the run ({config.epochs} epochs)")
    if not (config.decay_epochs > 0 and math.isfinite(config.decay_epochs)):
        raise UserInputError(f"--decay-epochs {config.decay_epochs:g}: expected a finite number of epochs > 0")
    zero_allowed = config.schedule == "cosine"  # exponential decay never reaches 0
    if not (0 <= config.decay_end <= 1 and (zero_allowed or config.decay_end > 0)):
        interval = "[0, 1] for cosine" if config.schedule == "cosine" else "(0, 1] (cosine alone may end at 0)"
        raise UserInputError(f"--decay-end {config.decay_end:g}: expected a fraction of the initial lr in {interval}")
    from nf_precond_plugin.optim.factory import optimizer_spec

    return {
        name: ScheduleChoice(
            config.schedule or optimizer_spec(name).schedule,
            warmup_epochs=config.warmup_epochs,
            decay_epochs=config.decay_epochs,
            end_fraction=config.decay_end,
        )
        for name in names
    }


def check_optimizers_build(
    task: Any,
    names: list[str],
    rates: dict[str, float],
    optimizer_args: dict[str, dict[str, Any]],
    lr_given: bool = True,
    schedules: dict[str, Any] | None = None,
) -> None:
    """Build every optimizer of the run once on the task's model, as the run will (under its
    schedule), before anything is written, so that an lr or argument its constructor refuses is
    one line naming the option."""
    from nf_precond_plugin.training.runner import build_scheduled_optimizer, constructor_arguments

    for name in names:
        overrides = constructor_arguments(task, optimizer_args, name)
        averages = schedules is not None and name in schedules and schedules[name].averages_weights
        try:
            build_scheduled_optimizer(name, task.build_model(), rates[name], averages, overrides)
        except (ValueError, TypeError) as error:
            given = " ".join(f"{key}={value!r}" for key, value in optimizer_args.get(name, {}).items())
            options = [f"--optimizer {name}"] + ([f"--lr {rates[name]:g}"] if lr_given else [])
            options += [f"--optimizer-arg {given}"] if given else []
            raise UserInputError(f"{' / '.join(options)}: {name} refuses it ({error})") from None


def standalone_main(
    config_type: type, task_factory: Callable[[Any], Any], prog: str, argv: list[str]
) -> dict[str, Any]:
    """Parse (YAML defaults, then flags), build the task and run it with every requested optimizer."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from nf_precond_plugin.commands import printed_command
    from nf_precond_plugin.optim.factory import OPTIMIZERS, default_lr, default_optimizer
    from nf_precond_plugin.runtime import configure_entry_point
    from nf_precond_plugin.training import RunSettings, run_task
    from nf_precond_plugin.training.distributed import join_process_group, leave_process_group, training_device

    config = parse_config(config_type, argv, prog)
    configure_entry_point()
    option = "--compare" if config.compare else "--optimizer"
    if not (config.compare or config.optimizer):  # recorded as resolved, so a resumed run keeps it
        config = dataclasses.replace(config, optimizer=default_optimizer(config.activation, config.num_layers))
    names = split_names(config.compare or config.optimizer, OPTIMIZERS, option)
    rates = {name: config.lr if config.lr is not None else default_lr(name, config.activation) for name in names}
    optimizer_args = parse_optimizer_args(config.optimizer_arg, names)
    schedules = parse_schedule(config, names)
    task = task_factory(config)
    check_optimizers_build(task, names, rates, optimizer_args, lr_given=config.lr is not None, schedules=schedules)
    # the record holds the defaults as resolved where one value serves every optimizer of the run,
    # so that a resumed run keeps them when a default changes
    if config.lr is None and len(set(rates.values())) == 1:
        config = dataclasses.replace(config, lr=next(iter(rates.values())))
    if config.schedule is None and len({choice.name for choice in schedules.values()}) == 1:
        config = dataclasses.replace(config, schedule=next(iter(schedules.values())).name)
    settings = RunSettings(
        optimizers=names,
        learning_rates=rates,
        epochs=config.epochs,
        batch_size=config.batch_size,
        eval_every=config.eval_every,
        seed=config.seed,
        output_dir=config.output_dir,
        resume=config.resume,
        resume_command=lambda run_dir: printed_command("python", sys.argv[0], "--resume", run_dir),
        optimizer_args=optimizer_args,
        schedules=schedules,
        config=dataclasses.asdict(_with_absolute_inputs(config)),  # the record resumes from anywhere
        device=str(training_device(config.device)),
    )
    ranks = join_process_group(torch.device(settings.device).type)  # gloo on the CPU, nccl on CUDA
    finished = False
    try:
        summary = run_task(task, settings)
        finished = True
    finally:
        leave_process_group(finished)
    if not ranks.is_main:
        return summary

    console = Console(stderr=True)
    table = Table(title=f"{task.name}: {task.describe().get('source', '')}")
    for column in (
        "optimizer",
        "lr",
        f"final {task.metric}",
        f"best {task.metric}",
        "epochs",
        "s/step",
        "optimizer s/step",
    ):
        table.add_column(column, justify="right")
    for name, result in summary["optimizers"].items():
        final = result["final"].get(task.metric)
        table.add_row(
            name,
            f"{result['lr']:g}",
            f"{final:.3f}" if final is not None else "-",
            f"{result['best']:.3f}" if result["best"] is not None else "-",
            str(summary["epochs"]),
            f"{result['seconds_per_step'] * 1e3:.2f} ms",
            f"{result['optimizer_step_seconds'] / max(result['steps'], 1) * 1e3:.2f} ms",
        )
    console.print(table)
    console.print(f"run directory: {summary['run_dir']}")
    return summary
