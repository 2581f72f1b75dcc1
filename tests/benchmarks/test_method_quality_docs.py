"""benchmarks/method_quality.py --docs: each measured row lands in its method's docs page, and
a later result replaces it (the pages never keep a stale number)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location(
        "method_quality", ROOT / "benchmarks" / "method_quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(knn: float) -> dict:
    return {"method": "simclr", "recipe": "simclr_cifar10_cpu", "backbone": "resnet18/w0.25",
            "budget_minutes": 10.0, "threads": 1, "seed": 0, "images_seen": 163840,
            "train_minutes": 10.0, "precision": "torch.bfloat16", "knn_top1": knn,
            "random_knn_top1": 0.29, "linear_top1": 0.5, "random_linear_top1": 0.34,
            "pretext_metric": "positive_retrieval", "pretext_value": 0.8}  # fmt: skip


def test_rows_replace_the_measured_paragraph_and_keep_the_rest(tmp_path):
    mq = _module()
    page = tmp_path / "simclr.md"
    page.write_text(
        "# SimCLR\n\n## Measured\n\n<!-- measured-row: simclr -->\n\n## After\n\nkept\n"
    )
    assert mq.write_docs([_row(0.486)], tmp_path) == [str(page)]
    text = page.read_text()
    assert "**0.486** vs 0.290 at random init (+0.196, clears the +0.10 bar)" in text
    assert text.startswith("# SimCLR\n\n## Measured\n") and text.endswith("## After\n\nkept\n")
    mq.write_docs([_row(0.351)], tmp_path)
    text = page.read_text()
    assert "0.486" not in text and "(+0.061, does not clear the +0.10 bar)" in text
    assert text.count("<!-- measured-row: simclr -->") == 1
    assert mq.write_docs([{**_row(0.4), "method": "no_such_page"}], tmp_path) == []


def test_every_budget_of_a_method_is_listed_shortest_first(tmp_path):
    mq = _module()
    page = tmp_path / "simclr.md"
    page.write_text("# SimCLR\n\n## Measured\n\n<!-- measured-row: simclr -->\n")
    longer = {**_row(0.401), "budget_minutes": 20.0, "train_minutes": 20.0}
    mq.write_docs([longer, _row(0.351)], tmp_path)
    text = page.read_text()
    ten, twenty = text.index("--minutes 10 "), text.index("--minutes 20 ")
    assert ten < twenty
    assert "(+0.061, does not clear the +0.10 bar)" in text[ten:twenty]
    assert "(+0.111, clears the +0.10 bar)" in text[twenty:]
    assert text.count("<!-- measured-row: simclr -->") == 1
    table = mq.markdown_table([longer, _row(0.351)]).splitlines()
    assert "| 0.351 |" in table[2] and "| 0.401 |" in table[3]
