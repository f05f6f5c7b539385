"""Render the model-zoo table (:data:`~mask2former.model_zoo.catalog.MODELS`) as the Markdown
tables of ``MODEL_ZOO.md``: one table per dataset and task, in catalog order."""
from typing import Dict, List, Sequence, Tuple

from .catalog import MODELS, ZooModel

__all__ = ["GENERATED_MARKER", "DATASET_TITLES", "render_tables"]

# Everything after this line of MODEL_ZOO.md is written by tools/model_zoo_md.py.
GENERATED_MARKER = (
    "<!-- Generated from mask2former/model_zoo/catalog.py by tools/model_zoo_md.py; "
    "do not edit below. -->"
)

DATASET_TITLES = {
    "coco": "COCO",
    "cityscapes": "Cityscapes",
    "ade20k": "ADE20K",
    "mapillary_vistas": "Mapillary Vistas",
    "ytvis_2019": "YouTube-VIS 2019",
    "ytvis_2021": "YouTube-VIS 2021",
}


def _groups(models: Sequence[ZooModel]) -> Dict[Tuple[str, str], List[ZooModel]]:
    groups: Dict[Tuple[str, str], List[ZooModel]] = {}
    for model in models:
        groups.setdefault((model.dataset, model.task), []).append(model)
    return groups


def _row(model: ZooModel, metric_names: List[str]) -> str:
    cells = [
        f"[`{model.name}`](configs/{model.name}.yaml)",
        model.backbone,
        model.schedule,
        *(f"{model.metrics[m]:.1f}" if m in model.metrics else "" for m in metric_names),
        str(model.queries),
        f"{model.params / 1e6:.1f}M",
        model.model_id,
        f"[{model.checkpoint_file}]({model.url})",
    ]
    return "| " + " | ".join(cells) + " |"


def render_tables(models: Sequence[ZooModel] = MODELS) -> str:
    """Markdown of the tables: the number of models per task, then per dataset a ``## <dataset>``
    heading and per task a ``### <task>`` heading and a table with the name (linked to its config), backbone, schedule, the task's metrics (columns
    in order of first appearance), queries, parameters in millions, model id and checkpoint link."""
    per_task: Dict[str, int] = {}
    for model in models:
        per_task[model.task] = per_task.get(model.task, 0) + 1
    summary = ", ".join(f"{n} {task}" for task, n in per_task.items())
    lines: List[str] = [f"{len(models)} models: {summary}.", ""]
    current_dataset = None
    for (dataset, task), rows in _groups(models).items():
        if dataset != current_dataset:
            lines += [f"## {DATASET_TITLES.get(dataset, dataset)}", ""]
            current_dataset = dataset
        metric_names: List[str] = []
        for model in rows:
            metric_names += [m for m in model.metrics if m not in metric_names]
        header = ["name (config)", "backbone", "schedule", *metric_names, "queries", "params",
                  "model id", "checkpoint"]
        align = ["---", "---", "---", *("---:" for _ in metric_names), "---:", "---:", "---", "---"]
        lines += [
            f"### {task.capitalize()} segmentation ({len(rows)} models)",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join(align) + "|",
            *(_row(model, metric_names) for model in rows),
            "",
        ]
    return "\n".join(lines)
