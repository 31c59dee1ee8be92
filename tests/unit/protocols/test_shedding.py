"""Shedder: which requests it recognises, and the answer it gives when the server is full."""

from __future__ import annotations

from typing import cast

import orjson
from prometheus_client import CollectorRegistry

from tenantserve.metrics import Metrics
from tenantserve.protocols.shedding import Shedder
from tenantserve.service import InferenceService
from tenantserve.types import ModelId


class FullServer:
    """Refuses every tenant but ``calm`` at once, and records whom it was asked about."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def refuses_at_once(self, model_id: ModelId) -> bool:
        self.asked.append(model_id.value)
        return model_id.tenant != "calm"


def _shedder() -> tuple[Shedder, FullServer, Metrics]:
    server, metrics = FullServer(), Metrics(CollectorRegistry())
    return Shedder(cast(InferenceService, server), metrics), server, metrics


def test_oip_and_sagemaker_inferences_are_answered_from_their_heads() -> None:
    shed, server, metrics = _shedder()
    oip = shed(b"POST", b"/v2/models/acme/macros/infer?x=1", [])
    assert oip is not None
    head, _, body = oip.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1" in head.lower()
    assert b"content-length: %d" % len(body) in head.lower()
    assert "capacity" in orjson.loads(body)["error"]
    header = [(b"x-amzn-sagemaker-target-model", b"acme/m.tar.gz")]
    sagemaker = shed(b"POST", b"/endpoints/e/invocations", header)
    assert sagemaker is not None
    assert b"x-amzn-errortype: serviceunavailable" in sagemaker.lower()
    assert shed(b"POST", b"/models/acme/m/invoke", []) is not None
    assert server.asked == ["acme/macros", "acme/m.tar.gz", "acme/m"]
    served = metrics.registry.get_sample_value(
        "tenantserve_invocations_total", {"protocol": "oip", "code": "503"}
    )
    assert served == 1


def test_anything_else_is_left_to_the_server() -> None:
    shed, server, _ = _shedder()
    assert shed(b"POST", b"/v2/models/calm/m/infer", []) is None  # not refused
    assert shed(b"GET", b"/v2/models/acme/m", []) is None
    assert shed(b"POST", b"/v2/models/acme/m/ready", []) is None
    assert shed(b"POST", b"/v2/models/acme%2Fm/infer", []) is None  # encoded: routed as usual
    assert shed(b"POST", b"/v2/models/../etc/infer", []) is None  # a bad id: answered 400 there
    assert shed(b"POST", b"/invocations", []) is None  # no target header
    assert shed(b"POST", b"/v2/repository/index", []) is None
    assert server.asked == ["calm/m"]
