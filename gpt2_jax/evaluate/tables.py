"""Perplexity tables: models x datasets as markdown, CSV, JSON and a PNG bar chart, with the
GPT-2 paper's Table 3 value beside each cell that has one.

Reference: Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", Table 3
(zero-shot; accuracies in percent; WikiText, PTB and 1BW are word-level perplexities).
"""

from __future__ import annotations

import csv
import io
import json
import math
import pathlib
from typing import Any, Sequence

# Table 3 of the GPT-2 paper, by model size, as (dataset, metric) -> value.
PAPER_TABLE3: dict[str, dict[tuple[str, str], float]] = {
    size: {("lambada", "ppl"): v[0], ("lambada", "acc"): v[1], ("cbt_cn", "acc"): v[2], ("cbt_ne", "acc"): v[3],
           ("wikitext2", "word_ppl"): v[4], ("ptb", "word_ppl"): v[5], ("enwik8", "bpb"): v[6],
           ("text8", "bpc"): v[7], ("wikitext103", "word_ppl"): v[8], ("1bw", "word_ppl"): v[9]}
    for size, v in {
        "117M": (35.13, 45.99, 87.65, 83.4, 29.41, 65.85, 1.16, 1.17, 37.50, 75.20),
        "345M": (15.60, 55.48, 92.35, 87.1, 22.76, 47.33, 1.01, 1.06, 26.37, 55.72),
        "762M": (10.87, 60.12, 93.45, 88.0, 19.93, 40.31, 0.97, 1.02, 22.05, 44.575),
        "1542M": (8.63, 63.24, 93.30, 89.05, 18.34, 35.76, 0.93, 0.98, 17.48, 42.16),
    }.items()
}
# (n_layer, n_embd) of the released GPT-2 checkpoints (vocab 50257) -> the paper's size label.
PAPER_SIZES = {(12, 768): "117M", (24, 1024): "345M", (36, 1280): "762M", (48, 1600): "1542M"}
# Columns per task, in this order, for the metrics a result has (bleu/chrf only with --generate).
METRICS = {"lm": ("ppl", "word_ppl", "bpb", "bpc", "top1", "top5", "bleu", "chrf"),
           "lambada": ("acc", "ppl", "acc_token", "ppl_token")}
METRIC_LABELS = {"ppl": "token ppl", "word_ppl": "word ppl", "bpb": "bits/byte", "bpc": "bits/char",
                 "acc": "acc % (word)", "acc_token": "acc % (last token)", "ppl_token": "ppl (last token)",
                 "top1": "top-1 acc %", "top5": "top-5 acc %", "bleu": "BLEU", "chrf": "chrF"}
PERCENT = ("acc", "acc_token", "top1", "top5")  # stored as fractions, shown (and referenced) in percent


def paper_size(n_layer: int, n_embd: int, vocab_size: int) -> str | None:
    """The paper's size label ('117M', ...) of a model with GPT-2's shape and vocabulary, else None."""
    return PAPER_SIZES.get((n_layer, n_embd)) if vocab_size == 50257 else None


def build(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The table from rows {model, size, results: {dataset: metrics dict of datasets.evaluate_set}}.

    Columns are (dataset, metric) in first-seen dataset order; values in display units (percent
    for accuracies); `paper` holds Table 3 where the row's size and the column have a value.
    """
    columns, protocols, sources = [], {}, {}
    for row in rows:
        for name, res in row["results"].items():
            sources[name] = f"{res['source']}@{res['split']}"
            if res["protocol"] not in protocols.setdefault(name, []):  # models of different contexts differ here
                protocols[name].append(res["protocol"])
            for metric in METRICS[res["task"]]:
                if metric in res and (name, metric) not in columns:
                    columns.append((name, metric))
    out_rows = []
    for row in rows:
        ref = PAPER_TABLE3.get(row.get("size") or "", {})
        values, paper = {}, {}
        for name, metric in columns:
            res = row["results"].get(name, {})
            if metric in res:
                values[f"{name}/{metric}"] = res[metric] * (100 if metric in PERCENT else 1)
            if (name, metric) in ref:
                paper[f"{name}/{metric}"] = ref[(name, metric)]
        out_rows.append({"model": row["model"], "size": row.get("size"), "values": values, "paper": paper})
    return {"columns": [f"{n}/{m}" for n, m in columns], "rows": out_rows, "sources": sources, "protocols": protocols}


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.4g}" if abs(x) < 1000 else f"{x:,.0f}"


def _header(column: str) -> str:
    name, metric = column.split("/")
    return f"{name} {METRIC_LABELS.get(metric, metric)}"


def to_markdown(table: dict[str, Any]) -> str:
    """Markdown: one row per model, `ours (paper X)` cells, and a protocol footer per dataset."""
    cols = table["columns"]
    lines = ["| model | " + " | ".join(_header(c) for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    for row in table["rows"]:
        cells = []
        for c in cols:
            cell = _fmt(row["values"].get(c))
            if c in row["paper"]:
                cell += f" (paper {_fmt(row['paper'][c])})"
            cells.append(cell)
        label = row["model"] + (f" [{row['size']}]" if row["size"] else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    groups: dict[str, list[str]] = {}  # datasets scored the same way share one footer line
    for name, texts in table["protocols"].items():
        for text in texts:
            groups.setdefault(text, []).append(f"{name} = {table['sources'][name]}")
    lines += [f"- {', '.join(names)}: {text}" for text, names in groups.items()]
    if any(row["paper"] for row in table["rows"]):
        lines.append("- paper: GPT-2 paper (Radford et al. 2019) Table 3, same model size, zero-shot")
    return "\n".join(lines) + "\n"


def to_csv(table: dict[str, Any]) -> str:
    """CSV: model, size, then each column's value and its paper value."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model", "size"] + [h for c in table["columns"] for h in (c, f"{c} (paper)")])
    for row in table["rows"]:
        writer.writerow([row["model"], row["size"] or ""] +
                        [v for c in table["columns"] for v in (row["values"].get(c, ""), row["paper"].get(c, ""))])
    return buf.getvalue()


def headline_metric(table: dict[str, Any], dataset: str) -> str:
    """The metric charted for a dataset: the paper's one where it has a value, else bits/byte
    (comparable across tokenizers) or whole-word accuracy."""
    metrics = [c.split("/")[1] for c in table["columns"] if c.split("/")[0] == dataset]
    with_paper = [m for m in metrics if any(f"{dataset}/{m}" in r["paper"] for r in table["rows"])]
    for choice in (*with_paper, "bpb", "acc"):
        if choice in metrics:
            return choice
    return metrics[0]


def plot(table: dict[str, Any], path: str | pathlib.Path, title: str = "") -> pathlib.Path:
    """A PNG with one panel per dataset: each model's headline metric, paper values hatched beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(c.split("/")[0] for c in table["columns"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(2.2 + 2.6 * len(datasets), 3.6), dpi=100, squeeze=False)
    models = [r["model"] for r in table["rows"]]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, dataset in zip(axes[0], datasets):
        metric = headline_metric(table, dataset)
        key = f"{dataset}/{metric}"
        for i, row in enumerate(table["rows"]):
            value = row["values"].get(key, math.nan)
            ax.bar(i - 0.2 if key in row["paper"] else i, value, 0.4, color=colors[i % len(colors)])
            ax.annotate(_fmt(value), (i, value), ha="center", va="bottom", fontsize=7)
            if key in row["paper"]:
                ax.bar(i + 0.2, row["paper"][key], 0.4, color="white", edgecolor=colors[i % len(colors)],
                       hatch="//", label="paper" if i == 0 else None)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{dataset}: {METRIC_LABELS.get(metric, metric)}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = pathlib.Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write(table: dict[str, Any], out_dir: str | pathlib.Path, stem: str = "table", title: str = "") -> dict[str, str]:
    """Write <stem>.md, .csv, .json and .png into out_dir; returns {format: path}."""
    out = pathlib.Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "json": out / f"{stem}.json"}
    paths["md"].write_text(to_markdown(table), encoding="utf-8")
    paths["csv"].write_text(to_csv(table), encoding="utf-8")
    paths["json"].write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    paths["png"] = plot(table, out / f"{stem}.png", title)
    return {k: str(v) for k, v in paths.items()}
