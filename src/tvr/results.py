"""``tvr-results <sweep folder> [...] [--out DIR]``: one table comparing the runs of Hydra sweeps.

A sweep (``tvr-train -m head=meanpool,seqtransf seed=0,1,2``) leaves one job folder per run, each holding
``.hydra/overrides.yaml`` and, when it finished, ``metrics.json`` (or ``error.json`` when it failed).
This collects every such folder under the given folders, groups the runs into configurations (the
overrides without ``seed``), and writes to ``--out`` (default: the first folder, or its ``tvr-results/`` when it
is a single run folder, whose own ``results.md`` stays):

- ``results.md``: what was collected, a table with one row per configuration (the settings that differ
  between configurations, the number of finished seeds, ``mean ± std`` over the seeds), and the failed
  and unfinished runs with their error or how to resume them; the same Markdown is printed to stdout;
- ``results.csv``: the same rows with mean and std in separate columns, plus one row per failed or
  unfinished run;
- ``results.png``: t2v R@1 and t2v RSum per configuration, bar = mean, error bar = std, a dot per seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tvr.errors import UserInputError, exit_on_user_error
from tvr.overrides import hydra_quote, parse_overrides
from tvr.run_folder import run_records

FINISHED, FAILED, UNFINISHED = "finished", "failed", "unfinished"
DEFAULT = "(default)"
SEED = "seed"
RESUME = "ckpt_path"
MESSAGE_CHARS = 200
PLOT_LABEL_CHARS = 40
# facts of metrics.json's "run" section that always tell runs apart, whatever their overrides say (runs of two
# datasets started with equal overrides, e.g. TVR_DATA_DIR changed between them); a column "run.<fact>"
RUN_FACTS = ("dataset", "head")
FACT_PREFIX = "run."
REPORT_FOLDER = "tvr-results"  # inside a single run folder, beside the run's own records

# (direction, key in metrics.json, column title); the CSV names are f"{direction}_{key}".
METRICS = [
    ("t2v", "R1", "t2v R@1"),
    ("t2v", "R5", "t2v R@5"),
    ("t2v", "R10", "t2v R@10"),
    ("t2v", "MdR", "t2v MdR"),
    ("t2v", "MnR", "t2v MnR"),
    ("t2v", "RSum", "t2v RSum"),
    ("v2t", "R1", "v2t R@1"),
    ("v2t", "RSum", "v2t RSum"),
]
PLOTTED = [("t2v", "R1", "t2v R@1 (%)"), ("t2v", "RSum", "t2v RSum")]


@dataclass
class Run:
    """One job folder of a sweep and what it left behind."""

    folder: Path
    label: str  # the folder as the user will recognise it in the report
    overrides: list[str]  # as written by Hydra, for the resume command
    settings: dict[str, str]  # override key -> value, "+"/"++" stripped
    status: str
    metrics: dict | None = None
    error: dict | None = None
    resumable: bool = False

    @property
    def seed(self) -> str:
        if SEED in self.settings:
            return self.settings[SEED]
        seed = ((self.metrics or {}).get("run") or {}).get(SEED)
        return "?" if seed is None else str(seed)

    def value(self, key: str) -> str:
        """The run's value of a grouping key: an override, or ``run.<fact>`` from metrics.json."""
        if key.startswith(FACT_PREFIX):
            fact = ((self.metrics or {}).get("run") or {}).get(key.removeprefix(FACT_PREFIX))
            return DEFAULT if fact is None else str(fact)
        return self.settings.get(key, DEFAULT)

    def metric(self, direction: str, key: str) -> float | None:
        value = ((self.metrics or {}).get(direction) or {}).get(key)
        return float(value) if isinstance(value, (int, float)) else None


@dataclass
class Configuration:
    """The finished runs that share every setting but the seed."""

    values: tuple[str, ...]  # one per differing key, in the order of those keys
    runs: list[Run] = field(default_factory=list)

    def label(self, keys: list[str]) -> str:
        return ", ".join(f"{key}={value}" for key, value in zip(keys, self.values)) or "all runs"

    def seeds(self) -> list[str]:
        return [run.seed for run in self.runs]

    def values_of(self, direction: str, key: str) -> list[float]:
        return [value for run in self.runs if (value := run.metric(direction, key)) is not None]


# ---------------------------------------------------------------------------------------------- collect


def find_run_folders(folder: Path) -> list[Path]:
    """Every folder at or below ``folder`` that holds ``.hydra/overrides.yaml``."""
    found = {path.parent.parent for path in folder.rglob("overrides.yaml") if path.parent.name == ".hydra"}
    return sorted(found)


def read_json(path: Path) -> tuple[dict | None, str | None]:
    """The JSON object in ``path``, or the reason it could not be read (a run killed mid-write)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return None, f"{path.name} unreadable: {error}"
    if not isinstance(data, dict):
        return None, f"{path.name} holds no JSON object"
    return data, None


def load_run(folder: Path, label: str) -> Run:
    overrides_file = folder / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(overrides_file.read_text()) or []
    except (OSError, yaml.YAMLError) as error:
        raise UserInputError(f"{overrides_file}: cannot be read as a YAML list of overrides ({error})") from error
    if not isinstance(overrides, list):
        raise UserInputError(f"{overrides_file}: expected a YAML list of overrides like `- head=seqtransf`")
    run = Run(folder, label, [str(item) for item in overrides], parse_overrides(overrides), UNFINISHED)

    # metrics.json wins over error.json: a failed run that was resumed and then finished keeps both.
    if (folder / "metrics.json").is_file():
        run.metrics, problem = read_json(folder / "metrics.json")
        if problem is None:
            run.status = FINISHED
            return run
        run.status, run.error = FAILED, {"type": "UnreadableMetrics", "message": problem}
        return run
    run.resumable = (folder / "checkpoints" / "last.ckpt").is_file()  # also after a failure (NaN loss, OOM)
    if (folder / "error.json").is_file():
        error, problem = read_json(folder / "error.json")
        run.status, run.error = FAILED, error or {"type": "UnreadableError", "message": problem}
    return run


def run_label(root: Path, folder: Path, several_roots: bool) -> str:
    relative = folder.relative_to(root)
    if relative == Path("."):
        return str(root) if several_roots else (root.resolve().name or str(root))
    return str(root / relative) if several_roots else str(relative)


def collect_runs(folders: list[Path]) -> list[Run]:
    """The runs under each folder (the folders themselves included), each folder counted once."""
    for folder in folders:
        if not folder.exists():
            raise UserInputError(f"sweep folder not found: {folder}")
        if not folder.is_dir():
            raise UserInputError(f"not a folder: {folder} (pass the sweep folder, e.g. multirun/<date>_<time>)")
    runs, seen = [], set()
    for root in folders:
        for folder in find_run_folders(root):
            # Overlapping arguments (a sweep and one of its jobs) must not count a run twice.
            if folder.resolve() in seen:
                continue
            seen.add(folder.resolve())
            runs.append(load_run(folder, run_label(root, folder, len(folders) > 1)))
    if not runs:
        names = ", ".join(str(folder) for folder in folders)
        raise UserInputError(
            f"no runs found under {names}: expected job folders with .hydra/overrides.yaml (written by `tvr-train -m ...`)"
        )
    return runs


# ---------------------------------------------------------------------------------------------- group


def differing_keys(runs: list[Run]) -> list[str]:
    """Override keys (but ``seed``, and ``ckpt_path``, which a resumed job gains) whose value is not the
    same in every run; absent counts as a value. Then ``run.dataset`` and ``run.head`` where the finished runs'
    own facts separate runs that those overrides do not: numbers of two datasets or heads are never averaged."""
    keys = sorted({key for run in runs for key in run.settings} - {SEED, RESUME})
    keys = [key for key in keys if len({run.value(key) for run in runs}) > 1]
    finished = [run for run in runs if run.status == FINISHED]
    for fact in RUN_FACTS:
        with_fact = [*keys, FACT_PREFIX + fact]
        if len({tuple(map(run.value, with_fact)) for run in finished}) > len(
            {tuple(map(run.value, keys)) for run in finished}
        ):
            keys = with_fact
    return keys


def natural_key(value: str) -> tuple:
    # Numbers by value (lr=1e-4 before lr=3e-4, layers=2 before layers=12); the default first, as the baseline.
    if value == DEFAULT:
        return (0, 0.0, "")
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value)


def configurations(runs: list[Run], keys: list[str]) -> list[Configuration]:
    """The finished runs grouped by their differing settings, sorted by those settings."""
    groups: dict[tuple[str, ...], Configuration] = {}
    for run in runs:
        if run.status != FINISHED:
            continue
        values = tuple(run.value(key) for key in keys)
        groups.setdefault(values, Configuration(values)).runs.append(run)
    for configuration in groups.values():
        configuration.runs.sort(key=lambda run: natural_key(run.seed))
    return sorted(groups.values(), key=lambda configuration: [natural_key(value) for value in configuration.values])


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1); no std for a single value, nothing for none."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def format_mean_std(values: list[float]) -> str:
    mean, std = mean_std(values)
    if mean is None:
        return "–"
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


# ---------------------------------------------------------------------------------------------- report


def count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def header_line(runs: list[Run], folders: list[Path]) -> str:
    """What was collected: how many runs in what state, on which split, over how many texts and videos."""
    statuses = [run.status for run in runs]
    line = (
        f"Collected {count(len(runs), 'run')} in {count(len(folders), 'folder')}: {statuses.count(FINISHED)} finished, "
        f"{statuses.count(FAILED)} failed, {statuses.count(UNFINISHED)} unfinished."
    )
    finished = [run for run in runs if run.status == FINISHED]
    if not finished:
        return line + " No run finished: there is nothing to compare yet."
    splits = sorted({str(run.metrics.get("split", "?")) for run in finished})
    line += (
        f" Split evaluated: {splits[0]}." if len(splits) == 1 else f" Splits differ between runs: {', '.join(splits)}."
    )
    sizes = sorted(
        {
            (measured.get("texts"), measured.get("videos"))
            for run in finished
            if isinstance(measured := run.metrics.get("measured"), dict)
        },
        key=str,
    )
    if len(sizes) == 1:
        line += f" {sizes[0][0]} texts × {sizes[0][1]} videos."
    elif sizes:
        line += f" Texts × videos differ between runs: {', '.join(f'{t} × {v}' for t, v in sizes)}."
    return line


def first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    line = lines[0] if lines else ""
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 1] + "…"


def run_dir_override(folder: Path) -> str:
    """``hydra.run.dir=<folder>`` as one shell word. Job folders are named like ``head=x,seed=1``: Hydra
    reads an unquoted ``=`` as a syntax error and ``,`` as a sweep, so the path is quoted for Hydra too."""
    word = f"hydra.run.dir={hydra_quote(str(folder.resolve()))}"
    if not any(char in word for char in '"$`\\!'):
        return f'"{word}"'  # readable, and the shell hands the inner single quotes to Hydra unchanged
    return shlex.quote(word)


def resume_command(run: Run) -> str:
    # hydra.run.dir puts the resumed job back in its own folder, where ckpt_path=last finds checkpoints/last.ckpt.
    kept = [
        item for item in run.overrides if item.lstrip("+").split("=", 1)[0] != RESUME
    ]  # a resumed job has it already
    words = ["tvr-train", *(shlex.quote(item) for item in kept), run_dir_override(run.folder), "ckpt_path=last"]
    return " ".join(words)


def problem_description(run: Run) -> str:
    """Why a run has no numbers: its error, or whether it can be continued."""
    if run.status == FAILED:
        error = run.error or {}
        text = f"{error.get('type', 'error')}: {first_line(error.get('message', ''))}"
        text += f" (at step {error['step']})" if error.get("step") is not None else ""
        return text + (f"; resumable: {resume_command(run)}" if run.resumable else "")
    if run.resumable:
        return f"no metrics.json (running or killed); resumable: {resume_command(run)}"
    return "no metrics.json (running or killed); no checkpoints/last.ckpt to resume from"


def markdown_cell(value: str) -> str:
    return str(value).replace("|", "\\|")


def markdown(runs: list[Run], folders: list[Path], keys: list[str], groups: list[Configuration]) -> str:
    lines = [header_line(runs, folders), ""]
    if groups:
        columns = [*keys, "runs", *(title for _, _, title in METRICS)]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join("---" for _ in columns) + "|")
        for group in groups:
            cells = [
                *group.values,
                str(len(group.runs)),
                *(format_mean_std(group.values_of(direction, key)) for direction, key, _ in METRICS),
            ]
            lines.append("| " + " | ".join(markdown_cell(cell) for cell in cells) + " |")
        lines.append("")
    problems = [run for run in runs if run.status != FINISHED]
    if problems:
        lines.append("Failed and unfinished runs:")
        lines.append("")
        lines.extend(f"- `{run.label}`: {run.status}: {problem_description(run)}" for run in problems)
        lines.append("")
    return "\n".join(lines)


def write_markdown(path: Path, text: str) -> None:
    path.write_text(text)


def csv_number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def write_csv(path: Path, runs: list[Run], keys: list[str], groups: list[Configuration]) -> None:
    """One row per configuration, then one per failed or unfinished run (``status`` and ``error`` set)."""
    metric_columns = [f"{direction}_{key}_{part}" for direction, key, _ in METRICS for part in ("mean", "std")]
    columns = [*keys, "status", "runs", "seeds", *metric_columns, "folder", "error"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for group in groups:
            row = dict(zip(keys, group.values), status=FINISHED, runs=len(group.runs), seeds=";".join(group.seeds()))
            for direction, key, _ in METRICS:
                mean, std = mean_std(group.values_of(direction, key))
                row[f"{direction}_{key}_mean"], row[f"{direction}_{key}_std"] = csv_number(mean), csv_number(std)
            writer.writerow(row)
        for run in runs:
            if run.status == FINISHED:
                continue
            writer.writerow(
                {
                    **{key: run.value(key) for key in keys},
                    "status": run.status,
                    "runs": 0,
                    "seeds": run.seed,
                    "folder": run.label,
                    "error": problem_description(run),
                }
            )


def plot_label(group: Configuration, keys: list[str]) -> str:
    # One setting per line, each cut short: long Hydra keys side by side would squeeze the panels to nothing.
    lines = [f"{key}={value}" for key, value in zip(keys, group.values)] or ["all runs"]
    return "\n".join(line if len(line) <= PLOT_LABEL_CHARS else line[: PLOT_LABEL_CHARS - 1] + "…" for line in lines)


def plot(path: Path, keys: list[str], groups: list[Configuration]) -> None:
    """Bars of the mean with the std as error bar, and every seed as a dot so the spread is visible."""
    import matplotlib

    matplotlib.use("Agg")  # headless: sweeps are summarised on cluster nodes without a display
    import matplotlib.pyplot as plt

    positions = range(len(groups))
    width = min(40.0, max(7.0, 1.1 * len(groups) + 3))
    # Stacked panels share the configuration axis, so the long labels are drawn once, under the bottom one.
    figure, axes = plt.subplots(
        len(PLOTTED),
        1,
        sharex=True,
        figsize=(width, 3.2 * len(PLOTTED) + 0.4 * max(1, len(keys))),
        layout="constrained",
    )
    for axis, (direction, key, title) in zip(axes, PLOTTED):
        stats = [mean_std(group.values_of(direction, key)) for group in groups]
        means = [mean if mean is not None else 0.0 for mean, _ in stats]
        stds = [std or 0.0 for _, std in stats]
        axis.bar(positions, means, yerr=stds, capsize=4, color="tab:blue", alpha=0.6, label="mean ± std")
        for position, group in zip(positions, groups):
            values = group.values_of(direction, key)
            # A small horizontal spread keeps seeds with equal values from hiding each other.
            offsets = [0.0] if len(values) == 1 else [-0.15 + 0.3 * i / (len(values) - 1) for i in range(len(values))]
            axis.scatter(
                [position + offset for offset in offsets],
                values,
                color="black",
                s=14,
                zorder=3,
                label="one seed" if position == 0 else None,
            )
        axis.set_ylabel(title)
        axis.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[-1].set_xticks(list(positions))
    axes[-1].set_xticklabels(
        [plot_label(group, keys) for group in groups], rotation=30, ha="right", rotation_mode="anchor", fontsize=8
    )
    figure.savefig(path, dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tvr-results",
        description="Compare the runs of tvr-train sweeps: results.md, results.csv and results.png.",
    )
    parser.add_argument(
        "folders",
        nargs="+",
        type=Path,
        metavar="FOLDER",
        help="sweep folder(s) (e.g. multirun/<date>_<time>), searched recursively for job folders",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"where to write the results (default: the first FOLDER; its {REPORT_FOLDER}/ when it is a run folder)",
    )
    return parser.parse_args(argv)


def report_folder(args: argparse.Namespace) -> Path:
    """Where the report goes: never over a run folder's own ``results.md`` (the one ``tvr-train`` wrote)."""
    if args.out is not None:
        if run_records(args.out):
            raise UserInputError(
                f"--out {args.out} holds the records of a run ({', '.join(run_records(args.out))}), which the "
                "report would replace; pass another folder"
            )
        return args.out
    first = args.folders[0]
    return first / REPORT_FOLDER if run_records(first) else first


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runs = collect_runs(args.folders)
    keys = differing_keys(runs)
    groups = configurations(runs, keys)
    out = report_folder(args)
    out.mkdir(parents=True, exist_ok=True)

    text = markdown(runs, args.folders, keys, groups)
    write_markdown(out / "results.md", text)
    write_csv(out / "results.csv", runs, keys, groups)
    written = ["results.md", "results.csv"]
    if groups:
        plot(out / "results.png", keys, groups)
        written.append("results.png")
    print(text, end="")
    # Status lines go to stderr so that `tvr-results ... > table.md` keeps only the Markdown.
    if not groups:
        print("no run finished: only the failed and unfinished runs are listed (no plot)", file=sys.stderr)
    print(f"wrote {', '.join(written)} to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
