"""Generates the gRPC stubs from kaon's .proto files (build time and tests).

Used by ``setup.py`` at build time and by ``tests/test_stubs.py``, which
regenerates into a temporary directory and compares with the installed
stubs: they can neither be edited by hand nor drift from ``proto/``.
"""

from __future__ import annotations

import pathlib

#: The .proto files the client needs, relative to the proto root. The
#: Raft transport (kaon/raft/v1) is node-to-node only.
PROTO_FILES = ("kaon/v1/api.proto", "kaon/events/v1/events.proto")

#: The generated files, relative to the output root (``src``).
GENERATED_FILES = (
    "kaon/v1/__init__.py",
    "kaon/v1/api_pb2.py",
    "kaon/v1/api_pb2.pyi",
    "kaon/v1/api_pb2_grpc.py",
    "kaon/events/__init__.py",
    "kaon/events/v1/__init__.py",
    "kaon/events/v1/events_pb2.py",
    "kaon/events/v1/events_pb2.pyi",
    "kaon/events/v1/events_pb2_grpc.py",
)

_INIT = '"""Generated from proto/ by kaon._stubs at build time; do not edit."""\n'


def generate(proto_root: pathlib.Path, out_root: pathlib.Path) -> list[pathlib.Path]:
    """Runs protoc (from grpcio-tools) over ``PROTO_FILES`` into ``out_root``.

    The proto package ``kaon.v1`` lands in the Python package ``kaon.v1``,
    so the generated imports (``from kaon.events.v1 import events_pb2``)
    resolve inside this distribution. Returns the files written.
    """
    import grpc_tools  # type: ignore[import-untyped]  # build-time dependency only
    from grpc_tools import protoc

    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *(str(proto_root / f) for f in PROTO_FILES),
    ]
    for f in PROTO_FILES:
        if not (proto_root / f).is_file():
            raise FileNotFoundError(f"kaon: {proto_root / f} is missing")
    code = protoc.main(args)
    if code != 0:
        raise RuntimeError(f"kaon: protoc failed with exit code {code}: {' '.join(args)}")
    for pkg in ("kaon/v1", "kaon/events", "kaon/events/v1"):
        (out_root / pkg / "__init__.py").write_text(_INIT)
    return [out_root / f for f in GENERATED_FILES]
