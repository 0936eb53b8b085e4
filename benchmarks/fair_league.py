"""The fair league: every optimizer at its best learning rate *and* schedule, on many photos.

A cell is one (field, photo, optimizer, schedule, lr, seed) run of ``--epochs`` epochs; it writes
one JSON file (the PSNR after every epoch, the seconds, whether it diverged) and is skipped when
that file exists, so the league resumes where it stopped and several processes (one thread each)
can share the work: each takes the cells whose index ≡ its ``--worker`` modulo ``--workers``.
Every cell of a (field, photo, seed) starts from the same initial weights and sees the same
minibatches (the standalone runner's build and epoch code, ``training.runner``).

    # the sweep: every entry at each lr of its grid, on a few photos
    python benchmarks/fair_league.py run --stage sweep --fields gaussian,sine --photos 00,05
    # the finals: each entry at the lr the sweep chose (mean over its photos at the last epoch)
    python benchmarks/fair_league.py run --stage final --fields gaussian --photos all --seeds 0,1
    python benchmarks/fair_league.py report --fields gaussian,sine     # markdown tables + JSON summary

Photos: the 16 DIV2K photographs in ../shared/data/div2k/test_data (512², so no crop), resized to
``--size``. Results: ``benchmarks/results/fair_league/<stage>/<field>/<photo>/<cell>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from league import cpu_name  # benchmarks/ is on the path of a script run from it

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "div2k" / "test_data"
RESULTS = ROOT / "benchmarks" / "results" / "fair_league"
REPORT_EPOCHS = (1, 2, 5, 10, 20, 30, 50)
FIRST_ORDER = ("adam", "sf-adamw", "muon")
"""The optimizers of the first-order recipes the project's claim is held against."""


@dataclass(frozen=True)
class Entry:
    """One contender: an optimizer under one schedule, with the lrs its sweep tries."""

    optimizer: str
    schedule: str
    lrs: tuple[float, ...]
    args: dict[str, Any] = field(default_factory=dict)
    warmup_fraction: float = 0.0
    """Linear warm-up as a fraction of the run (schedule-free AdamW's recipe: 2 %)."""
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or f"{self.optimizer}/{self.schedule}"


ADAM_LRS = (1e-4, 3e-4, 1e-3, 3e-3)  # 1e-4 joined after 3e-4 won at the grid's edge (constant, sf-adamw)
ENTRIES: tuple[Entry, ...] = (
    Entry("adam", "constant", ADAM_LRS),
    Entry("adam", "inverse-time", ADAM_LRS),
    Entry("adam", "exponential", ADAM_LRS),
    Entry("adam", "cosine", ADAM_LRS),
    Entry("sf-adamw", "constant", ADAM_LRS, warmup_fraction=0.02, label="sf-adamw"),
    # the INR paper's Muon recipe: Muon on the hidden weights, Adam 1e-3 on the rest, both cosine
    Entry("muon", "cosine", (0.002, 0.005, 0.02, 0.05)),
    Entry("soap", "cosine", (3e-4, 1e-3, 3e-3, 1e-2)),
    Entry("kfac", "cosine", (1e-4, 3e-4, 1e-3)),
    Entry("esgd-paper", "constant", (0.05, 0.15, 0.5)),
    Entry("esgd", "inverse-time", (0.5, 1.0, 2.0, 4.0), label="esgd (default)"),  # 4: 2 won at the edge
    Entry("esgd", "cosine", (0.5, 1.0, 2.0)),
    # curvature inside schedule-free averaging, ESGD's own momentum off (β₁ = 0)
    Entry(
        "esgd", "schedule-free", (0.25, 0.5, 1.0, 2.0, 4.0), args={"betas": (0.0, 0.9)}, label="esgd/schedule-free β₁=0"
    ),  # 0.25, 0.5: 1 won at the edge
)


def entry_by_name(name: str) -> Entry:
    return next(entry for entry in ENTRIES if entry.name == name)


def cell_path(stage: str, field_name: str, photo: str, entry: Entry, lr: float, seed: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", entry.name.replace("β₁", "b1")).strip("_")  # ASCII file names
    return RESULTS / stage / field_name / photo / f"{slug}__lr{lr:g}__seed{seed}.json"


def run_cell(field_name: str, photo: str, entry: Entry, lr: float, seed: int, size: int, epochs: int) -> dict:
    import torch
    from league import LeagueTask, train

    from nf_precond_plugin.tasks.image import ImageConfig, ImageTask
    from nf_precond_plugin.training.schedules import ScheduleChoice

    config = ImageConfig(image=PHOTOS / f"{photo}.png", activation=field_name, size=size, seed=seed)
    league = LeagueTask(field_name, ImageTask(config), "psnr", config.batch_size)
    torch.manual_seed(seed)
    initial = league.task.build_model().state_dict()
    schedule = ScheduleChoice(entry.schedule, warmup_epochs=entry.warmup_fraction * epochs)
    result = train(league, entry.optimizer, lr, epochs, seed, initial, Path("/nonexistent"), schedule, entry.args)
    return {
        "field": field_name,
        "photo": photo,
        "entry": entry.name,
        "optimizer": entry.optimizer,
        "schedule": entry.schedule,
        "args": {k: list(v) if isinstance(v, tuple) else v for k, v in entry.args.items()},
        "lr": lr,
        "seed": seed,
        "size": size,
        "epochs": epochs,
        "psnr": result["curve"],
        "diverged_at_epoch": result["diverged_at_epoch"],
        "seconds": result["seconds"][-1] if result["seconds"] else 0.0,
        "seconds_per_step": result["seconds_per_step"],
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
    }


def load_cells(stage: str, field_name: str) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((RESULTS / stage / field_name).glob("*/*.json"))]


def score(cell: dict, epochs: int) -> float:
    """PSNR at the last epoch; a diverged or unfinished run scores −inf."""
    curve = cell["psnr"]
    return curve[-1] if cell["diverged_at_epoch"] is None and len(curve) == epochs else -math.inf


def chosen_lrs(field_name: str, epochs: int) -> dict[str, float]:
    """Each entry's lr with the best mean (over the sweep's photos and seeds) PSNR at the last epoch."""
    by_entry: dict[str, dict[float, list[float]]] = {}
    for cell in load_cells("sweep", field_name):
        by_entry.setdefault(cell["entry"], {}).setdefault(cell["lr"], []).append(score(cell, epochs))
    return {entry: max(lrs, key=lambda lr: statistics.fmean(lrs[lr])) for entry, lrs in by_entry.items()}


def plan(args: argparse.Namespace) -> list[tuple]:
    photos = sorted(p.stem for p in PHOTOS.glob("*.png")) if args.photos == "all" else args.photos.split(",")
    entries = [entry_by_name(name) for name in args.entries.split(";")] if args.entries else list(ENTRIES)
    cells = []
    for field_name in args.fields.split(","):
        lrs = chosen_lrs(field_name, args.epochs) if args.stage == "final" else {}
        for photo in photos:
            for entry in entries:
                grid = entry.lrs if args.stage == "sweep" else ([lrs[entry.name]] if entry.name in lrs else [])
                for lr in grid:
                    for seed in (int(s) for s in args.seeds.split(",")):
                        cells.append((field_name, photo, entry, lr, seed))
    return cells


def command_run(args: argparse.Namespace) -> None:
    import torch

    from nf_precond_plugin.runtime import configure_entry_point

    configure_entry_point()
    torch.set_num_threads(1)
    cells = plan(args)
    mine = [cell for index, cell in enumerate(cells) if index % args.workers == args.worker]
    done = 0
    for field_name, photo, entry, lr, seed in mine:
        path = cell_path(args.stage, field_name, photo, entry, lr, seed)
        if path.exists():
            continue
        result = run_cell(field_name, photo, entry, lr, seed, args.size, args.epochs)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(result, indent=1))
        os.replace(partial, path)
        done += 1
        last = result["psnr"][-1] if result["psnr"] else float("nan")
        print(f"[{done}] {args.stage} {field_name} {photo} {entry.name} lr={lr:g} seed={seed}: "
              f"{last:.2f} dB, {result['seconds']:.0f} s", flush=True)  # fmt: skip


def against_best_first_order(cells: list[dict], entries: dict[str, dict], epochs: int) -> list[str]:
    """The ESGD entries against the best first-order recipe (by the mean at the last epoch): the
    margin at each reported epoch, and on how many photos (mean over seeds) they end at or above it."""
    first_order = {name: e for name, e in entries.items() if entry_by_name(name).optimizer in FIRST_ORDER}
    if not first_order:
        return []
    peer = max(first_order, key=lambda name: first_order[name]["mean_psnr"][-1])
    epochs_shown = [e for e in REPORT_EPOCHS if e <= epochs]

    def final_by_photo(name: str) -> dict[str, float]:
        by_photo: dict[str, list[float]] = {}
        for c in cells:
            if c["entry"] == name:
                by_photo.setdefault(c["photo"], []).append(score(c, epochs))
        return {photo: statistics.fmean(values) for photo, values in by_photo.items()}

    peer_final = final_by_photo(peer)
    lines = [
        f"Against the best first-order recipe, **{peer}** (lr {entries[peer]['lr']:g}): margin in dB "
        "(mean over photos and seeds), and photos where the entry ends at or above it:",
        "",
        "| entry | " + " | ".join(f"ep {e}" for e in epochs_shown) + " | photos won at the end |",
        "|---|" + "---|" * (len(epochs_shown) + 1),
    ]
    for name, entry in entries.items():
        if entry_by_name(name).optimizer not in ("esgd", "esgd-paper"):
            continue
        margins = [a - b for a, b in zip(entry["mean_psnr"], entries[peer]["mean_psnr"])]
        mine = final_by_photo(name)
        won = sum(1 for photo in peer_final if photo in mine and mine[photo] >= peer_final[photo])
        lines.append(f"| {name} | " + " | ".join(f"{m:+.2f}" for m in margins) + f" | {won} of {len(peer_final)} |")
    return lines


def command_report(args: argparse.Namespace) -> None:
    summary: dict[str, Any] = {}
    lines: list[str] = []
    for field_name in args.fields.split(","):
        stage = "final" if load_cells("final", field_name) else "sweep"
        cells = load_cells(stage, field_name)
        if not cells:
            continue
        lrs = chosen_lrs(field_name, args.epochs)
        chosen = [c for c in cells if stage == "final" or lrs.get(c["entry"]) == c["lr"]]
        entries = sorted({c["entry"] for c in chosen}, key=[e.name for e in ENTRIES].index)
        photos = sorted({c["photo"] for c in chosen})
        lines += [
            f"### {field_name} ({stage}: {len(photos)} photo(s), seeds {sorted({c['seed'] for c in chosen})}, "
            f"{args.epochs} epochs, {chosen[0]['size']}²)",
            "",
            "| entry | lr | " + " | ".join(f"ep {e}" for e in REPORT_EPOCHS if e <= args.epochs) + " | worst photo |",
            "|---|---|" + "---|" * (len([e for e in REPORT_EPOCHS if e <= args.epochs]) + 1),
        ]
        field_summary = {}
        for entry in entries:
            mine = [c for c in chosen if c["entry"] == entry and score(c, args.epochs) > -math.inf]
            if not mine:
                continue
            means = [statistics.fmean(c["psnr"][e - 1] for c in mine) for e in REPORT_EPOCHS if e <= args.epochs]
            worst = min(mine, key=lambda c: c["psnr"][-1])
            diverged = sum(1 for c in chosen if c["entry"] == entry) - len(mine)
            field_summary[entry] = {"lr": mine[0]["lr"], "mean_psnr": means, "cells": len(mine), "diverged": diverged}
            lines.append(
                f"| {entry} | {mine[0]['lr']:g} | " + " | ".join(f"{m:.2f}" for m in means)
                + f" | {worst['photo']}: {worst['psnr'][-1]:.2f} |"
            )  # fmt: skip
        lines += ["", *against_best_first_order(chosen, field_summary, args.epochs)]
        summary[field_name] = {"stage": stage, "lrs": lrs, "entries": field_summary}
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "report"):
        command = sub.add_parser(name)
        command.add_argument("--fields", default="gaussian,sine,wavelet,relu-pe")
        command.add_argument("--epochs", type=int, default=30)
        if name == "run":
            command.add_argument("--stage", choices=("sweep", "final"), default="sweep")
            command.add_argument("--photos", default="00,05", help="comma-separated photo names, or all")
            command.add_argument("--seeds", default="0")
            command.add_argument("--size", type=int, default=128)
            command.add_argument("--entries", default="", help="';'-separated entry names (default: all)")
            command.add_argument("--workers", type=int, default=1)
            command.add_argument("--worker", type=int, default=0)
        else:
            command.add_argument("--json-out", default=None)
    args = parser.parse_args()
    if not PHOTOS.is_dir():
        raise SystemExit(f"fair_league.py: error: {PHOTOS}: the DIV2K photos are not there (see ../shared/data)")
    (command_run if args.command == "run" else command_report)(args)


if __name__ == "__main__":
    main()
