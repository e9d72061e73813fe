"""The explorer page of a run (``python -m minivae.explore``): its size, and the time one decoded frame
takes in headless Chromium (``window.minivae.decode(z)``, the function the page draws with), as the
README quotes them.

    python benchmarks/bench_explorer.py RUN                 # 200 frames after 20 warm-up ones
    python benchmarks/bench_explorer.py RUN --frames 1000

Needs Debian's chromium and chromium-driver and Selenium (the test extra), as the explorer's tests do.
Prints the page's bytes and the median, 10th and 90th percentile of the milliseconds per frame, with
the machine's load average before and after (numbers taken on a loaded machine are not results).
"""

import argparse
import os
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from browser import chromium, open_page  # noqa: E402  (tests/browser.py: headless Chromium)

from minivae.explore import main as explore  # noqa: E402

TIMING = """
const frames = arguments[0], warm = arguments[1], J = window.minivae.config.latent_dim;
const times = [];
for (let i = 0; i < warm + frames; i++) {
  const z = new Float32Array(J).map((_, j) => Math.sin(0.37 * i + j));
  const start = performance.now();
  window.minivae.decode(z);
  if (i >= warm) times.push(performance.now() - start);
}
return times;
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder of python -m minivae.train")
    parser.add_argument("--frames", type=int, default=200, help="timed frames (default: 200)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        page = pathlib.Path(folder) / "explorer.html"
        if explore([args.run, "--out", str(page), "--quiet"]) != 0:
            return 1
        with chromium() as driver:
            open_page(driver, page)
            times = sorted(driver.execute_script(TIMING, args.frames, 20))
        size = page.stat().st_size
    percentile = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    print(f"page: {size:,} bytes; decode per frame: median {percentile(0.5):.2f} ms "
          f"(10th-90th percentile {percentile(0.1):.2f}-{percentile(0.9):.2f} ms, {len(times)} frames); "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
