"""HTTP overhead of the backend server: requests per second, and interaction latency over HTTP vs in-process.

Both sides run the same click model on the same real CT with the same prompts, in one process:
the in-process side calls ``InteractiveSession.interact`` directly; the HTTP side goes through the
module's client, uvicorn on loopback, the model worker thread and the binary frame both ways.
Prints p50/p95 of each, the overhead as a ratio of the in-process time (target: <= 10 % for a
128^3 interaction on CPU), and plain request throughput (health, heartbeat).

    .venv/bin/python Testing/bench/bench_server.py [--size 128] [--preset tiny] [--repeats 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "Testing"))

from support.live_server import ThreadedServer, backend_app, module_on_path, read_ct, save_click_model  # noqa: E402
from tsfm_backend.shared_data import shared_data_dir  # noqa: E402


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(p50, p95) in seconds."""
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def prompts(shape: tuple[int, int, int], repeats: int) -> list[dict]:
    """Alternating positive and negative clicks near the image centre (the ROI stays the same size)."""
    centre = [s // 2 for s in shape]
    return [{"kind": "point", "point": [centre[0], centre[1] + (n % 3), centre[2]], "positive": n % 2 == 0}
            for n in range(repeats)]


def paired_latencies(model_path: Path, image, url: str, services, steps: list[dict],  # noqa: ANN001
                     warmup: int) -> dict[str, list[float]]:
    """Interleave the same prompts in-process and over HTTP, so both sides see the same machine load.

    Returns seconds per interaction: ``local`` (direct call), ``http`` (client round trip) and
    ``served`` (the model call inside the server, timed on its worker thread for the same request).
    """
    from tsfm_backend.checkpoints import load_model
    from tsfm_backend.inference.interactive import Interaction, InteractiveSession
    from tsfm_backend.volume import Volume
    from TSFMSegmentationLib.client import BackendClient

    served: list[float] = []
    call = services.worker.call

    def timed_call(task, *args, **kwargs):  # noqa: ANN001, ANN202
        def timed_task():  # noqa: ANN202
            began = time.perf_counter()
            try:
                return task()
            finally:
                served.append(time.perf_counter() - began)

        return call(timed_task, *args, **kwargs)

    services.worker.call = timed_call
    session = InteractiveSession(load_model(str(model_path)), Volume(*image))
    client = BackendClient(url)
    session_id = client.create_session(client.upload_image(*image), "bench-click")
    served.clear()
    times: dict[str, list[float]] = {"local": [], "http": [], "served": []}
    for n, step in enumerate(steps):
        began = time.perf_counter()
        session.interact(Interaction("point", step["positive"], tuple(step["point"]), None, 1))
        local = time.perf_counter() - began
        began = time.perf_counter()
        client.interact(session_id, step)
        remote = time.perf_counter() - began
        if n >= warmup:
            times["local"].append(local)
            times["http"].append(remote)
            times["served"].append(served[-1])
    client.close_session(session_id)
    services.worker.call = call
    return times


def throughput(url: str, seconds: float) -> dict[str, float]:
    """Sequential requests per second on one kept-alive connection."""
    from TSFMSegmentationLib.client import BackendClient

    client = BackendClient(url)
    rates = {}
    for name, call in (("health", client.health), ("models", client.models)):
        count, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            call()
            count += 1
        rates[name] = count / (time.perf_counter() - began)
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="interaction patch edge in voxels (default 128)")
    parser.add_argument("--preset", default="tiny", help="click_unet preset (tiny or small)")
    parser.add_argument("--repeats", type=int, default=12, help="interactions per side, warm-up included")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    module_on_path()
    ct_path = shared_data_dir() / "totalseg" / "example_ct.nii.gz"
    array, spacing, origin, direction = read_ct(ct_path)
    with tempfile.TemporaryDirectory() as folder:
        model_path = save_click_model(Path(folder) / "bench-click", model_id="bench-click", preset=args.preset,
                                      patch_size=(args.size,) * 3, pools=None)
        steps = prompts(array.shape, args.repeats)
        app, services = backend_app([model_path])
        with ThreadedServer(app) as server:
            times = paired_latencies(model_path, (array, spacing, origin, direction), server.url, services, steps,
                                     args.warmup)
            rates = throughput(server.url, 3.0)

    local_p50, local_p95 = percentiles(times["local"])
    http_p50, http_p95 = percentiles(times["http"])
    per_request = [rtt - model for rtt, model in zip(times["http"], times["served"], strict=True)]
    overhead_p50, overhead_p95 = percentiles(per_request)
    print(f"image {ct_path.name} {array.shape} (K, J, I); click_unet {args.preset} at {args.size}^3; "
          f"{len(times['local'])} timed interactions per side, interleaved; torch threads {args.threads}")
    print(f"in-process  p50 {local_p50 * 1000:8.1f} ms   p95 {local_p95 * 1000:8.1f} ms")
    print(f"over HTTP   p50 {http_p50 * 1000:8.1f} ms   p95 {http_p95 * 1000:8.1f} ms   "
          f"(HTTP/in-process p50 ratio {http_p50 / local_p50:.3f})")
    print(f"HTTP overhead per request (round trip minus the server's model call): p50 {overhead_p50 * 1000:.1f} ms, "
          f"p95 {overhead_p95 * 1000:.1f} ms = {overhead_p50 / local_p50:.1%} / {overhead_p95 / local_p50:.1%} "
          f"of the in-process p50 (target <= 10%)")
    print("requests/s on one connection: " + ", ".join(f"{name} {rate:.0f}" for name, rate in rates.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
