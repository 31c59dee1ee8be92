"""Shedder: which requests it recognises, and the answer it gives when the server is full."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
import pytest
from prometheus_client import CollectorRegistry

from tenantserve.errors import TenantLimitExceeded, TenantServeError
from tenantserve.metrics import Metrics
from tenantserve.protocols.auth import Access
from tenantserve.protocols.keys import KeyRing
from tenantserve.protocols.shedding import Shedder
from tenantserve.service import InferenceService
from tenantserve.types import ModelId, ModelRef


class FullServer:
    """Refuses every tenant but ``calm`` and ``wave`` at once, and records whom it was asked
    about; of ``calm``'s, a first call to ``calm/cold`` finds the load queue full; ``wave``'s
    queue has room for ``WAVE_ROOM`` more loads."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.first_calls: list[str] = []

    def refuses_at_once(self, model_id: ModelId) -> bool:
        self.asked.append(model_id.value)
        return model_id.tenant not in ("calm", "wave")

    def refuses_first_calls(self, tenant: str, starting: int = 0) -> bool:
        return tenant == "calm" or (tenant == "wave" and starting >= WAVE_ROOM)

    def unread(self, model_id: ModelId) -> bool:
        return model_id.tenant == "wave"  # every model of wave is a first call

    def refusal_before_read(self, ref: ModelRef, starting: int = 0) -> TenantServeError | None:
        self.first_calls.append(str(ref))
        if ref.model_id.tenant == "wave" and starting >= WAVE_ROOM:
            return TenantLimitExceeded(f"tenant wave has {starting} loads coming")
        if ref.model_id.value != "calm/cold":
            return None
        return TenantLimitExceeded("tenant calm has 4 model loads pending", retry_after_s=2.5)


CALM_KEY, CALM_OPS = "calm-key-0000000001", "calm-ops-0000000001"
WAVE_KEY, WAVE_ROOM = "wave-key-0000000001", 2
KEYS = {
    "keys": [
        {"name": "wave-app", "key": WAVE_KEY, "scopes": ["wave/*"]},
        {"name": "calm-app", "key": CALM_KEY, "scopes": ["calm/*"]},
        {"name": "calm-ops", "key": CALM_OPS, "scopes": ["calm/*"], "roles": ["manage"]},
        {"name": "other", "key": "other-key-000000001", "scopes": ["other/*"]},
    ]
}


def _shedder(*, keys: bool = False) -> tuple[Shedder, FullServer, Metrics]:
    server, metrics = FullServer(), Metrics(CollectorRegistry())
    ring = KeyRing.from_document(KEYS, where="test") if keys else None
    access = Access(ring, max_body_bytes=1 << 20)
    return Shedder(cast(InferenceService, server), metrics, access), server, metrics


def _answer(raw: bytes | None) -> tuple[bytes, Any]:
    """An answer's head and its JSON body, its Content-Length checked."""
    assert raw is not None
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-length: %d" % len(body) in head.lower()
    return head, orjson.loads(body)


def test_oip_and_sagemaker_inferences_are_answered_from_their_heads() -> None:
    shed, server, metrics = _shedder()
    head, body = _answer(shed(b"POST", b"/v2/models/acme/macros/infer?x=1", []))
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1" in head.lower()
    assert "capacity" in body["error"]
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


def test_with_keys_a_refused_first_call_is_answered_from_its_head_for_its_own_key_only() -> None:
    shed, server, metrics = _shedder(keys=True)
    oip = shed(b"POST", b"/v2/models/calm/cold/infer", [(b"x-api-key", CALM_KEY.encode())])
    head, body = _answer(oip)
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"retry-after: 3" in head.lower()
    assert "4 model loads pending" in body["error"]
    bearer = [(b"x-amzn-sagemaker-target-model", b"calm/cold"),
              (b"authorization", b"Bearer " + CALM_KEY.encode())]  # fmt: skip
    sagemaker = shed(b"POST", b"/invocations", bearer)
    assert sagemaker is not None
    assert b"x-amzn-errortype: throttlingexception" in sagemaker.lower()
    refused = metrics.registry.get_sample_value(
        "tenantserve_invocations_total", {"protocol": "oip", "code": "429"}
    )
    assert refused == 1
    assert server.first_calls == ["calm/cold", "calm/cold"]


def test_a_first_call_goes_the_usual_way_unless_its_key_may_invoke_the_model() -> None:
    shed, server, _ = _shedder(keys=True)
    path = b"/v2/models/calm/cold/infer"
    assert shed(b"POST", path, []) is None  # no key: 401 the usual way
    assert shed(b"POST", path, [(b"x-api-key", b"not-a-key-000000001")]) is None  # 401
    assert shed(b"POST", path, [(b"x-api-key", b"other-key-000000001")]) is None  # 403
    assert shed(b"POST", path, [(b"x-api-key", CALM_OPS.encode())]) is None  # no invoke role
    signed = [(b"authorization", b"AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=0")]
    assert shed(b"POST", path, signed) is None  # SigV4 signs the body: checked with it
    own = [(b"x-api-key", CALM_KEY.encode())]
    assert shed(b"POST", b"/v2/models/calm/warm/infer", own) is None  # not refused
    assert shed(b"POST", b"/v2/models/calm/cold/versions/2/infer", own) is None
    assert server.first_calls == ["calm/warm"]  # nobody else's call reached the queue


def test_without_keys_first_calls_are_left_to_the_server() -> None:
    shed, server, _ = _shedder()
    assert shed(b"POST", b"/v2/models/calm/cold/infer", []) is None
    assert server.first_calls == []


@pytest.mark.anyio
async def test_a_wave_of_first_calls_in_one_turn_sends_the_queue_its_room_and_no_more() -> None:
    shed, server, _ = _shedder(keys=True)
    own = [(b"x-api-key", WAVE_KEY.encode())]

    def first_call(i: int) -> bytes | None:
        return shed(b"POST", b"/v2/models/wave/m%d/infer" % i, own)

    # One turn of the loop: no request let through has reached the queue yet.
    wave = [first_call(i) for i in range(5)]
    assert wave[:WAVE_ROOM] == [None] * WAVE_ROOM
    for answer in wave[WAVE_ROOM:]:
        assert answer is not None
        assert answer.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert server.first_calls == [f"wave/m{i}" for i in range(WAVE_ROOM, 5)]
    # A second call to a model let through is not counted again (it joins that load).
    assert shed(b"POST", b"/v2/models/wave/m0/infer", own) is None
    # Two turns on, those requests have counted themselves in the queue: the head forgets.
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert first_call(9) is None
