// The explorer page: the latent plane with the test points, the decoded image under the pointer, a
// slider per coordinate of z, the interpolation strip, the run's settings and losses. It draws with
// window.minivae.decode (decoder.js), the function tests and people call.
"use strict";

(function () {
  const data = JSON.parse(document.getElementById("minivae-data").textContent);
  const config = data.config, plane = data.plane, points = data.points;
  const J = config.latent_dim, [H, W] = config.image_shape;
  const decode = MinivaeDecoder.makeDecoder(data.decoder, J);
  // current(): the z the page shows now (a copy)
  window.minivae = { config, decode, plane, current: () => z.slice() };

  const MAX_SLIDERS = 64, FRAMES = 8, PICK_RADIUS = 8;
  const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf"];
  const colour = (label) => (label === null ? COLOURS[0] : COLOURS[label % COLOURS.length]);

  // ---- the test points: their means (N, J), images (N, H*W) uint8, labels, plane coordinates
  const means = MinivaeDecoder.float32FromBase64(points.means);
  const images = MinivaeDecoder.uint8FromBase64(points.images);
  const count = means.length / J;
  const labels = points.labels || new Array(count).fill(null);
  const meanOf = (k) => Array.from(means.subarray(k * J, (k + 1) * J));
  const dot = (a, b) => a.reduce((sum, value, k) => sum + value * b[k], 0);
  const toPlane = (z) => {
    const centred = z.map((value, k) => value - plane.center[k]);
    return [dot(centred, plane.u), dot(centred, plane.v)];
  };
  const fromPlane = (a, b) => plane.center.map((c, k) => c + a * plane.u[k] + b * plane.v[k]);
  const planeXY = Array.from({ length: count }, (_, k) => toPlane(meanOf(k)));

  // ---- drawing helpers
  function drawImage(canvas, values) {  // values in [0, 1] (clamped), H*W of them, row-major
    canvas.width = W;
    canvas.height = H;
    const context = canvas.getContext("2d");
    const pixels = context.createImageData(W, H);
    for (let k = 0; k < H * W; k++) {
      const grey = Math.round(255 * Math.min(1, Math.max(0, values[k])));
      pixels.data.set([grey, grey, grey, 255], 4 * k);
    }
    context.putImageData(pixels, 0, 0);
  }

  const planeCanvas = document.getElementById("plane"), size = planeCanvas.width;
  const toPixel = (a, b) => [(a / plane.extent + 1) * size / 2, (1 - b / plane.extent) * size / 2];
  const fromPixel = (x, y) => [(2 * x / size - 1) * plane.extent, (1 - 2 * y / size) * plane.extent];

  const background = document.createElement("canvas");  // grid and points, drawn once
  background.width = background.height = size;
  (function drawBackground() {
    const context = background.getContext("2d");
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, size, size);
    context.strokeStyle = "#dddddd";
    const lines = plane.grid.length ? plane.grid : [0];
    for (const q of lines) {
      const [x, y] = toPixel(q, q);
      context.beginPath();
      context.moveTo(x, 0); context.lineTo(x, size);
      context.moveTo(0, y); context.lineTo(size, y);
      context.stroke();
    }
    planeXY.forEach(([a, b], k) => {
      const [x, y] = toPixel(a, b);
      context.fillStyle = colour(labels[k]);
      context.beginPath();
      context.arc(x, y, 3, 0, 2 * Math.PI);
      context.fill();
    });
  })();

  // ---- state: z, the pointer's plane point, the two picked test points
  let z = plane.center.slice();
  const other = labels.findIndex((label) => label !== labels[0]);  // B: the first of another class
  const picks = [0, other > 0 ? other : Math.min(1, count - 1)];
  let nextPick = 0;

  function drawPlane() {
    const context = planeCanvas.getContext("2d");
    context.drawImage(background, 0, 0);
    picks.forEach((k, n) => {
      const [x, y] = toPixel(...planeXY[k]);
      context.strokeStyle = "#000000";
      context.lineWidth = 2;
      context.beginPath(); context.arc(x, y, 7, 0, 2 * Math.PI); context.stroke();
      context.fillStyle = "#000000";
      context.fillText("AB"[n], x + 9, y - 9);
    });
    const [x, y] = toPixel(...toPlane(z));
    context.strokeStyle = "#000000";
    context.lineWidth = 1;
    context.beginPath();
    context.moveTo(x - 10, y); context.lineTo(x + 10, y);
    context.moveTo(x, y - 10); context.lineTo(x, y + 10);
    context.stroke();
  }

  let decodeMs = 0, frames = 0;
  function showZ() {  // decode z, draw it, move the sliders and the cross on the plane
    const start = performance.now();
    const image = decode(z);
    decodeMs += performance.now() - start;
    frames += 1;
    drawImage(document.getElementById("image"), image);
    sliders.forEach((slider, k) => {
      slider.input.value = z[k];
      slider.label.textContent = "z" + (k + 1) + " = " + z[k].toFixed(2);
    });
    drawPlane();
    document.getElementById("timing").textContent =
      "decoder forward in JavaScript: " + (decodeMs / frames).toFixed(2) + " ms per frame (mean of " + frames + ")";
  }

  // ---- sliders, one per coordinate of z (the first 64)
  const sliders = [];
  const sliderBox = document.getElementById("sliders");
  for (let k = 0; k < Math.min(J, MAX_SLIDERS); k++) {
    const row = document.createElement("label");
    const label = document.createElement("span");
    const input = document.createElement("input");
    Object.assign(input, { type: "range", min: -plane.slider, max: plane.slider, step: 0.01 });
    input.addEventListener("input", () => { z[k] = Number(input.value); showZ(); });
    row.append(label, input);
    sliderBox.append(row);
    sliders.push({ input, label });
  }
  if (J > MAX_SLIDERS) sliderBox.append("(sliders for the first " + MAX_SLIDERS + " of " + J + " coordinates)");

  // ---- the pointer over the plane sets z; a click picks the nearest test point for the interpolation
  function planePoint(event) {
    const box = planeCanvas.getBoundingClientRect();
    return [(event.clientX - box.left) * size / box.width, (event.clientY - box.top) * size / box.height];
  }
  planeCanvas.addEventListener("pointermove", (event) => {
    const [a, b] = fromPixel(...planePoint(event));
    z = fromPlane(a, b);
    document.getElementById("plane-status").textContent = "plane point (" + a.toFixed(2) + ", " + b.toFixed(2) + ")";
    showZ();
  });
  planeCanvas.addEventListener("click", (event) => {
    const [x, y] = planePoint(event);
    let nearest = -1, best = PICK_RADIUS * PICK_RADIUS;
    planeXY.forEach(([a, b], k) => {
      const [px, py] = toPixel(a, b), distance = (px - x) ** 2 + (py - y) ** 2;
      if (distance <= best) { best = distance; nearest = k; }
    });
    if (nearest < 0) return;
    picks[nextPick] = nearest;
    nextPick = 1 - nextPick;
    drawStrip();
    drawPlane();
  });

  // ---- the interpolation strip: test image A, decode((1 - t) mu_A + t mu_B) for 8 t in [0, 1], image B
  function drawStrip() {
    const strip = document.getElementById("strip");
    strip.replaceChildren();
    const [muA, muB] = picks.map(meanOf);
    const addCanvas = (values, title) => {
      const canvas = document.createElement("canvas");
      canvas.title = title;
      drawImage(canvas, values);
      strip.append(canvas);
    };
    const original = (k) => Array.from(images.subarray(k * H * W, (k + 1) * H * W), (v) => v / 255);
    addCanvas(original(picks[0]), "test image A");
    for (let n = 0; n < FRAMES; n++) {
      const t = n / (FRAMES - 1);
      addCanvas(decode(muA.map((a, k) => (1 - t) * a + t * muB[k])), "t = " + t.toFixed(2));
    }
    addCanvas(original(picks[1]), "test image B");
    const name = (k) => (points.class_names && labels[k] !== null ? points.class_names[labels[k]] : "#" + points.indices[k]);
    document.getElementById("strip-caption").textContent = "test image A (" + name(picks[0]) + "), 8 decoded " +
      "points on the line between their posterior means, test image B (" + name(picks[1]) + ")";
  }

  // ---- legend, caption, tables
  function fillTable(id, entries) {
    const table = document.getElementById(id);
    for (const [key, value] of entries) {
      const row = table.insertRow();
      row.insertCell().textContent = key;
      row.insertCell().textContent = typeof value === "object" ? JSON.stringify(value) : String(value);
    }
  }
  if (points.labels) {
    const legend = document.getElementById("legend");
    const present = [...new Set(labels)].sort((a, b) => a - b);
    for (const label of present) {
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour(label);
      item.append(swatch, points.class_names ? points.class_names[label] : "class " + label);
      legend.append(item);
    }
  }
  document.getElementById("run-name").textContent = data.run;
  document.getElementById("plane-caption").textContent = (plane.kind === "z"
    ? "The plane is z itself (J = 2); grid lines at the prior's quantiles 0.05, 0.15, ..., 0.95. "
    : "The plane through the mean of the test points' posterior means along their two principal directions " +
      "(J = " + J + "); the other directions follow the plane. ") +
    count + " test images of " + points.dataset + ", each drawn at its posterior mean (projected on the plane).";
  const METRIC_NAMES = { epoch: "epoch", test_loss: "-ELBO, z sampled", test_loss_mean: "-ELBO, z = mu",
    test_reconstruction: "reconstruction NLL", test_kl: "KL(q(z|x) || p(z))" };
  if (data.metrics) {
    fillTable("metrics", Object.entries(data.metrics).map(([key, value]) =>
      [METRIC_NAMES[key] || key, key === "epoch" ? value : value.toFixed(2)]));
  }
  else fillTable("metrics", [["metrics.csv", "not found in the run folder"]]);
  fillTable("settings", Object.entries(config));

  drawStrip();
  showZ();
})();
