"""The fair league: every optimizer at its best learning rate *and* schedule, on many photos.

A cell is one (field, photo, optimizer, schedule, lr, seed) run of ``--epochs`` epochs; it writes
one JSON file (the PSNR after every epoch, the seconds, whether it diverged) and is skipped when
that file exists, so the league resumes where it stopped. Several processes (one thread each) can
run the same command and share its cells: a cell is claimed by creating ``<cell>.partial``, and a
process killed mid-cell leaves that file behind (delete the ``*.partial`` files before restarting).
Every cell of a (field, photo, seed) starts from the same initial weights and sees the same
minibatches (the standalone runner's build and epoch code, ``training.runner``).

    # the sweep: every entry at each lr of its grid, on a few photos
    python benchmarks/fair_league.py run --stage sweep --fields gaussian,sine --photos 00,05
    # the finals: each entry at the lr the sweep chose (mean over its photos at the last epoch)
    python benchmarks/fair_league.py run --stage final --fields gaussian --photos all --seeds 0,1
    python benchmarks/fair_league.py report --fields gaussian,sine     # markdown tables + JSON summary

Photos: the 16 DIV2K photographs in ../shared/data/div2k/test_data (512², so no crop), resized to
``--size``. The field ``occupancy`` is the 3D task on the Stanford armadillo instead (its one
"photo" is ``armadillo``; metric: held-out IoU). Results:
``benchmarks/results/fair_league/<stage>/<field>/<photo>/<cell>.json``; a run at another size or
length than the sweep's (the lion at 256² for 50 epochs) writes ``<stage>-<size>px-<epochs>ep/``
and keeps the lrs the sweep chose:

    python benchmarks/fair_league.py run --stage final --fields gaussian --photos 14 --size 256 --epochs 50 --seeds 0,1
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
ARMADILLO = ROOT.parent / "shared" / "data" / "meshes" / "armadillo.off"
OCCUPANCY = "occupancy"
"""The 3D field of the league: a Gaussian occupancy MLP on the armadillo, fresh points each epoch."""
OCCUPANCY_POINTS, OCCUPANCY_BATCH, OCCUPANCY_HELDOUT = 50_000, 5_000, 50_000  # a CPU budget, not the paper's 1M
SWEEP_SIZE, SWEEP_EPOCHS = 128, 30
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
    Entry("esgd", "inverse-time", (0.5, 1.0, 2.0, 4.0)),  # the former default; 4: 2 won at the edge
    Entry("esgd", "cosine", (0.5, 1.0, 2.0)),
    # the default: curvature inside schedule-free averaging, ESGD's own momentum off (β₁ = 0);
    # 0.125–0.5 and 4 joined where the best lr sat at an edge
    Entry("esgd", "schedule-free", (0.125, 0.25, 0.5, 1.0, 2.0, 4.0), label="esgd (default)"),
)


DEFAULT = "esgd (default)"
PROBES: tuple[Entry, ...] = tuple(
    Entry("esgd", "schedule-free", lrs, args=args, warmup_fraction=warmup, label=f"{DEFAULT}, {change}")
    for change, args, lrs, warmup in (
        ("clip 1e-2", {"clip": 1e-2}, (0.0625, 0.125, 0.25, 0.5, 1.0), 0.0),
        ("clip 1e-3", {"clip": 1e-3}, (0.25, 0.5, 1.0, 2.0, 4.0), 0.0),
        ("warm-up 2%", {}, (0.125, 0.25, 0.5, 1.0, 2.0), 0.02),
        ("beta2 0.99", {"betas": (0.0, 0.99)}, (0.125, 0.25, 0.5, 1.0), 0.0),
        ("beta2 0.5", {"betas": (0.0, 0.5)}, (0.25, 1.0), 0.0),
        ("hvp every 2", {"update_d_every": 2}, (0.25, 1.0), 0.0),
        ("hvp every 5", {"update_d_every": 5}, (0.125, 0.25, 0.5, 1.0, 2.0), 0.0),
        ("hvp every 10", {"update_d_every": 10}, (0.25, 1.0), 0.0),
        ("hvp every 5, beta2 0.5", {"betas": (0.0, 0.5), "update_d_every": 5}, (0.25, 1.0), 0.0),
        ("eps 1e-3", {"eps": 1e-3}, (0.25, 1.0), 0.0),
        ("eps 1e-5", {"eps": 1e-5}, (0.25, 1.0), 0.0),
    )
)
"""One change at a time to the default (``run --stage probe --photos 00``, seed 0): what the
default keeps is what these measured."""


def entry_by_name(name: str) -> Entry:
    for entry in ENTRIES + PROBES:
        if entry.name == name:
            return entry
    raise SystemExit(f"fair_league.py: error: --entries: no entry {name!r} (expected one of: "
                     + "; ".join(entry.name for entry in ENTRIES) + ")")  # fmt: skip


def stage_dir(stage: str, size: int = SWEEP_SIZE, epochs: int = SWEEP_EPOCHS) -> Path:
    """Where a stage's cells live; runs at another size or length than the sweep's get their own."""
    return RESULTS / (stage if (size, epochs) == (SWEEP_SIZE, SWEEP_EPOCHS) else f"{stage}-{size}px-{epochs}ep")


def cell_path(stage: Path, field_name: str, photo: str, entry: Entry, lr: float, seed: int) -> Path:
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", entry.name.replace("β₁", "b1")).strip("_")  # ASCII file names
    return stage / field_name / photo / f"{slug}__lr{lr:g}__seed{seed}.json"


def curve(cell: dict) -> list[float]:
    """The metric after every epoch (PSNR for a photo, held-out IoU for occupancy)."""
    return cell[cell.get("metric", "psnr")]


def make_league_task(field_name: str, photo: str, size: int, seed: int):
    from league import LeagueTask

    if field_name == OCCUPANCY:
        from nf_precond_plugin.tasks.occupancy import OccupancyConfig, OccupancyTask

        config = OccupancyConfig(
            mesh=ARMADILLO,
            points_per_epoch=OCCUPANCY_POINTS,
            batch_size=OCCUPANCY_BATCH,
            heldout_points=OCCUPANCY_HELDOUT,
            seed=seed,
        )
        return LeagueTask(field_name, OccupancyTask(config), "iou", config.batch_size)
    from nf_precond_plugin.tasks.image import ImageConfig, ImageTask

    config = ImageConfig(image=PHOTOS / f"{photo}.png", activation=field_name, size=size, seed=seed)
    return LeagueTask(field_name, ImageTask(config), "psnr", config.batch_size)


def run_cell(field_name: str, photo: str, entry: Entry, lr: float, seed: int, size: int, epochs: int) -> dict:
    import torch
    from league import train

    from nf_precond_plugin.training.schedules import ScheduleChoice

    league = make_league_task(field_name, photo, size, seed)
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
        "metric": league.metric,
        league.metric: result["curve"],
        "diverged_at_epoch": result["diverged_at_epoch"],
        "seconds": result["seconds"][-1] if result["seconds"] else 0.0,
        "seconds_per_step": result["seconds_per_step"],
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
    }


def photo_mean(values: dict[tuple[str, int], float]) -> float:
    """The mean over photos of each photo's mean over seeds (a photo run with more seeds does not
    weigh more)."""
    by_photo: dict[str, list[float]] = {}
    for (photo, _seed), value in values.items():
        by_photo.setdefault(photo, []).append(value)
    return statistics.fmean(statistics.fmean(seeds) for seeds in by_photo.values())


def load_cells(stage: Path, field_name: str) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((stage / field_name).glob("*/*.json"))]


def score(cell: dict) -> float:
    """The metric at the cell's last epoch; a diverged or unfinished run scores −inf."""
    values = curve(cell)
    return values[-1] if cell["diverged_at_epoch"] is None and len(values) == cell["epochs"] else -math.inf


def chosen_lrs(field_name: str) -> dict[str, float]:
    """Each entry's lr with the best mean (over the sweep's photos and seeds) metric at the last epoch."""
    by_entry: dict[str, dict[float, list[float]]] = {}
    for cell in load_cells(stage_dir("sweep"), field_name):
        by_entry.setdefault(cell["entry"], {}).setdefault(cell["lr"], []).append(score(cell))
    return {entry: max(lrs, key=lambda lr: statistics.fmean(lrs[lr])) for entry, lrs in by_entry.items()}


def plan(args: argparse.Namespace) -> list[tuple]:
    photos = sorted(p.stem for p in PHOTOS.glob("*.png")) if args.photos == "all" else args.photos.split(",")
    if OCCUPANCY in args.fields.split(",") and "armadillo" not in photos:
        photos.append("armadillo")
    entries = [entry_by_name(name) for name in args.entries.split(";")] if args.entries else list(ENTRIES)
    fields = args.fields.split(",")
    if not args.entries and args.stage == "probe":
        entries = list(PROBES)
    lrs = {f: chosen_lrs(f) if args.stage == "final" else {} for f in fields}
    cells = []
    for photo in photos:  # photo-major, so that a league stopped part-way covers every field evenly
        for field_name in fields:
            if (field_name == OCCUPANCY) != (photo == "armadillo"):
                continue
            for entry in entries:
                chosen = lrs[field_name]
                grid = entry.lrs if args.stage != "final" else ([chosen[entry.name]] if entry.name in chosen else [])
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
    done = 0
    for field_name, photo, entry, lr, seed in cells:
        path = cell_path(stage_dir(args.stage, args.size, args.epochs), field_name, photo, entry, lr, seed)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        try:  # claim the cell: processes sharing one plan take whatever no one else has started
            os.close(os.open(partial, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            continue
        if path.exists():  # finished by another process between the check and the claim
            partial.unlink()
            continue
        try:
            result = run_cell(field_name, photo, entry, lr, seed, args.size, args.epochs)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.write_text(json.dumps(result, indent=1))
        os.replace(partial, path)
        done += 1
        last = curve(result)[-1] if curve(result) else float("nan")
        print(f"[{done}] {args.stage} {field_name} {photo} {entry.name} lr={lr:g} seed={seed}: "
              f"{result['metric']} {last:.3f}, {result['seconds']:.0f} s", flush=True)  # fmt: skip


OURS = ("esgd", "esgd-paper")


def against_peers(cells: list[dict], entries: dict[str, dict], peers: set[str], title: str) -> list[str]:
    """The project's entries against ``peers``: at each reported epoch the margin to the peer that is
    best *at that epoch* (by its mean), and on how many photos (mean over seeds) the entry ends at or
    above the peer that is best at the end. Margins and wins count only the (photo, seed) cells both
    have, so an entry still running is compared on its own photos."""
    peers = {name for name in peers if name in entries}
    if not peers:
        return []
    final_peer = max(peers, key=lambda name: entries[name]["mean"][-1])
    epochs = entries[final_peer]["epochs"]
    curves: dict[str, dict[tuple[str, int], list[float]]] = {}
    for c in cells:
        if score(c) > -math.inf:
            curves.setdefault(c["entry"], {})[(c["photo"], c["seed"])] = curve(c)

    def margin(name: str, peer: str, epoch: int) -> float:
        shared = curves.get(name, {}).keys() & curves.get(peer, {}).keys()
        if not shared:
            return math.nan
        return photo_mean({key: curves[name][key][epoch - 1] - curves[peer][key][epoch - 1] for key in shared})

    def wins(name: str) -> tuple[int, int]:
        by_photo: dict[str, list[float]] = {}
        for key in curves.get(name, {}).keys() & curves.get(final_peer, {}).keys():
            by_photo.setdefault(key[0], []).append(curves[name][key][-1] - curves[final_peer][key][-1])
        return sum(1 for values in by_photo.values() if statistics.fmean(values) >= 0), len(by_photo)

    best_at = [max(peers, key=lambda name: entries[name]["mean"][k]) for k in range(len(epochs))]
    lines = [
        f"{title}: margin to the best of them at each epoch (mean over the photos both have of the mean over seeds; "
        f"the best named below), and photos where the entry ends at or above **{final_peer}**, the best "
        "at the end:",
        "",
        "| entry | " + " | ".join(f"ep {e}" for e in epochs) + " | photos won at the end |",
        "|---|" + "---|" * (len(epochs) + 1),
        "| *best peer* | " + " | ".join(best_at) + " | |",
    ]
    for name in entries:
        if entry_by_name(name).optimizer not in OURS:
            continue
        margins = [margin(name, best_at[k], epoch) for k, epoch in enumerate(epochs)]
        won, photos = wins(name)
        lines.append(f"| {name} | " + " | ".join(f"{m:+.3g}" for m in margins) + f" | {won} of {photos} |")
    return lines


def at_equal_time(cells: list[dict], entries: dict[str, dict], epochs: int) -> list[str]:
    """Each entry's metric (mean over its cells) after the epochs it completes in the wall time the
    default takes for the whole run (median seconds per epoch; cells ran two at a time, one thread
    each, so the seconds carry some ±20 %)."""
    if DEFAULT not in entries:
        return []
    budget = entries[DEFAULT]["seconds_per_epoch"] * epochs
    row = []
    for name, entry in entries.items():
        reached = min(epochs, int(budget / entry["seconds_per_epoch"]))
        mine = [c for c in cells if c["entry"] == name and score(c) > -math.inf]
        value = photo_mean({(c["photo"], c["seed"]): curve(c)[reached - 1] for c in mine}) if reached >= 1 else math.nan
        row.append(f"{name}: {value:.4g} (ep {reached})")
    return [f"In the default's wall time for {epochs} epochs ({budget:.0f} s): " + "; ".join(row) + "."]


def probe_report(fields: list[str]) -> list[str]:
    """Each probe at its best lr beside the default and schedule-free AdamW (the sweep's cells of
    the same photos), on every field that has probe cells."""
    lines = []
    for field_name in fields:
        probes = load_cells(stage_dir("probe"), field_name)
        if not probes:
            continue
        photos = {c["photo"] for c in probes}
        references = [c for c in load_cells(stage_dir("sweep"), field_name)
                      if c["photo"] in photos and c["entry"] in (DEFAULT, "sf-adamw")]  # fmt: skip
        shown = [e for e in REPORT_EPOCHS if e <= SWEEP_EPOCHS]
        lines += [
            f"### {field_name} (probes: photo(s) {', '.join(sorted(photos))}, seed 0, each at its best lr)",
            "",
            "| entry | lr | " + " | ".join(f"ep {e}" for e in shown) + " | lrs tried |",
            "|---|---|" + "---|" * (len(shown) + 1),
        ]
        by_entry: dict[str, dict[float, list[dict]]] = {}
        for cell in references + probes:
            by_entry.setdefault(cell["entry"], {}).setdefault(cell["lr"], []).append(cell)
        order = [DEFAULT, "sf-adamw", *(entry.name for entry in PROBES)]
        for name, by_lr in sorted(by_entry.items(), key=lambda item: order.index(item[0]) if item[0] in order else 99):
            lr = max(by_lr, key=lambda value: statistics.fmean(score(c) for c in by_lr[value]))
            if any(score(c) == -math.inf for c in by_lr[lr]):
                lines.append(f"| {name} | | every lr diverged |")
                continue
            means = [statistics.fmean(curve(c)[e - 1] for c in by_lr[lr]) for e in shown]
            tried = ", ".join(f"{value:g}" for value in sorted(by_lr))
            lines.append(f"| {name} | {lr:g} | " + " | ".join(f"{m:.2f}" for m in means) + f" | {tried} |")
        lines.append("")
    return lines


def command_report(args: argparse.Namespace) -> None:
    if args.stage == "probe":
        print("\n".join(probe_report(args.fields.split(","))))
        return
    summary: dict[str, Any] = {}
    lines: list[str] = []
    for field_name in args.fields.split(","):
        final = stage_dir("final", args.size, args.epochs)
        stage = final if load_cells(final, field_name) else stage_dir("sweep")
        cells = load_cells(stage, field_name)
        if not cells:
            continue
        lrs = chosen_lrs(field_name)
        chosen = [c for c in cells if lrs.get(c["entry"]) == c["lr"]]  # finals of an earlier choice drop out
        if not chosen:
            continue
        order = [e.name for e in ENTRIES + PROBES]
        entries = sorted({c["entry"] for c in chosen}, key=lambda name: order.index(name) if name in order else 99)
        photos = sorted({c["photo"] for c in chosen})
        metric, epochs = chosen[0].get("metric", "psnr"), chosen[0]["epochs"]
        shown = [e for e in REPORT_EPOCHS if e <= epochs]
        where = "the armadillo" if field_name == OCCUPANCY else f"{len(photos)} photo(s), {chosen[0]['size']}²"
        lines += [
            f"### {field_name} ({stage.name}: {where}, seeds {sorted({c['seed'] for c in chosen})}, {epochs} epochs, "
            f"{metric})",
            "",
            "| entry | lr | " + " | ".join(f"ep {e}" for e in shown) + " | worst photo | cells | s/epoch |",
            "|---|---|" + "---|" * (len(shown) + 3),
        ]
        field_summary = {}
        for entry in entries:
            mine = [c for c in chosen if c["entry"] == entry and score(c) > -math.inf]
            if not mine:
                continue
            means = [photo_mean({(c["photo"], c["seed"]): curve(c)[e - 1] for c in mine}) for e in shown]
            worst = min(mine, key=score)
            diverged = sum(1 for c in chosen if c["entry"] == entry) - len(mine)
            per_epoch = statistics.median(c["seconds"] / c["epochs"] for c in mine)
            field_summary[entry] = {
                "lr": mine[0]["lr"], "epochs": shown, "mean": means, "cells": len(mine), "diverged": diverged,
                "seconds_per_epoch": per_epoch,
            }  # fmt: skip
            lines.append(
                f"| {entry} | {mine[0]['lr']:g} | " + " | ".join(f"{m:.4g}" for m in means)
                + f" | {worst['photo']}: {score(worst):.4g} | {len(mine)}"
                + (f" ({diverged} diverged)" if diverged else "") + f" | {per_epoch:.2g} |"
            )  # fmt: skip
        peers = {name for name in field_summary if entry_by_name(name).optimizer not in OURS}
        first_order = {name for name in peers if entry_by_name(name).optimizer in FIRST_ORDER}
        lines += ["", *against_peers(chosen, field_summary, first_order, "Against the first-order recipes")]
        lines += ["", *against_peers(chosen, field_summary, peers, "Against every peer (SOAP and K-FAC too)")]
        lines += ["", *at_equal_time(chosen, field_summary, epochs)]
        summary[field_name] = {"stage": stage.name, "metric": metric, "lrs": lrs, "entries": field_summary}
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
        command.add_argument("--epochs", type=int, default=SWEEP_EPOCHS)
        command.add_argument("--size", type=int, default=SWEEP_SIZE)
        if name == "run":
            command.add_argument("--stage", choices=("sweep", "final", "probe"), default="sweep")
            command.add_argument("--photos", default="00,05", help="comma-separated photo names, or all")
            command.add_argument("--seeds", default="0")
            command.add_argument("--entries", default="", help="';'-separated entry names (default: all)")
        else:
            command.add_argument("--stage", choices=("final", "probe"), default="final")
            command.add_argument("--json-out", default=None)
    args = parser.parse_args()
    if not PHOTOS.is_dir():
        raise SystemExit(f"fair_league.py: error: {PHOTOS}: the DIV2K photos are not there (see ../shared/data)")
    (command_run if args.command == "run" else command_report)(args)


if __name__ == "__main__":
    main()
