"""Per-click time through each protocol the server speaks, against our own ``/v1``, on the same clicks, in one run.

One server (uvicorn on loopback, in this process) serves a click model; each protocol opens its own
session on the same real CT (held-out sarcoma patient STS_005) and sends the same clicks, alternately
positive and negative near the tumour; the image upload is not timed. One function per protocol:

- ``v1_clicks``: the Slicer module's client (``TSFMSegmentationLib.client``), binary frames;
- ``nninteractive_clicks``: nnInteractive's own remote client (``nninteractive-client``), NNIA arrays,
  under ``/nninteractive``;
- ``monailabel_clicks``: MONAI Label's Slicer plugin's requests under ``/monailabel``: stateless, every
  click resent, the whole label map answered as ``.nrrd`` (the server runs only the new click).

Prints the median and p95 per click for each and the ratio to ``/v1`` (target: at most 1.10), with
the tiny random click model (protocol cost shows) and with the bundled ``universal-click-small``
(what a user waits for).

    OMP_NUM_THREADS=2 .venv/bin/python Testing/bench/bench_protocols.py [--clicks 8] [--models tiny universal-click-small]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "Testing"))

from support.live_server import (  # noqa: E402
    TEST_TOKEN,
    ThreadedServer,
    backend_app,
    module_on_path,
    read_ct,
    save_click_model,
)
from tsfm_backend.shared_data import shared_data_dir  # noqa: E402

Click = tuple[tuple[int, int, int], bool]


def clicks_near(centre: tuple[int, int, int], count: int) -> list[Click]:
    """Alternating positive and negative clicks a few voxels around ``centre`` (k, j, i)."""
    return [((centre[0], centre[1] + 2 * (n % 3), centre[2] + (n % 2)), n % 2 == 0) for n in range(count)]


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def v1_clicks(url: str, model: str, array: np.ndarray, spacing_ijk: tuple, clicks: list[Click]) -> list[float]:
    """Seconds per click through ``/v1`` with the module's client."""
    module_on_path()
    from TSFMSegmentationLib.client import BackendClient

    client = BackendClient(url, token=TEST_TOKEN)
    try:
        session = client.create_session(client.upload_image(array, spacing_ijk), model)
        times = [timed(lambda p=point, s=positive: client.interact(
            session, {"kind": "point", "point": list(p), "positive": s})) for point, positive in clicks]
        client.close_session(session)
        return times
    finally:
        client.close()


def nninteractive_clicks(url: str, model: str, array: np.ndarray, spacing_ijk: tuple,
                         clicks: list[Click]) -> list[float]:
    """Seconds per click through nnInteractive's protocol with its own remote client (the server's click model)."""
    from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

    with nnInteractiveRemoteInferenceSession(url + "/nninteractive", api_key=TEST_TOKEN) as session:
        session.set_image(array[None], {"spacing": list(spacing_ijk[::-1])})
        session.set_target_buffer(np.zeros(array.shape, dtype=np.uint8))
        return [timed(lambda p=point, s=positive: session.add_point_interaction(list(p), include_interaction=s))
                for point, positive in clicks]


def monailabel_clicks(url: str, model: str, array: np.ndarray, spacing_ijk: tuple, clicks: list[Click]) -> list[float]:
    """Seconds per click through MONAI Label's API under ``/monailabel``, as its Slicer plugin clicks: the
    volume uploaded once into a session (not timed), then per click ``GET /auth/`` before each of its two
    calls, ``GET /session/{id}`` and ``POST /infer/{model}`` with every click so far ([i, j, k]), the
    answer's form read with ``cgi`` and its ``.nrrd`` label map read with SimpleITK."""
    import io
    import json
    import warnings

    import requests
    import SimpleITK as sitk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import cgi

    base, boundary = url + "/monailabel", "----------lImIt_of_THE_fIle_eW_$"
    with tempfile.TemporaryDirectory() as scratch:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing([float(s) for s in spacing_ijk])
        volume_file = Path(scratch) / "volume.nii.gz"
        sitk.WriteImage(image, str(volume_file), True)
        with open(volume_file, "rb") as handle:
            session_id = requests.put(base + "/session/", files=[("files", (volume_file.name, handle))],
                                      timeout=600).json()["session_id"]
        foreground: list[list[int]] = []
        background: list[list[int]] = []

        def click(point: tuple[int, int, int], positive: bool) -> None:
            (foreground if positive else background).append([point[2], point[1], point[0]])
            params = {"label": "tumour", "foreground": foreground, "background": background,
                      "result_extension": ".nrrd", "result_dtype": "uint8", "client_id": "user-xyz"}
            body = (f'--{boundary}\r\nContent-Disposition: form-data; name="params"\r\n\r\n{json.dumps(params)}\r\n'
                    f"--{boundary}--\r\n").encode()
            requests.get(base + "/auth/", timeout=10)
            assert requests.get(f"{base}/session/{session_id}", timeout=10).status_code == 200
            requests.get(base + "/auth/", timeout=10)
            answer = requests.post(f"{base}/infer/{model}?image=volume&session_id={session_id}", data=body,
                                   timeout=600, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
            answer.raise_for_status()
            form = cgi.FieldStorage(fp=io.BytesIO(answer.content), environ={"REQUEST_METHOD": "POST"},
                                    headers={"content-type": answer.headers["content-type"],
                                             "content-length": str(len(answer.content))})
            result = next(field for field in form.list if field.filename)
            result_file = Path(scratch) / result.filename
            result_file.write_bytes(result.value)
            sitk.ReadImage(str(result_file))

        return [timed(lambda p=point, s=positive: click(p, s)) for point, positive in clicks]


PROTOCOLS = {"/v1": v1_clicks, "nnInteractive": nninteractive_clicks, "MONAI Label": monailabel_clicks}


def summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=["tiny", "universal-click-small"])
    args = parser.parse_args()
    case = shared_data_dir() / "sts" / "STS_005"
    array, spacing_ijk, _, _ = read_ct(case / "ct.nii.gz")
    array = np.ascontiguousarray(array, dtype=np.float32)
    mask = read_ct(case / "mask.nii.gz")[0] > 0
    centre = tuple(int(v) for v in np.argwhere(mask).mean(axis=0).round())
    clicks = clicks_near(centre, args.clicks)
    with tempfile.TemporaryDirectory() as scratch:
        for model in args.models:
            path = save_click_model(Path(scratch) / "tiny") if model == "tiny" else model
            app, services = backend_app([path])
            model_id = services.models.ids[0]
            with ThreadedServer(app) as server:
                # A first session warms the model (first-call allocations) before anything is timed.
                v1_clicks(server.url, model_id, array, spacing_ijk, clicks[:2])
                results = {name: run(server.url, model_id, array, spacing_ijk, clicks)
                           for name, run in PROTOCOLS.items()}
            base = summary(results["/v1"])[0]
            print(f"{model_id}: {len(clicks)} clicks on STS_005 {array.shape}")
            for name, times in results.items():
                median, p95 = summary(times)
                print(f"  {name:14s} median {median * 1000:8.1f} ms  p95 {p95 * 1000:8.1f} ms  "
                      f"ratio to /v1 {median / base:.3f}")


if __name__ == "__main__":
    main()
