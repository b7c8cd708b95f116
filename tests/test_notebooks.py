"""Every notebook executes, on tiny models, with its parameters injected the way papermill does it."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def cases(tmp: Path) -> dict[str, list[dict]]:
    return {
        "01_quickstart.ipynb": [{"NUM_IMAGES": 2}],
        "02_reward_lora_sd.ipynb": [
            {"PRETRAINED": f"tiny:{family}", "REWARD": "tiny", "STEPS": 2, "LR": 1e-3, "RESOLUTION": 32,
             "NUM_INFERENCE_STEPS": 4, "GUIDANCE_SCALE": 1.0, "MIXED_PRECISION": "no",
             "OUTPUT_DIR": str(tmp / f"lora_{family}")}
            for family in ("sd15", "sdxl")],
        "03_train_your_own_reward.ipynb": [{"STEPS": 4, "NUM_SYNTHETIC_IMAGES": 48,
                                            "OUTPUT_DIR": str(tmp / "own_reward")}],
    }


def inject(notebook, parameters: dict):
    """Insert a cell assigning `parameters` right after the cell tagged `parameters` (papermill's convention)."""
    index = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "# Injected parameters\n" + "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(index + 1, cell)
    return notebook


def test_every_notebook_has_a_test_case(tmp_path):
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(cases(tmp_path))


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs_and_has_parameters(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code), "strip the outputs"
    assert sum("parameters" in cell.metadata.get("tags", []) for cell in code) == 1


RUNS = [(name, i) for name, runs in cases(Path(".")).items() for i in range(len(runs))]


@pytest.mark.slow
@pytest.mark.parametrize("name,index", RUNS)
def test_notebook_executes(name, index, tmp_path):
    parameters = cases(tmp_path)[name][index]
    notebook = inject(nbformat.read(NOTEBOOKS / name, as_version=4), parameters)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, with the cell and the traceback, on any error
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    if name == "01_quickstart.ipynb":  # the distributions are plotted
        assert any("image/png" in o.get("data", {}) for o in outputs)
    if name == "03_train_your_own_reward.ipynb":
        metrics = json.loads((tmp_path / "own_reward" / "reward" / "metrics.json").read_text())
        assert metrics["steps"] == 4 and 0.0 <= metrics["preference_accuracy"] <= 1.0
