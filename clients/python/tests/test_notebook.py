"""The progress display in a real Jupyter kernel (nbclient runs a notebook)."""

from __future__ import annotations

import json

import nbformat
from nbclient import NotebookClient

from conftest import Server

CELL = """
from kaon import Client, Step, Workflow
with Workflow("from-a-notebook") as wf:
    a = Step("a", shell='sleep 0.3; echo \\'{{"n": 3}}\\' > "$KAON_OUTPUTS_FILE"')
    Step("b", shell=f"echo got {{a.outputs['n']}}")
final = Client("{addr}").submit(wf).wait(progress=True)
print(final.status, final.outputs)
"""


def test_wait_with_progress_in_a_notebook(server: Server) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(CELL.format(addr=server.addr))]
    NotebookClient(nb, kernel_name="python3", timeout=120).execute()
    outputs = nb.cells[0].outputs
    kinds = [o.get("output_type") for o in outputs]
    assert "error" not in kinds, outputs
    # rich drew its live display as a Jupyter widget, then the result.
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), outputs
    html = " ".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "succeeded" in html, html
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert printed.strip() == "succeeded {'a': {'n': 3}}", json.dumps(outputs)[:2000]
