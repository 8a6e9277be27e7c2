"""The installed gRPC stubs are exactly what proto/ generates now."""

from __future__ import annotations

import pathlib

import kaon.v1
from kaon import _stubs

PROTO = pathlib.Path(__file__).resolve().parents[3] / "proto"


def test_the_installed_stubs_match_a_fresh_generation(tmp_path: pathlib.Path) -> None:
    installed_root = pathlib.Path(kaon.v1.__file__).resolve().parents[2]
    written = _stubs.generate(PROTO, tmp_path)
    assert written, "nothing generated"
    for f in written:
        rel = f.relative_to(tmp_path)
        mine = installed_root / rel
        assert mine.is_file(), f"{rel} is not installed: reinstall the package (pip install clients/python)"
        assert mine.read_bytes() == f.read_bytes(), (
            f"{rel} differs from what proto/ generates: the stubs drifted; reinstall the package"
        )


def test_every_rpc_of_the_service_is_in_the_stub() -> None:
    from kaon.v1 import api_pb2

    service = api_pb2.DESCRIPTOR.services_by_name["Kaon"]
    text = (PROTO / "kaon" / "v1" / "api.proto").read_text()
    for m in service.methods:
        assert f"rpc {m.name}(" in text
    assert len(service.methods) == text.count("\n  rpc ")
