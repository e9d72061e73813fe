"""The explorer page (minivae/explore.py): what it embeds, and, in headless Chromium, that its
JavaScript decoder gives what Python's gives, that the pointer, the sliders and the picks drive it,
and that it loads nothing from anywhere.

The browser tests are slow-tier and never skipped: without Chromium or Selenium they fail with the
line that installs them (tests/browser.py). Every run here is built in the test (small models, saved
as a run folder like minivae.train writes, on the tiny dataset of tests/tiny_data.py): no download.
"""

import base64
import json
import re

import numpy as np
import pytest
from scipy.special import ndtri

import browser
from minivae import VAE, get_backend, load_model
from minivae import settings as run_settings
from minivae.checkpoint import save_checkpoint
from minivae.explore import DEFAULT_POINTS, build_page, latent_plane, main
from minivae.optim import Adam
from tiny_data import images_and_labels, write_dataset

SIDE = 8  # the tiny images are 8x8: the conv decoder's 2x2 -> 4x4 -> 8x8
MODELS = [  # (architecture, likelihood, variance, J)
    ("mlp", "bernoulli", 1.0, 3), ("mlp", "continuous-bernoulli", 1.0, 2), ("mlp", "gaussian", 0.5, 4),
    ("mlp", "gaussian", "learned", 3), ("conv", "bernoulli", 1.0, 2), ("conv", "continuous-bernoulli", 1.0, 3),
    ("conv", "gaussian", 1.0, 3), ("conv", "gaussian", "learned", 2),
]
DATA = re.compile(r'<script type="application/json" id="minivae-data">(.*?)</script>', re.S)


def make_run(folder, architecture="mlp", likelihood="bernoulli", variance=1.0, latent_dim=3, scale=4.0, seed=0):
    """A run folder as minivae.train leaves it: checkpoint.npz, config.json, metrics.csv, on a tiny
    dataset written beside it. The decoder's weights are scaled by ``scale`` so that its logits reach
    well past |l| = 1 (both branches of the continuous Bernoulli's mean)."""
    data = write_dataset(folder / "data", train_count=16, test_count=40, rows=SIDE, columns=SIDE)
    backend = get_backend("numpy", dtype="float32", seed=seed)
    model = VAE(input_dim=SIDE * SIDE, hidden=(16,), latent_dim=latent_dim, likelihood=likelihood, variance=variance,
                architecture=architecture, image_shape=(SIDE, SIDE), channels=(4, 8), backend=backend)
    for p in model.decoder.parameters():
        p.data = p.data * np.float32(scale)
    run = folder / "run"
    run.mkdir()
    save_checkpoint(run / "checkpoint.npz", model, Adam(model.parameters()), epoch=1)
    settings = run_settings.used({
        **run_settings.defaults(run_settings.RUN_SETTINGS), "dataset": None, "data_dir": str(data), "seed": 1,
        "latent_dim": latent_dim, "likelihood": likelihood, "variance": variance, "architecture": architecture,
        "hidden": [16], "channels": [4, 8], "epochs": 1, "version": "0.1.0"})
    (run / "config.json").write_text(json.dumps(settings))
    (run / "metrics.csv").write_text("epoch,train_loss,test_loss,test_loss_mean,test_reconstruction,test_kl\n"
                                     "1,50.5,48.25,47.0,40.0,8.25\n")
    return run


def page_data(html):
    return json.loads(DATA.search(html).group(1))


def floats(text):
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


# ------------------------------------------------------------------------------------- the builder

def test_page_embeds_the_decoder_the_test_points_and_the_losses(tmp_path):
    run = make_run(tmp_path, "conv", "gaussian", "learned", latent_dim=3)
    data = page_data(build_page(str(run), points=25, log=lambda message: None))
    model = load_model(run)
    weights = floats(data["decoder"]["weights"])
    by_name = {p.name: p.data for p in model.decoder.parameters()}
    kinds = [layer["kind"] for layer in data["decoder"]["layers"]]
    assert kinds == ["linear", "relu", "reshape", "conv-transpose", "relu", "conv-transpose", "reshape"]
    for layer in data["decoder"]["layers"]:
        for field in ("W", "b") if "W" in layer else ():
            expected = by_name[f"{layer['name']}.{field}"].ravel()
            np.testing.assert_array_equal(weights[layer[field]:layer[field] + expected.size], expected)
    assert weights.size == sum(p.data.size for p in model.decoder.parameters())
    assert data["decoder"]["mean"] == "first-half" and data["config"]["latent_dim"] == 3
    points = data["points"]
    assert len(points["indices"]) == 25 == len(set(points["indices"]))
    x, labels = images_and_labels(40, SIDE, SIDE, seed=1)  # the test split write_dataset wrote
    images = np.frombuffer(base64.b64decode(points["images"]), dtype=np.uint8).reshape(25, -1)
    np.testing.assert_array_equal(images, x[points["indices"]].reshape(25, -1))
    assert points["labels"] == labels[points["indices"]].tolist()
    mu = model.encode((images / np.float32(255)).astype(np.float32))[0]
    np.testing.assert_allclose(floats(points["means"]).reshape(25, 3), mu, rtol=1e-6, atol=1e-6)
    assert data["metrics"] == {"epoch": 1, "test_loss": 48.25, "test_loss_mean": 47.0, "test_reconstruction": 40.0,
                               "test_kl": 8.25}


def test_the_plane_of_many_latents_holds_the_test_means_spread_along_it():
    rng = np.random.default_rng(3)
    center, basis = rng.normal(size=5), np.linalg.qr(rng.normal(size=(5, 2)))[0]
    coords = rng.normal(size=(50, 2)) * [3.0, 0.5]  # the widest spread first
    means = center + coords @ basis.T
    plane = latent_plane(means, 5)
    u, v = np.array(plane["u"]), np.array(plane["v"])
    a, b = (means - plane["center"]) @ u, (means - plane["center"]) @ v
    np.testing.assert_allclose(plane["center"] + np.outer(a, u) + np.outer(b, v), means, atol=1e-10)
    assert np.var(a) > np.var(b) and abs(u @ v) < 1e-12 and plane["kind"] == "principal"
    assert plane["extent"] >= np.abs(np.concatenate([a, b])).max() and plane["grid"] == []


def test_the_plane_of_two_latents_is_z_with_the_prior_quantiles():
    plane = latent_plane(np.array([[0.5, -4.0], [1.0, 1.0]]), 2)
    assert plane["center"] == [0, 0] and plane["u"] == [1, 0] and plane["v"] == [0, 1] and plane["kind"] == "z"
    np.testing.assert_allclose(plane["grid"], ndtri(np.linspace(0.05, 0.95, 10)))
    assert plane["extent"] == pytest.approx(4.4) and plane["slider"] >= 4.4


def test_the_command_writes_run_explorer_html_with_no_url_in_it(tmp_path, capsys):
    run = make_run(tmp_path)
    assert main([str(run)]) == 0
    html = (run / "explorer.html").read_text()
    assert "explorer.html" in capsys.readouterr().out
    assert len(page_data(html)["points"]["indices"]) == min(DEFAULT_POINTS, 40)
    loaders = r"\b(https?|ftp|wss?):|\bfetch\(|XMLHttpRequest|WebSocket|EventSource|sendBeacon|import\(|url\(|@import"
    assert not re.search(loaders, html, re.I)
    assert not re.search(r"""\b(src|href|action)\s*=\s*["'](?!data:)""", html, re.I)


@pytest.mark.parametrize("remove, expected", [("config.json", "holds no config.json"),
                                              ("checkpoint.npz", "holds no checkpoint.npz")])
def test_a_run_without_its_files_is_refused_in_one_line(tmp_path, capsys, remove, expected):
    run = make_run(tmp_path)
    (run / remove).unlink()
    assert main([str(run), "--out", str(tmp_path / "page.html")]) == 1
    error = capsys.readouterr().err
    assert expected in error and error.count("\n") == 1 and not (tmp_path / "page.html").exists()


# ------------------------------------------------------------------------------------- in Chromium

@pytest.fixture(scope="module")
def driver():
    try:
        with browser.chromium() as chromium:
            yield chromium
    except browser.BrowserMissing as error:
        pytest.fail(str(error), pytrace=False)


def open_run(driver, folder, **model):
    run = make_run(folder, **model)
    assert main([str(run), "--quiet"]) == 0
    browser.open_page(driver, run / "explorer.html")
    return run


CANVAS_GREYS = """const canvas = arguments[0];
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    return Array.from({length: pixels.length / 4}, (_, k) => pixels[4 * k]);"""
SHOWN = "return [Array.from(minivae.decode(minivae.current())), minivae.current()];"


def shown_image(driver, canvas):
    """The grey levels drawn on ``canvas`` and the decode of the z the page shows, as 0..255."""
    from selenium.webdriver.common.by import By

    drawn = np.array(driver.execute_script(CANVAS_GREYS, driver.find_element(By.CSS_SELECTOR, canvas)))
    decoded, z = driver.execute_script(SHOWN)
    return drawn, np.rint(255 * np.clip(decoded, 0, 1)), np.array(z)


@pytest.mark.slow
@pytest.mark.parametrize("architecture, likelihood, variance, latent_dim", MODELS)
def test_javascript_decode_equals_python_decode(driver, tmp_path, architecture, likelihood, variance, latent_dim):
    run = open_run(driver, tmp_path, architecture=architecture, likelihood=likelihood, variance=variance,
                   latent_dim=latent_dim)
    z = np.random.default_rng(7).normal(scale=2.0, size=(6, latent_dim))
    z[0] = 0
    js = np.array(driver.execute_script("return arguments[0].map((z) => Array.from(minivae.decode(z)))", z.tolist()))
    model = load_model(run)
    python = model.decode(z.astype(np.float32))
    assert js.shape == python.shape == (6, SIDE * SIDE)
    np.testing.assert_allclose(js, python, rtol=0, atol=1e-5)
    assert driver.execute_script("return minivae.decode(arguments[0]) instanceof Float32Array", z[1].tolist())
    config = driver.execute_script("return minivae.config")
    assert config["latent_dim"] == latent_dim and config["likelihood"] == likelihood
    if likelihood == "continuous-bernoulli":  # both branches of eq. (37) were compared
        logits = np.abs(model.decoder.forward(z.astype(np.float32)))
        assert logits.min() < 1 < logits.max()
    assert browser.console_errors(driver) == []


@pytest.mark.slow
def test_the_pointer_and_the_sliders_drive_the_drawn_image(driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    open_run(driver, tmp_path, latent_dim=3)
    plane = driver.execute_script("return minivae.plane")
    seen = []
    for dx, dy in [(-150, 120), (160, -90)]:
        browser.move_pointer(driver, "plane", dx, dy)
        drawn, decoded, z = shown_image(driver, "#image")
        np.testing.assert_array_equal(drawn, decoded)  # the image shows decode(z) of the pointer's z
        a, b = (z - plane["center"]) @ plane["u"], (z - plane["center"]) @ plane["v"]
        np.testing.assert_allclose(plane["center"] + a * np.array(plane["u"]) + b * np.array(plane["v"]), z, atol=1e-9)
        assert a * dx > 0 and b * dy < 0  # right is +a, up is +b
        seen.append((drawn, z))
    assert not np.array_equal(seen[0][0], seen[1][0])
    slider = driver.find_elements(By.CSS_SELECTOR, "#sliders input")[2]
    slider.send_keys(Keys.ARROW_RIGHT)
    drawn, decoded, z = shown_image(driver, "#image")
    np.testing.assert_array_equal(drawn, decoded)
    assert z[2] == pytest.approx(float(slider.get_attribute("value"))) and z[2] != seen[1][1][2]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#sliders input")) == 3
    assert browser.console_errors(driver) == []


@pytest.mark.slow
def test_a_click_on_a_test_point_starts_the_interpolation_there(driver, tmp_path):
    open_run(driver, tmp_path, latent_dim=3)
    data = page_data((tmp_path / "run" / "explorer.html").read_text())
    plane, points = data["plane"], data["points"]
    means = floats(points["means"]).reshape(-1, 3).astype(np.float64)
    xy = np.stack([(means - plane["center"]) @ plane["u"], (means - plane["center"]) @ plane["v"]], axis=1)
    pixels = xy / plane["extent"] * 240 * [1, -1]  # from the centre of the 480-pixel plane
    distances = np.linalg.norm(pixels[:, None] - pixels[None], axis=2) + np.eye(len(xy)) * 1e9
    k = int(np.argmax(distances.min(axis=1)))  # the test point farthest from the others: a click hits it alone
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "plane")
    ActionChains(driver).move_to_element_with_offset(canvas, *np.rint(pixels[k]).astype(int).tolist()).click().perform()
    strip = driver.find_elements(By.CSS_SELECTOR, "#strip canvas")
    assert len(strip) == 10
    first = np.array(driver.execute_script(CANVAS_GREYS, strip[0]))
    image = np.frombuffer(base64.b64decode(points["images"]), dtype=np.uint8).reshape(len(xy), -1)[k]
    np.testing.assert_array_equal(first, image)  # test image A is the clicked one
    frame = np.array(driver.execute_script(CANVAS_GREYS, strip[1]))
    decoded = driver.execute_script("return Array.from(minivae.decode(arguments[0]))", means[k].tolist())
    np.testing.assert_array_equal(frame, np.rint(255 * np.clip(decoded, 0, 1)))  # t = 0 decodes mu_A
    assert browser.console_errors(driver) == []


@pytest.mark.slow
def test_the_page_loads_nothing_from_anywhere(driver, tmp_path):
    driver.get_log("performance")  # drop what came before (the browser's own start page)
    run = open_run(driver, tmp_path, architecture="conv", latent_dim=2)
    browser.move_pointer(driver, "plane", 30, 30)
    assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    events = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    sent = [event["params"] for event in events if event["method"] == "Network.requestWillBeSent"]
    page = (run / "explorer.html").as_uri()
    assert [request["request"]["url"] for request in sent if request["documentURL"] == page] == [page]
    assert not [request["request"]["url"] for request in sent if re.match(r"(https?|wss?|ftp):", request["request"]["url"])]
    assert browser.console_errors(driver) == []


@pytest.mark.slow
def test_the_screenshot_helper_saves_the_page(tmp_path):
    run = make_run(tmp_path, latent_dim=2)
    try:
        browser.screenshot(str(run), tmp_path / "shot.png")
    except browser.BrowserMissing as error:
        pytest.fail(str(error), pytrace=False)
    from matplotlib.image import imread

    shot = imread(tmp_path / "shot.png")
    assert shot.shape[0] > 600 and shot.shape[1] > 1200 and np.unique(shot[..., :3].reshape(-1, 3), axis=0).shape[0] > 50
