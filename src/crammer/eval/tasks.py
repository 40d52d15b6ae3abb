"""The GLUE tasks: what each one reads, from the Hugging Face hub or a local `glue_data` folder.

Both sources give the same `TaskData`: a train split and one or more evaluation splits (MNLI has a
matched and a mismatched one), with labels as class indices in the hub's order (or floats for STS-B),
so the same fine-tuning and scoring code serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from crammer.errors import CrammerError
from crammer.eval.spec import MetricKind, TaskSpec

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class EvalSplit:
    name: str  # "" for the single dev split; "matched"/"mismatched" for MNLI (suffix of metric keys)
    file: str  # in the task folder of glue_data
    hub_split: str


@dataclass(frozen=True)
class GlueTask:
    """One task: its local file layout, its hub columns, its labels and how it is scored."""

    name: str
    folder: str  # folder in the glue_data layout
    text_columns: tuple[str | int, ...]  # header names (or indices for header-less CoLA)
    label_column: str | int
    hub_text_columns: tuple[str, ...]
    labels: tuple[str, ...]  # class names in the hub's order; () = regression (STS-B)
    metric: MetricKind
    glue_numbers: tuple[tuple[str, str], ...]  # (column of the GLUE table, metric key) counted in the score
    eval_splits: tuple[EvalSplit, ...] = (EvalSplit("", "dev.tsv", "validation"),)
    header: bool = True

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def spec(self) -> TaskSpec:
        """The task as the trial runner sees it: a classification or regression with GLUE's own metric."""
        primary = tuple(key for _, key in self.glue_numbers) or (self.metric,)
        return TaskSpec("regression" if self.is_regression else "classification", self.labels, self.metric, primary)


TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        GlueTask("cola", "CoLA", (3,), 1, ("sentence",), ("unacceptable", "acceptable"), "mcc",
                 (("CoLA", "mcc"),), header=False),
        GlueTask("sst2", "SST-2", ("sentence",), "label", ("sentence",), ("negative", "positive"), "accuracy",
                 (("SST-2", "accuracy"),)),
        GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"),
                 ("not_equivalent", "equivalent"), "f1", (("MRPC", "f1"),)),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), "score", ("sentence1", "sentence2"), (),
                 "correlation", (("STS-B", "pearson"),)),
        GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("question1", "question2"),
                 ("not_duplicate", "duplicate"), "f1", (("QQP", "f1"),)),
        GlueTask("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
                 ("entailment", "neutral", "contradiction"), "accuracy",
                 (("MNLI-m", "accuracy_matched"), ("MNLI-mm", "accuracy_mismatched")),
                 eval_splits=(EvalSplit("matched", "dev_matched.tsv", "validation_matched"),
                              EvalSplit("mismatched", "dev_mismatched.tsv", "validation_mismatched"))),
        GlueTask("qnli", "QNLI", ("question", "sentence"), "label", ("question", "sentence"),
                 ("entailment", "not_entailment"), "accuracy", (("QNLI", "accuracy"),)),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"),
                 ("entailment", "not_entailment"), "accuracy", (("RTE", "accuracy"),)),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), "label", ("sentence1", "sentence2"),
                 ("not_entailment", "entailment"), "accuracy", ()),  # left out of the score, as in the paper
    ]
}
# `all`: the 8 tasks behind the 9-number GLUE score of the cramming paper (WNLI excluded).
ALL_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
GLUE_SCORE_COLUMNS = tuple(col for name in ALL_TASKS for col, _ in TASKS[name].glue_numbers)

# GLUE dev averages (9 numbers, GLUE-sane rules) to compare against; per-task numbers are not reproduced.
REFERENCE_SCORES = (
    ("BERT-base, fully trained", 80.9),
    ("crammed BERT, 1x A6000 for 24 h", 80.7),
    ("BERT-base from scratch, 3060 Ti for 100 h", 72.7),
)


@dataclass
class Split:
    """Sentence (pairs) and labels; `text_b` is None for single-sentence tasks. For token classification
    `text_a` holds each example's words and `labels` their tag indices (one list per example)."""

    text_a: list
    text_b: list[str] | None
    labels: list  # class indices (as ints), regression targets, lists of class indices (multi-label) or of tags

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> Split:
        pick = lambda xs: [xs[i] for i in indices]  # noqa: E731
        return Split(pick(self.text_a), pick(self.text_b) if self.text_b is not None else None, pick(self.labels))


@dataclass
class TaskData:
    task: GlueTask
    train: Split
    evals: dict[str, Split]  # EvalSplit.name -> split


def parse_tasks(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'all' or a comma-separated list of task names -> validated names in the given order."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if names == ["all"]:
        return ALL_TASKS
    if not names:
        raise CrammerError("no GLUE task given; use --tasks all or e.g. --tasks sst2,mrpc")
    for name in names:
        if name not in TASKS:
            raise CrammerError(f"unknown GLUE task {name!r}; choose from: all, {', '.join(TASKS)}")
    return tuple(dict.fromkeys(names))


def missing_files(name: str, glue_dir: str | Path) -> list[Path]:
    """What `load_task` would not find in `glue_dir`: the task's folder, or else its split files."""
    task = TASKS[name]
    folder = Path(glue_dir).expanduser() / task.folder
    if not folder.is_dir():
        return [folder]
    return [folder / f for f in ("train.tsv", *(s.file for s in task.eval_splits)) if not (folder / f).is_file()]


def load_task(name: str, glue_dir: str | Path | None = None, skip_malformed_rows: bool = False) -> TaskData:
    """Read one task from `glue_dir` (standard glue_data layout) or, when None, from the hub."""
    task = TASKS[parse_tasks(name)[0]]
    if glue_dir is None:
        return _load_hub(task)
    folder = Path(glue_dir).expanduser() / task.folder
    if not folder.is_dir():
        raise CrammerError(f"{folder}: GLUE task folder for {task.name!r} not found (expected the glue_data layout)")
    train = read_tsv(task, folder / "train.tsv", skip_malformed_rows)
    evals = {s.name: read_tsv(task, folder / s.file, skip_malformed_rows) for s in task.eval_splits}
    return TaskData(task, train, evals)


def read_tsv(task: GlueTask, path: Path, skip_malformed_rows: bool = False) -> Split:
    """One split file: tab-separated, no quoting, an optional UTF-8 BOM, the task's own columns."""
    if not path.is_file():
        raise CrammerError(f"{path}: split file for {task.name!r} not found")
    text_a: list[str] = []
    text_b: list[str] = []
    labels: list[float] = []
    with open(path, encoding="utf-8-sig") as f:
        lines = (line.rstrip("\r\n") for line in f)
        header = next(lines, None) if task.header else None
        if task.header and header is None:
            raise CrammerError(f"{path}: empty file")
        columns = header.split("\t") if header is not None else []
        text_idx = [_column_index(c, columns, path) for c in task.text_columns]
        label_idx = _column_index(task.label_column, columns, path)
        width = len(columns) if header is not None else max(text_idx + [label_idx]) + 1
        first = 2 if header is not None else 1
        for lineno, line in enumerate(lines, first):
            if not line:
                continue
            row = line.split("\t")
            try:
                if len(row) < width:
                    raise ValueError(f"expected {width} tab-separated fields, got {len(row)}")
                label = _parse_label(task, row[label_idx])
            except ValueError as e:
                if skip_malformed_rows:
                    continue
                raise CrammerError(f"{path}:{lineno}: malformed row ({e}); "
                                   "skip such rows with skip_malformed_rows=true") from None
            text_a.append(row[text_idx[0]])
            if len(text_idx) > 1:
                text_b.append(row[text_idx[1]])
            labels.append(label)
    if not labels:
        raise CrammerError(f"{path}: no examples")
    return Split(text_a, text_b if len(task.text_columns) > 1 else None, labels)


def _column_index(column: str | int, header: list[str], path: Path) -> int:
    if isinstance(column, int):
        return column
    try:
        return header.index(column)
    except ValueError:
        raise CrammerError(f"{path}:1: header lacks the column {column!r} (has: {', '.join(header)})") from None


def _parse_label(task: GlueTask, value: str) -> float:
    value = value.strip()
    if task.is_regression:
        return float(value)
    if value in task.labels:
        return task.labels.index(value)
    if value.isdigit() and int(value) < len(task.labels):
        return int(value)
    raise ValueError(f"label {value!r} is not one of {', '.join(task.labels)} or 0..{len(task.labels) - 1}")


def _load_hub(task: GlueTask) -> TaskData:
    try:
        import datasets

        ds = datasets.load_dataset(HUB_DATASET, task.name)  # config names = our task names
    except Exception as e:  # offline, unknown dataset, network: all mean "use --glue-dir"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CrammerError(f"cannot load GLUE task {task.name!r} from the hub ({HUB_DATASET}): {reason[:200]}; "
                           "offline, point --glue-dir at a local glue_data folder") from None

    def split(name: str) -> Split:
        rows = ds[name]
        a = list(rows[task.hub_text_columns[0]])
        b = list(rows[task.hub_text_columns[1]]) if len(task.hub_text_columns) > 1 else None
        return Split(a, b, [float(x) if task.is_regression else int(x) for x in rows["label"]])

    return TaskData(task, split("train"), {s.name: split(s.hub_split) for s in task.eval_splits})
