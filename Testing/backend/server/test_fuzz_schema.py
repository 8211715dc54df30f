"""Fuzz on a real loopback server with tiny models: hand-written hostile requests (deep JSON, huge
integers, wrong content types, truncated frames, absurd numbers) and a few hundred requests that
schemathesis generates from the server's own OpenAPI schema. No answer may be a 5xx (but a 503 with
Retry-After), every 4xx says what is wrong, and the server keeps serving. Bounded: fixed seeds, a
fixed number of cases and a deadline. ``Testing/bench/fuzz_server.py`` runs the same for longer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from support.fuzzing import Tally, hostile_cases, make_image, schema_cases, send
from support.live_server import TEST_TOKEN as TOKEN
from support.live_server import ThreadedServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}
GEOMETRY = ((3.0, 3.0, 3.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
SCHEMA_SECONDS = 40.0


@pytest.fixture
def no_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty model catalog: no generated download request can leave this machine."""
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"format_version": 1, "models": []}))
    monkeypatch.setenv("TSFM_CATALOG", str(path))


def still_serving(live: ThreadedServer, client) -> None:  # noqa: ANN001
    assert requests.get(live.url + "/v1/health", timeout=5).status_code == 200
    image_id = client.upload_image(make_image(seed=7), *GEOMETRY)
    session_id = client.create_session(image_id, "tiny-click")
    _, mask = client.interact(session_id, {"kind": "point", "point": [8, 24, 24]})
    assert mask.dtype == np.uint8
    client.close_session(session_id)


def test_hand_written_hostile_requests_get_4xx_with_a_message(live: ThreadedServer, client, no_catalog) -> None:  # noqa: ANN001
    image_id = client.upload_image(make_image(), *GEOMETRY)
    session_id = client.create_session(image_id, "tiny-click")
    http = requests.Session()
    http.headers.update(AUTH)
    tally = Tally()
    cases = list(hostile_cases(image_id, session_id))
    assert len(cases) >= 200
    for case in cases:
        send(http, live.url, case, tally)
    assert not tally.failures, "\n".join(tally.failures[:20])
    assert tally.sent == len(cases) and sum(tally.statuses[s] for s in tally.statuses if 400 <= s < 500) >= 180
    client.close_session(session_id)
    still_serving(live, client)


def test_schema_driven_fuzz_finds_no_5xx(live: ThreadedServer, client, no_catalog) -> None:  # noqa: ANN001
    pytest.importorskip("schemathesis")
    image_id = client.upload_image(make_image(), *GEOMETRY)
    session_id = client.create_session(image_id, "tiny-click")
    schema = requests.get(live.url + "/v1/openapi.json", headers=AUTH, timeout=10).json()
    tally = Tally()
    started = time.monotonic()
    schema_cases(schema, live.url, AUTH, examples_per_operation=10, deadline=started + SCHEMA_SECONDS, tally=tally,
                 path_parameters={"session_id": session_id, "image_id": image_id}, seed=20261123)
    assert not tally.failures, "\n".join(tally.failures[:20])
    assert tally.sent >= 200, (tally.sent, tally.statuses)
    assert time.monotonic() - started < SCHEMA_SECONDS + 15
    still_serving(live, client)
