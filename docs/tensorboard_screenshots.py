"""Screenshots of TensorBoard's tabs on a finished run, taken in headless Chromium (docs/tensorboard.md).

    python -m tas.pipeline --output runs/demo          # or: make demo
    python docs/tensorboard_screenshots.py --logdir runs/demo --out docs/tensorboard

Starts ``tensorboard --logdir`` on a free local port, opens each tab with ``chromium --headless
--screenshot`` (a virtual-time budget lets the single-page app fetch and draw its data), stops
TensorBoard, and shrinks each PNG to a palette image so the committed files stay small. It also
copies the search's final heat-maps out of the event file: TensorBoard's cards draw them shrunk
unless "Show actual image size" is ticked, and these are the actual images. Needs a ``chromium``
(or ``chromium-browser`` / ``google-chrome``) on PATH: ``apt-get install -y chromium``.

The browser profile is a fresh temporary one whose local storage is seeded first (a page served
from TensorBoard's future address): "Ignore outliers in chart scaling" off, so a chart of a few
points shows all of them, as a user would set it for a short run; and in the URL, smoothing 0 (a
few per-epoch points smoothed would show values never logged).
"""
from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

#: file name -> (URL fragment, window width, window height); the fragment selects the tab and filters tags
SHOTS = {
    "custom_scalars": ("#custom_scalars&_smoothingWeight=0", 1400, 760),
    "scalars": ("#scalars&_smoothingWeight=0&tagFilter=val_top1%7Cderived_flops", 1400, 520),
    "images": ("#images&tagFilter=width_probs", 1400, 900),
    "histograms": ("#histograms&tagFilter=width%2Flayer%5B12%5D%5C.0", 1400, 900),
    "text": ("#text&tagFilter=arch", 1400, 1350),
    "hparams": ("#hparams", 3000, 520),
    "graphs": ("#graphs&run=search", 1400, 900),
}


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return name
    sys.exit("error: no chromium on PATH (apt-get install -y chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float = 60.0) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url + "data/runs", timeout=2) as r:
                if r.status == 200 and len(r.read()) > 2:  # the runs are loaded, not just the server up
                    return
        except OSError:
            pass
        time.sleep(1.0)
    sys.exit(f"error: TensorBoard did not answer at {url} within {seconds:.0f} s")


#: local-storage entries TensorBoard's dashboards read their settings from (legacy ones, then Time Series)
SETTINGS = {"_ignoreYOutliers": "false", "_tb_global_settings": '{"ignoreOutliers": false, "scalarSmoothing": 0}'}


def _seed_settings(browser: str, profile: Path, port: int) -> None:
    """Write :data:`SETTINGS` into ``profile``'s local storage for ``127.0.0.1:port``.

    Local storage belongs to an origin; a throw-away server on TensorBoard's port serves the page
    that sets it, before TensorBoard itself starts there.
    """
    import json

    page = Path(tempfile.mkdtemp(prefix="tb-seed-"))
    script = "".join(f"localStorage.setItem({json.dumps(k)}, {json.dumps(v)});" for k, v in SETTINGS.items())
    (page / "seed.html").write_text(f"<html><body><script>{script}document.title='seeded'</script></body></html>")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(page))
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                        "--virtual-time-budget=2000", "--dump-dom", f"http://127.0.0.1:{port}/seed.html"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        server.shutdown()
    shutil.rmtree(page, ignore_errors=True)


def save_final_figures(run: Path, out: Path) -> list[Path]:
    """The last ``width_probs`` / ``depth_probs`` images of the search ``run``, as PNG files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"images": 0})
    acc.Reload()
    written = []
    for tag in ("width_probs", "depth_probs"):
        if tag in acc.Tags()["images"]:
            path = out / f"{tag}_final.png"
            path.write_bytes(acc.Images(tag)[-1].encoded_image_string)  # as written: a palette would band the colours
            written.append(path)
    return written


def _shrink(path: Path, colours: int = 128) -> None:
    """A palette PNG: TensorBoard's flat UI survives 128 colours with no visible loss, at a third the size."""
    from PIL import Image

    with Image.open(path) as im:
        im.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def take(logdir: Path, out: Path, shots: dict[str, tuple[str, int, int]], budget_ms: int = 20000) -> list[Path]:
    """Screenshot each of ``shots`` of TensorBoard on ``logdir`` into ``out/<name>.png``."""
    out.mkdir(parents=True, exist_ok=True)
    port, browser = _free_port(), _browser()
    profile = Path(tempfile.mkdtemp(prefix="tb-profile-"))
    _seed_settings(browser, profile, port)
    url = f"http://127.0.0.1:{port}/"
    tb = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
                           "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written = []
    try:
        _wait_for(url)
        time.sleep(3.0)  # the first reload of every run's events
        for name, (fragment, width, height) in shots.items():
            path = out / f"{name}.png"
            subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            f"--user-data-dir={profile}",
                            "--force-device-scale-factor=1", f"--window-size={width},{height}",
                            f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url + fragment],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)
            _shrink(path)
            written.append(path)
            print(f"{path}  {path.stat().st_size // 1024} KB")
    finally:
        tb.terminate()
        tb.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--logdir", default="runs/demo", help="a finished pipeline's --output (default: runs/demo)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "tensorboard"),
                   help="directory for the PNGs (default: docs/tensorboard)")
    p.add_argument("--only", nargs="*", default=None, choices=sorted(SHOTS), help="take only these")
    a = p.parse_args(argv)
    if not Path(a.logdir).is_dir():
        sys.exit(f"error: --logdir {a.logdir} is not a directory; run `make demo` first")
    shots = {k: v for k, v in SHOTS.items() if a.only is None or k in a.only}
    take(Path(a.logdir), Path(a.out), shots)
    search = Path(a.logdir) / "search" if (Path(a.logdir) / "search").is_dir() else Path(a.logdir)
    for path in save_final_figures(search, Path(a.out)):
        print(f"{path}  {path.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
