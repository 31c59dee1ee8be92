"""The ``/ui`` status page in headless Chromium (Debian's package), driven by Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from fixtures.models import ModelStoreDir
from fixtures.oip import infer
from fixtures.server import ThreadServer

MiB = 1024 * 1024
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "status-page.png"
# As this machine's notes say: no sandbox as root, no GPU, and nothing that phones home
# (the network is closed; Chromium's background requests would only fail). Playwright adds
# --headless and a fresh, empty --user-data-dir itself.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000  # the page polls every 2 s; a busy 2-core machine may be slow to start it


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip(
            "Chromium is not installed, so the status page cannot be tested in a browser: "
            "apt-get install chromium (.ci/run does, where apt-get works)"
        )
    return path


def resident_rows(page: Page) -> list[str]:
    rows: list[str] = page.locator("#models-table tbody tr").evaluate_all(
        "rows => rows.map(row => row.dataset.model)"
    )
    return rows


def test_status_page_shows_the_fleet_and_follows_traffic(
    tmp_path: Path, synthetic_store: ModelStoreDir, start_server: Callable[..., ThreadServer]
) -> None:
    executable = chromium()
    ids = synthetic_store.model_ids
    pinned = ids[0]
    server = start_server(synthetic_store.root, memory_budget=48 * MiB, pin=(pinned,))
    with httpx.Client(base_url=server.url) as client:
        for model_id in (ids[1], ids[2], ids[1]):
            assert infer(client, model_id).status_code == 200
        problems: list[str] = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page(viewport={"width": 1440, "height": 1000})
                page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
                page.on(
                    "console",
                    lambda msg: problems.append(msg.text) if msg.type == "error" else None,
                )
                page.goto(f"{server.url}/ui", wait_until="load")

                # The fleet as loaded so far: three models, one pinned, and the budget bar.
                page.wait_for_selector(f'#models-table tr[data-model="{ids[2]}"]', timeout=WAIT_MS)
                assert sorted(resident_rows(page)) == sorted(ids[:3])
                pinned_row = page.locator(f'#models-table tr[data-model="{pinned}"]')
                assert pinned_row.locator(".badge-pinned").inner_text() == "pinned"
                assert "of 48.0 MiB used" in page.inner_text("#memory-text")
                pinned_px = page.locator("#seg-pinned").bounding_box()
                used_px = page.locator("#seg-used").bounding_box()
                bar_px = page.locator("#budget-bar").bounding_box()
                assert pinned_px is not None
                assert used_px is not None
                assert bar_px is not None
                assert pinned_px["width"] > 0
                assert used_px["width"] > 0
                assert pinned_px["width"] + used_px["width"] < bar_px["width"]
                assert page.inner_text("#kpi-rps-sub") == "3 since start"
                assert page.locator("#conn").get_attribute("data-state") == "live"

                # Traffic while the page is open: a new model, more hits, a missing model.
                for model_id in (ids[3], ids[3], ids[1], pinned, ids[4], ids[5], ids[1]):
                    assert infer(client, model_id).status_code == 200
                assert infer(client, "tenant-000/no-such-model").status_code == 404
                page.wait_for_selector(f'#models-table tr[data-model="{ids[5]}"]', timeout=WAIT_MS)
                page.wait_for_function(
                    "document.getElementById('kpi-rps-sub').textContent === '11 since start'",
                    timeout=WAIT_MS,
                )
                assert sorted(resident_rows(page)) == sorted(ids)
                hits = pinned_row.locator("td").nth(2).inner_text()
                assert hits == "1"
                events = page.locator("#events li")
                # A model that is not in the store is the caller's 404, not a failed load.
                assert events.first.get_attribute("data-kind") == "load"
                assert "tenant-000/no-such-model" not in page.inner_text("#events")
                assert page.locator('#events li[data-kind="load"]').count() == len(ids)
                top = page.locator("#hot-models tbody tr").first.get_attribute("data-key")
                assert top == ids[1]  # four requests, more than any other model
                tenants = page.locator("#hot-tenants tbody tr").evaluate_all(
                    "rows => rows.map(row => row.dataset.key)"
                )
                assert sorted(tenants) == ["tenant-000", "tenant-001", "tenant-002"]
                # The charts drew bars for the requests sent.
                assert page.locator("#chart-requests rect").count() >= 1
                assert page.locator("#chart-hit path.line-hit, #chart-hit circle").count() >= 1

                shot = tmp_path / "status-page.png"
                page.screenshot(path=str(shot), full_page=True, animations="disabled")
            finally:
                browser.close()
    assert problems == []
    assert shot.stat().st_size > 10_000
    # Tests leave the checkout as they found it; refresh the docs' picture only when asked.
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, DOCS_SCREENSHOT)
