"""What the examples do when run as scripts: print the spec, or with
``--run`` submit it to the server (``KAON_SERVER``, default
127.0.0.1:7070), watch it with a progress display and print its outputs."""

from __future__ import annotations

import pathlib
import sys
from typing import Any, Dict

from kaon import Client, Workflow

#: The repository's examples/ folder (the steps' scripts live there).
REPO_EXAMPLES = pathlib.Path(__file__).resolve().parents[3] / "examples"


def main(wf: Workflow, params: Dict[str, Any]) -> int:
    if "--run" not in sys.argv:
        print(wf.to_yaml(), end="")
        return 0
    run = Client().submit(wf, params=params)
    print(f"run {run.id} submitted")
    final = run.wait(progress=True)
    for path, outputs in final.outputs.items():
        print(f"{path}: {outputs}")
    return 0 if final.succeeded else 1
