"""Build hook: generate the gRPC stubs from the repository's proto/ files.

The stubs are never edited by hand and never committed: every build (an
editable install, a wheel, an sdist) runs protoc from the pinned
grpcio-tools over ``../../proto`` (or ``$KAON_PROTO_DIR``), writing
``kaon/v1/api_pb2{,_grpc}.py`` and ``kaon/events/v1/events_pb2.py`` with
``.pyi`` type stubs. ``kaon._stubs.generate`` is the one place that knows
how; ``tests/test_stubs.py`` regenerates and compares.
"""

import importlib.util
import os
import pathlib

from setuptools import setup

HERE = pathlib.Path(__file__).resolve().parent


def _generate() -> None:
    spec = importlib.util.spec_from_file_location("_kaon_stubs", HERE / "src" / "kaon" / "_stubs.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    proto = pathlib.Path(os.environ.get("KAON_PROTO_DIR", HERE.parent.parent / "proto"))
    out = HERE / "src"
    if not proto.is_dir():
        # An sdist carries the stubs it was built with.
        if (out / "kaon" / "v1" / "api_pb2.py").is_file():
            return
        raise SystemExit(f"kaon: no proto directory at {proto} (set KAON_PROTO_DIR)")
    mod.generate(proto, out)


# At import, not in a command: setuptools lists the packages (kaon.v1 and
# kaon.events.v1 among them) before any command runs.
_generate()
setup()
