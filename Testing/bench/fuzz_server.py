"""A longer fuzz run against a backend server: hand-written hostile requests and cases generated from
the server's OpenAPI schema (schemathesis), round after round with a new seed, until the time is up.

Prints requests sent, the number of 5xx answers (a 503 with Retry-After counts as capacity, not as
an error, but is listed), the slowest answer and the server's resident memory before and after.
By default it starts its own ``tsfm-backend serve`` on a free loopback port with two tiny random
models in a temporary model store and an empty catalog (so nothing is ever downloaded); ``--url``
fuzzes a running server instead (its memory is shown when ``--pid`` names its process).

    .venv/bin/python Testing/bench/fuzz_server.py [--minutes 5] [--examples 20] [--seed 1]
    .venv/bin/python Testing/bench/fuzz_server.py --url http://127.0.0.1:8765 --token T --pid 1234
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "Testing"))

import requests  # noqa: E402
from support.fuzzing import Tally, hostile_cases, make_image, schema_cases, send  # noqa: E402
from support.live_server import (  # noqa: E402
    TEST_TOKEN,
    free_port,
    module_on_path,
    save_click_model,
    start_serve_process,
    wait_until_healthy,
)

GEOMETRY = ((3.0, 3.0, 3.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def rss_mib(pid: int | None) -> str:
    """Resident memory of process ``pid`` in MiB (Linux /proc, else psutil), or "n/a"."""
    if pid is None:
        return "n/a"
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return f"{int(line.split()[1]) / 1024:.0f} MiB"
    except OSError:
        pass
    try:
        import psutil

        return f"{psutil.Process(pid).memory_info().rss / 2**20:.0f} MiB"
    except Exception:  # noqa: BLE001 - psutil missing or the process gone: say so
        return "n/a"


def start_own_server(workdir: Path) -> tuple[object, str, str]:
    """A ``serve`` process with a tiny automatic and a tiny promptable model; (process, url, token)."""
    from support.tiny_models import save_tiny_model

    models = [save_tiny_model(workdir / "tiny-stunet", classes={1: "liver", 2: "spleen"}, spacing=None,
                              patch_size=(16, 64, 64)),
              save_click_model(workdir / "tiny-click")]
    catalog = workdir / "catalog.json"
    catalog.write_text(json.dumps({"format_version": 1, "models": []}))
    port = free_port()
    process = start_serve_process(port, "--models", *map(str, models), home=workdir / "home",
                                  log_path=workdir / "server.log",
                                  env={"TSFM_TOKEN": TEST_TOKEN, "TSFM_CATALOG": str(catalog)})
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, 120, process)
    return process, url, TEST_TOKEN


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to fuzz (default 5)")
    parser.add_argument("--examples", type=int, default=20, help="schema cases per operation and mode per round")
    parser.add_argument("--seed", type=int, default=1, help="first round's seed (each round adds one)")
    parser.add_argument("--url", help="fuzz this running server instead of starting one")
    parser.add_argument("--token", default=os.environ.get("TSFM_TOKEN"), help="its bearer token ($TSFM_TOKEN)")
    parser.add_argument("--pid", type=int, help="its process id, for its memory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tsfm-fuzz-") as tmp:
        process = None
        if args.url:
            url, token, pid = args.url.rstrip("/"), args.token, args.pid
        else:
            process, url, token = start_own_server(Path(tmp))
            pid = process.pid  # type: ignore[attr-defined]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            module_on_path()
            from TSFMSegmentationLib.client import BackendClient

            client = BackendClient(url, token=token)
            image_id = client.upload_image(make_image(), *GEOMETRY)
            session_id = client.create_session(image_id, "tiny-click") if not args.url else "0" * 32
            schema = requests.get(url + "/v1/openapi.json", headers=headers, timeout=30).json()
            before = rss_mib(pid)
            tally, http = Tally(), requests.Session()
            http.headers.update(headers)
            started = time.monotonic()
            deadline = started + 60 * args.minutes
            rounds = 0
            while time.monotonic() < deadline:
                for case in hostile_cases(image_id, session_id):
                    if time.monotonic() > deadline:
                        break
                    send(http, url, case, tally)
                schema_cases(schema, url, headers, args.examples, deadline, tally,
                             path_parameters={"session_id": session_id, "image_id": image_id},
                             seed=args.seed + rounds)
                rounds += 1
                print(f"round {rounds}: {tally.sent} requests, {tally.server_errors} 5xx, "
                      f"{time.monotonic() - started:.0f} s", flush=True)
            healthy = requests.get(url + "/v1/health", timeout=10).status_code == 200
            after = rss_mib(pid)
        finally:
            if process is not None:
                process.terminate()  # type: ignore[attr-defined]
                process.wait(10)  # type: ignore[attr-defined]
    print(f"requests sent:   {tally.sent} in {rounds} round(s), {time.monotonic() - started:.0f} s")
    print(f"statuses:        {dict(sorted(tally.statuses.items()))}")
    print(f"5xx answers:     {tally.server_errors} (503 with Retry-After: {tally.statuses.get(503, 0)})")
    print(f"slowest answer:  {tally.slowest[0] * 1000:.0f} ms ({tally.slowest[1]})")
    print(f"server RSS:      {before} before, {after} after")
    print(f"healthy after:   {healthy}")
    for failure in tally.failures[:20]:
        print("FAILURE " + failure)
    return 1 if tally.failures or not healthy else 0


if __name__ == "__main__":
    sys.exit(main())
