// The decoder of a minivae VAE, forward only, in plain JavaScript: the layers of minivae/layers.py and
// minivae/conv.py, in the order minivae.explore lists them, on the float32 weights embedded in the page.
// Sums are taken in float64 (every JavaScript number is one), so the result differs from NumPy's
// float32 decoder by float32 rounding only.
"use strict";

const MinivaeDecoder = (function () {
  // The page's one base64 text of little-endian float32 values (every current browser is little-endian).
  function float32FromBase64(text) {
    const bytes = uint8FromBase64(text);
    return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  }

  function uint8FromBase64(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let k = 0; k < binary.length; k++) bytes[k] = binary.charCodeAt(k);
    return bytes;
  }

  // Eq. (6): y = x W + b; x (in), W (in, out) row-major, b (out). Rows of W whose input is 0 (a ReLU's
  // zeros) add nothing and are skipped.
  function linear(x, layer) {
    const { W, b, out } = layer;
    const y = Float64Array.from(b);
    for (let i = 0; i < layer.in; i++) {
      const xi = x[i];
      if (xi === 0) continue;
      const row = i * out;
      for (let j = 0; j < out; j++) y[j] += xi * W[row + j];
    }
    return y;
  }

  // Eq. (32): the transpose convolution of x (C, H, W) with W (C, out, kh, kw), stride s, padding p:
  // y[o, s h - p + i, s w - p + j] += x[c, h, w] W[c, o, i, j], plus b[o]; y is (out, OH, OW) with
  // OH = (H - 1) s - 2 p + kh (eq. (31)). As minivae/conv.py computes it: one matrix product,
  // cols[(h, w), (o, i, j)] = sum_c x[c, h, w] W[c, (o, i, j)], then col2im adds each entry of cols to
  // the output pixel it belongs to (eq. (30)).
  function convTranspose(x, shape, layer) {
    const [C, H, Wd] = shape;
    const [kh, kw] = layer.kernel;
    const { stride: s, padding: p, out, W, b } = layer;
    const OH = (H - 1) * s - 2 * p + kh, OW = (Wd - 1) * s - 2 * p + kw;
    const pixels = H * Wd, taps = out * kh * kw;
    const cols = new Float64Array(pixels * taps);
    for (let c = 0; c < C; c++) {
      const weights = c * taps;
      for (let q = 0; q < pixels; q++) {
        const value = x[c * pixels + q];
        if (value === 0) continue;
        const row = q * taps;
        for (let t = 0; t < taps; t++) cols[row + t] += value * W[weights + t];
      }
    }
    const y = new Float64Array(out * OH * OW);
    for (let o = 0; o < out; o++) y.fill(b[o], o * OH * OW, (o + 1) * OH * OW);
    for (let h = 0; h < H; h++) {
      for (let w = 0; w < Wd; w++) {
        const row = (h * Wd + w) * taps;
        for (let o = 0; o < out; o++) {
          for (let i = 0; i < kh; i++) {
            const oh = s * h - p + i;
            if (oh < 0 || oh >= OH) continue;
            for (let j = 0; j < kw; j++) {
              const ow = s * w - p + j;
              if (ow >= 0 && ow < OW) y[(o * OH + oh) * OW + ow] += cols[row + (o * kh + i) * kw + j];
            }
          }
        }
      }
    }
    return { y, shape: [out, OH, OW] };
  }

  // sigmoid(l) without overflow: exp of a non-positive number only.
  function sigmoid(l) {
    if (l >= 0) return 1 / (1 + Math.exp(-l));
    const e = Math.exp(l);
    return e / (1 + e);
  }

  // The series P(s) = sum_{k=1}^{8} s^(k-1) / (2k+1)! of minivae/likelihoods.py (Horner's rule).
  const SINH_SERIES = [1 / 6, 1 / 120, 1 / 5040, 1 / 362880, 1 / 39916800, 1 / 6227020800,
    1 / 1307674368000, 1 / 355687428096000];

  // Eq. (37): g(l) = 1/l - 1/sinh(l), the continuous Bernoulli's log-normaliser gradient. Below |l| = 1
  // as l P(l^2) / (1 + l^2 P(l^2)) (no cancellation, 0 at l = 0); from |l| = 1 on in closed form.
  function cbNormalizerGrad(l) {
    const magnitude = Math.abs(l);
    if (magnitude < 1) {
      const square = l * l;
      let series = SINH_SERIES[SINH_SERIES.length - 1];
      for (let k = SINH_SERIES.length - 2; k >= 0; k--) series = series * square + SINH_SERIES[k];
      return l * series / (1 + square * series);
    }
    return Math.sign(l) * (1 / magnitude - 2 * Math.exp(-magnitude) / -Math.expm1(-2 * magnitude));
  }

  const ACTIVATIONS = { relu: (v) => (v > 0 ? v : 0), tanh: Math.tanh, sigmoid };

  // The mean of p(x|z) from the decoder's output (minivae/likelihoods.py), D values.
  const MEANS = {
    "sigmoid": (out) => out.map(sigmoid),                                       // Bernoulli
    "continuous-bernoulli": (out) => out.map((l) => sigmoid(l) - cbNormalizerGrad(l)),  // eq. (38)
    "identity": (out) => out,                                                    // Gaussian, fixed variance
    "first-half": (out) => out.subarray(0, out.length / 2),                      // [y | r], eq. (39)
  };

  // decoder: {layers, mean, input_dim, weights} as minivae.explore writes it. Returns decode(z) ->
  // Float32Array of D values (the mean image, row-major), z any array of J numbers.
  function makeDecoder(decoder, latentDim) {
    const weights = float32FromBase64(decoder.weights);
    const layers = decoder.layers.map((layer) => {
      if (!("W" in layer)) return layer;
      const size = layer.kind === "linear" ? layer.in * layer.out : layer.in * layer.out * layer.kernel[0] * layer.kernel[1];
      return Object.assign({}, layer, {
        W: weights.subarray(layer.W, layer.W + size),
        b: weights.subarray(layer.b, layer.b + layer.out),
      });
    });
    const mean = MEANS[decoder.mean];
    if (!mean) throw new Error("minivae explorer: unknown likelihood mean " + decoder.mean);

    return function decode(z) {
      if (z.length !== latentDim) throw new Error("decode(z): z must hold " + latentDim + " numbers, got " + z.length);
      let x = Float64Array.from(z), shape = [latentDim];
      for (const layer of layers) {
        if (layer.kind === "linear") {
          x = linear(x, layer);
          shape = [layer.out];
        } else if (layer.kind === "conv-transpose") {
          ({ y: x, shape } = convTranspose(x, shape, layer));
        } else if (layer.kind === "reshape") {
          shape = layer.shape;
        } else {
          x = x.map(ACTIVATIONS[layer.kind]);
        }
      }
      const values = mean(x);
      if (values.length !== decoder.input_dim) {
        throw new Error("minivae explorer: the decoder gave " + values.length + " values, not " + decoder.input_dim);
      }
      return Float32Array.from(values);
    };
  }

  return { makeDecoder, float32FromBase64, uint8FromBase64 };
})();
