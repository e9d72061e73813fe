"""Gradient checks: the hand-written backward against central finite differences in float64.

The differences, the error measure (eq. (24)) and the precision argument (why the differences are
always taken in float64) are in minivae/finite_differences.py. This file has two parts:

1. Reusable checks that return one ``GradientRow`` per checked array: ``check_model`` (every
   parameter of a VAE, eps held fixed, through ``VAE.forward`` and ``VAE.backward``), ``check_layer``
   and ``check_conv`` (one piece alone, with a random upstream gradient), with ``format_table`` to
   print them. The command line and ``examples/trace_gradients.py`` both use these.
2. The command line, ``python -m minivae.gradcheck`` (installed as ``minivae-gradcheck``): builds a
   small VAE of the sizes asked for, prints the table and exits 1 when an error is above the
   tolerance (2 for a bad flag or an unavailable backend). A float32 model's float32 backward is
   checked against ``FLOAT32_TOLERANCE`` = 1e-4, a float64 one against 1e-6.

Imports: at load time the module imports only ``backend``, ``cli``, ``errors``, ``finite_differences``
and ``settings`` of minivae; the model and its pieces (layers, gaussian, likelihoods, conv,
objectives) are imported inside the functions that use them. Nothing in minivae imports this module
(it is a command, at the top of the design's import order).
"""

import argparse
import contextlib
import math
import sys

from . import settings as table
from .backend import get_backend
from .cli import (Parser, UsageError, add_setting_flags, given_settings, positive_float, refuse_unused, run_command,
                  setting_values)
from .errors import BackendUnavailable
# the primitives, also offered from here: the tests and examples import them as gradcheck's
from .finite_differences import (DEFAULT_STEP, DEFAULT_TOLERANCE, FLOAT32_TOLERANCE, TINY, GradientRow,  # noqa: F401
                                 check_gradients, float64_twin, gradient_error, numerical_gradient, relative_error)

# Reusable checks: one row per checked array
# --------------------------------------------------------------------------------------------------

LAYER_KINDS = ("linear", "relu", "tanh", "sigmoid", "reparameterize", "kl", "bernoulli", "gaussian",
               "continuous-bernoulli")


def check_model(model, x, eps, h=DEFAULT_STEP, tolerance=DEFAULT_TOLERANCE, kl_weight=1.0):
    """Every parameter gradient of the batch loss of eq. (3), as ``model.loss_and_backward(x, eps)``
    computes it by hand, against central differences of the forward-only ``model.objective_terms(x, eps)``
    (the model's objective: the ELBO with KL weight ``kl_weight``, eq. (42), or the IWAE bound, eq. (43)).

    eps is held fixed, so the loss is a deterministic function of the parameters. The loss is one
    number, so its upstream gradient is the scalar 1 (there is nothing for it to rearrange). The
    differences are taken in float64: for a float32 model they are taken on a float64 copy of it
    (same weights, x and eps), so what is checked is the float32 backward itself. Leaves every
    ``parameter.grad`` set as ``loss_and_backward`` left it. Returns one GradientRow per parameter,
    in ``model.parameters()`` order.
    """
    model.loss_and_backward(x, eps, kl_weight)
    analytic = [p.grad.copy() for p in model.parameters()]
    reference = model
    if model.backend.dtype.name != "float64":
        reference = type(model)(**model.config, backend=float64_twin(model.backend))
        for p, p64 in zip(model.parameters(), reference.parameters()):
            p64.data[...] = p.data
        x, eps = x.astype("float64"), eps.astype("float64")

    def loss():
        return reference.objective_terms(x, eps, kl_weight).total

    gradients = [(p.name, p.data, a) for p, a in zip(reference.parameters(), analytic)]
    return check_gradients(loss, 1.0, gradients, model.backend, h, tolerance)


def check_layer(kind, backend, batch_size=4, input_dim=12, hidden=8, latent_dim=3, samples=1, variance=1.0,
                h=DEFAULT_STEP, tolerance=DEFAULT_TOLERANCE):
    """Check one piece of the VAE alone, with a random upstream gradient: its input gradient and,
    for a Linear layer, its parameter gradients. Returns (description, rows).

    kind: one of LAYER_KINDS. The arrays have the shapes that piece has inside a VAE of these sizes:
    a Linear maps (B, input_dim) to (B, hidden); an activation sees (B, hidden); the
    reparameterization and the KL see mu, logvar of (B, latent_dim) (with ``samples`` draws of eps);
    a likelihood sees (B, input_dim). The analytic gradients are computed in ``backend``'s dtype, the
    differences in float64 on the same values.
    """
    if kind not in LAYER_KINDS:
        raise ValueError(f"unknown layer kind {kind!r}: choose one of {LAYER_KINDS}")
    reference = float64_twin(backend)
    sizes = dict(B=batch_size, D=input_dim, H=hidden, J=latent_dim, L=samples, s2=variance)
    inputs = _layer_inputs(kind, reference, sizes)
    if reference is not backend:  # round to the backend's dtype first, so both sides see the same values
        inputs = {name: value.astype(backend.dtype) for name, value in inputs.items()}
        analytic = _layer_case(kind, backend, inputs, sizes)[4]
        inputs = {name: value.astype("float64") for name, value in inputs.items()}
    description, f, dout, arrays, analytic64 = _layer_case(kind, reference, inputs, sizes)
    if reference is backend:
        analytic = analytic64
    gradients = [(name, array, a) for (name, array), a in zip(arrays, analytic)]
    return description, check_gradients(f, dout, gradients, backend, h, tolerance)


CONV_KINDS = ("conv2d", "conv_transpose2d")


def check_conv(kind, backend, batch_size=2, in_channels=2, out_channels=3, image_shape=(7, 6), kernel=(3, 2),
               stride=2, padding=1, h=DEFAULT_STEP, tolerance=DEFAULT_TOLERANCE):
    """Check a Conv2d (eq. (28)-(30)) or ConvTranspose2d (eq. (33)) alone, with a random upstream
    gradient: its input, weight and bias gradients. Returns (description, rows).

    x: (batch_size, in_channels, *image_shape). The defaults have stride 2 with sizes it does not
    divide, a kernel that is not square, and padding. The analytic gradients are computed in
    ``backend``'s dtype, the differences in float64 on the same values (as ``check_layer``).
    """
    from .conv import Conv2d, ConvTranspose2d

    layer_class = {"conv2d": Conv2d, "conv_transpose2d": ConvTranspose2d}[kind]
    reference = float64_twin(backend)

    def build(on):
        return layer_class(in_channels, out_channels, kernel, stride, padding, on, kind)

    layer = build(reference)
    x = reference.standard_normal((batch_size, in_channels) + tuple(image_shape))
    dy = reference.standard_normal(layer.forward(x).shape)
    analytic_layer = layer if reference is backend else build(backend)
    if analytic_layer is not layer:  # the float32 code path, at float32 values; differences on float64 copies
        for p, p64 in zip(analytic_layer.parameters(), layer.parameters()):
            p.data[...] = p64.data.astype(backend.dtype)
            p64.data[...] = p.data
        x = x.astype(backend.dtype)
    analytic_layer.forward(x)
    dx = analytic_layer.backward(dy.astype(x.dtype))
    analytic = [dx, analytic_layer.W.grad.copy(), analytic_layer.b.grad.copy()]
    x = x.astype("float64")
    gradients = [(name, array, a) for (name, array), a in zip([("x", x), ("W", layer.W.data), ("b", layer.b.data)],
                                                              analytic)]
    equations = "eq. (28)-(30)" if kind == "conv2d" else "eq. (33)"
    description = (f"{layer!r} on x {tuple(x.shape)} -> {tuple(dy.shape)} ({equations})")
    return description, check_gradients(lambda: layer.forward(x), dy, gradients, backend, h, tolerance)


def _layer_inputs(kind, backend, sizes):
    """The random float64 values one piece is checked at, and its random upstream gradient."""
    randn, B, D, H, J, L = backend.standard_normal, sizes["B"], sizes["D"], sizes["H"], sizes["J"], sizes["L"]
    if kind == "linear":
        bound = 1 / math.sqrt(D)
        return {"x": randn((B, D)), "W": (backend.uniform((D, H)) * 2 - 1) * bound,
                "b": (backend.uniform((H,)) * 2 - 1) * bound, "dy": randn((B, H))}
    if kind in ("relu", "tanh", "sigmoid"):
        # |x| in [0.1, 3]: away from ReLU's kink at 0 and from where tanh and sigmoid saturate
        x = backend.xp.sign(randn((B, H))) * (0.1 + 2.9 * backend.uniform((B, H)))
        return {"x": x, "dy": randn((B, H))}
    if kind in ("reparameterize", "kl"):
        return {"mu": randn((B, J)), "logvar": 0.5 * randn((B, J)), "eps": randn((L, B, J)),
                "dz": randn((L * B, J)), "dkl": randn((B,))}
    if kind in ("bernoulli", "continuous-bernoulli"):
        return {"out": 2 * randn((B, D)), "x": backend.uniform((B, D)), "dnll": randn((B,))}
    width = 2 * D if sizes["s2"] == "learned" else D  # a learned variance: the output is [y | r]
    return {"out": randn((B, width)), "x": randn((B, D)), "dnll": randn((B,))}


def _layer_case(kind, backend, inputs, sizes):
    """Build one piece on ``backend`` at ``inputs`` and run its backward.

    Returns (description, f, dout, [(name, array f reads)], [analytic gradient of each array]).
    """
    from . import gaussian
    from .layers import Linear, activation
    from .likelihoods import NUMBER, make_likelihood

    xp, B, D, H, J, L = backend.xp, sizes["B"], sizes["D"], sizes["H"], sizes["J"], sizes["L"]
    if kind == "linear":
        layer = Linear(D, H, backend, "linear")
        layer.W.data[...], layer.b.data[...] = inputs["W"], inputs["b"]
        x, dy = inputs["x"], inputs["dy"]
        layer.forward(x)
        dx = layer.backward(dy)
        return (f"Linear {D} -> {H} (eq. (12))", lambda: layer.forward(x), dy,
                [("x", x), ("W", layer.W.data), ("b", layer.b.data)], [dx, layer.W.grad.copy(), layer.b.grad.copy()])
    if kind in ("relu", "tanh", "sigmoid"):
        layer = activation(kind, backend, kind)
        x, dy = inputs["x"], inputs["dy"]
        layer.forward(x)
        dx = layer.backward(dy)
        equation = {"relu": "eq. (13)", "tanh": "eq. (14)", "sigmoid": "eq. (15)"}[kind]
        return f"{type(layer).__name__} on ({B}, {H}) ({equation})", lambda: layer.forward(x), dy, [("x", x)], [dx]
    if kind in ("reparameterize", "kl"):
        mu, logvar, eps = inputs["mu"], inputs["logvar"], inputs["eps"]
        arrays = [("mu", mu), ("logvar", logvar)]
        if kind == "reparameterize":
            dz = inputs["dz"]
            return (f"reparameterize, mu and logvar ({B}, {J}), L={L} (eq. (5), (16))",
                    lambda: gaussian.reparameterize(xp, mu, logvar, eps), dz, arrays,
                    list(gaussian.reparameterize_backward(xp, dz, logvar, eps)))
        dkl = inputs["dkl"]
        return (f"KL to N(0, I), mu and logvar ({B}, {J}) (eq. (7), (17))",
                lambda: gaussian.kl_divergence(xp, mu, logvar), dkl, arrays,
                list(gaussian.kl_divergence_backward(xp, mu, logvar, dkl)))
    likelihood = make_likelihood(kind, backend, sizes["s2"])  # the registry's, minivae/likelihoods.py
    out, x, dnll = inputs["out"], inputs["x"], inputs["dnll"]  # dnll: a random upstream gradient per row
    _, dout_sum = likelihood.nll_and_grad(out, x)  # the gradient of the sum of the rows' NLL
    equations = f"{likelihood.equations['nll']}, {likelihood.equations['gradient']}"
    if likelihood.variance_kind == NUMBER:
        equations += f", s2={likelihood.variance:g}"
    return (f"{type(likelihood).__name__} NLL of ({B}, {D}) ({equations})", lambda: likelihood.nll(out, x), dnll,
            [(likelihood.output, out)], [dout_sum * dnll[:, None]])


def relu_input_margin(model, x, eps):
    """The smallest |input| of any ReLU layer of the model in ``model.forward(x, eps)`` (infinity
    without ReLU).

    A central difference that steps across ReLU's kink at 0 sees two different slopes; when this
    margin is below the step h, a FAIL may be the kink rather than a bug.
    """
    with smallest_relu_inputs(model.encoder, model.decoder) as smallest:
        model.forward(x, eps, for_backward=False)
    return min(smallest, default=math.inf)


@contextlib.contextmanager
def smallest_relu_inputs(*networks):
    """Within the block, each forward of a ReLU layer of ``networks`` (Sequentials) appends its smallest
    |input| to the list this yields; afterwards the layers are as they were."""
    from .layers import ReLU

    smallest = []
    relus = [layer for network in networks for layer in network.layers if isinstance(layer, ReLU)]

    def recording(forward):
        def forward_and_record(inputs):
            smallest.append(float(abs(inputs).min()))
            return forward(inputs)
        return forward_and_record

    for relu in relus:
        relu.forward = recording(relu.forward)  # an instance attribute over the class's method
    try:
        yield smallest
    finally:
        for relu in relus:
            del relu.forward


def format_table(rows):
    """The rows as a text table: name, shape, max |analytic|, relative error, ok or FAIL."""
    header = ("parameter", "shape", "max|analytic|", "rel. error", "status")
    cells = [header] + [(r.name, str(r.shape), f"{r.max_abs_analytic:.4e}", f"{r.error:.2e}", "ok" if r.ok else "FAIL")
                        for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells)


def summarize(rows, tolerance):
    """One line: the largest relative error, the tolerance, and how many gradients failed."""
    worst = max((r.error for r in rows), default=0.0)
    if any(math.isnan(r.error) for r in rows):
        worst = math.nan
    failed = sum(not r.ok for r in rows)
    verdict = "all ok" if not failed else f"{failed} of {len(rows)} FAIL"
    return f"max relative error {worst:.2e} over {len(rows)} gradients (tolerance {tolerance:g}): {verdict}"


# --------------------------------------------------------------------------------------------------
# Command line: python -m minivae.gradcheck
# --------------------------------------------------------------------------------------------------

PROGRAM = "minivae-gradcheck"


MODEL_SETTINGS = ("input_dim", "hidden", "latent_dim", "n_samples", "batch_size", "likelihood", "variance",
                  "activation", "objective", "beta", "architecture", "image_shape", "channels")
CHECK_SETTINGS = ("dtype", "backend", "seed")
SETTINGS = MODEL_SETTINGS + CHECK_SETTINGS
"""The settings of minivae/settings.py this command has; its own defaults (a small VAE) and help below."""
LAYER_SETTINGS = ("input_dim", "hidden", "latent_dim", "n_samples", "batch_size", "variance") + CHECK_SETTINGS
"""What ``--layer`` uses: the shapes of the piece, and the variance of the gaussian likelihood."""
DEFAULTS = {"input_dim": 12, "hidden": [8], "latent_dim": 3, "batch_size": 4, "likelihood": "bernoulli",
            "image_shape": [8, 8], "channels": [2, 3], "dtype": "float64", "backend": "numpy", "seed": 0}
HELPS = {"hidden": "a hidden layer width; repeat for several layers",
         "batch_size": "B, data points in the batch", "seed": "seeds the weights, the data and eps",
         "dtype": "dtype of the model and its analytic gradients; the finite differences are always float64, on "
                  "a copy of a float32 model",
         "architecture": "mlp, or conv: the conv VAE of minivae/conv.py on --image-shape images with --channels"}


def build_parser():
    parser = Parser(
        prog=PROGRAM,
        description="Check every hand-written gradient of a small VAE (or of one piece of it, --layer) against "
                    "central finite differences, eq. (24) of docs/derivation.md, with the noise eps held fixed. "
                    "Prints one row per gradient and exits 1 if any relative error is above the tolerance.")
    add_setting_flags(parser.add_argument_group("model"), MODEL_SETTINGS, DEFAULTS, HELPS,
                      types={"image_shape": _image_shape})
    check = parser.add_argument_group("check")
    check.add_argument("--layer", choices=LAYER_KINDS + CONV_KINDS,
                       help="check this one piece alone (its input and parameter gradients) instead of the VAE, at the "
                            "shapes it has in the model: uses --input-dim, the first --hidden, --latent-dim, "
                            "--samples, --batch-size and --variance; conv2d and conv_transpose2d: 2 -> 3 "
                            "channels, 7x6 images, kernel 3x2, stride 2, padding 1, --batch-size")
    add_setting_flags(check, CHECK_SETTINGS, DEFAULTS, HELPS)
    check.add_argument("--tolerance", type=positive_float,
                       help=f"largest relative error that passes (default {DEFAULT_TOLERANCE:g}; "
                            f"{FLOAT32_TOLERANCE:g} with --dtype float32)")
    check.add_argument("--step", type=positive_float,
                       help=f"finite-difference step h (default {DEFAULT_STEP:g})")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def main(argv=None):
    """Run the command line with ``argv`` (default: sys.argv[1:]); returns the exit status:
    0 every gradient agrees, 1 some gradient FAILs, 2 a bad flag (or one the checked model does not use)
    or an unavailable backend, 141 when the reader of the output went away (``| head``)."""
    return run_command(PROGRAM, build_parser(), _run, lambda args: "nothing was written", "the current folder",
                       lambda args: f"choose a smaller {table.memory_flags(setting_values(args, SETTINGS, DEFAULTS))}",
                       argv)


def _run(args):
    given, values = given_settings(args, SETTINGS), setting_values(args, SETTINGS, DEFAULTS)
    if args.layer:
        extra = next((name for name in given if name not in LAYER_SETTINGS), None)
        if extra is not None:
            raise UsageError(f"{table.option(extra)} is a setting of the whole VAE's check; --layer {args.layer} "
                             f"checks one piece alone: drop {table.option(extra)}, or drop --layer")
    else:
        refuse_unused(values, given)
    for name, value in values.items():
        setattr(args, name, value)
    float32 = args.dtype == "float32"
    tolerance = args.tolerance or (FLOAT32_TOLERANCE if float32 else DEFAULT_TOLERANCE)
    hidden = args.hidden
    try:
        backend = get_backend(args.backend, dtype=args.dtype, seed=args.seed)
    except BackendUnavailable as error:
        raise UsageError(" ".join(str(error).split())) from None
    margin = math.inf
    if args.layer in CONV_KINDS:
        step = args.step or DEFAULT_STEP
        description, rows = check_conv(args.layer, backend, args.batch_size, h=step, tolerance=tolerance)
        print(f"{PROGRAM}: {description}; random upstream gradient; {_settings(args, backend, step, tolerance)}")
    elif args.layer:
        step = args.step or DEFAULT_STEP
        description, rows = check_layer(args.layer, backend, args.batch_size, args.input_dim, hidden[0],
                                        args.latent_dim, args.n_samples, args.variance, step, tolerance)
        print(f"{PROGRAM}: {description}; random upstream gradient; {_settings(args, backend, step, tolerance)}")
    else:
        from .model import VAE

        conv = args.architecture == "conv"
        input_dim = args.image_shape[0] * args.image_shape[1] if conv else args.input_dim
        model = VAE(input_dim, hidden, args.latent_dim, activation=args.activation, likelihood=args.likelihood,
                    variance=args.variance, n_samples=args.n_samples, objective=args.objective, backend=backend,
                    architecture=args.architecture, image_shape=args.image_shape, channels=args.channels)
        x = backend.uniform((args.batch_size, input_dim))
        eps = model.draw_eps(args.batch_size)  # drawn once: held fixed for every difference
        if args.activation == "relu":
            margin = relu_input_margin(model, x, eps)
        # without --step: a step that cannot carry a ReLU input across its kink (moves reach ~2h)
        step = args.step or min(DEFAULT_STEP, max(margin / 10, 1e-6))
        sizes = "-".join(str(n) for n in [args.input_dim, *hidden, args.latent_dim, *reversed(hidden), args.input_dim])
        if conv:
            sizes = "conv {0}x{1}-{3}-{4}-{2}-{4}-{3}-{0}x{1}".format(*args.image_shape, args.latent_dim,
                                                                    *args.channels)
        loss = "loss of eq. (3)" if args.objective == "elbo" else "IWAE loss of eq. (43)"
        loss += f" with beta={args.beta:g} (eq. (42))" if args.beta != 1 else ""
        print(f"{PROGRAM}: VAE {sizes}, {args.likelihood} likelihood, {args.activation}, L={args.n_samples}, "
              f"batch {args.batch_size}; {loss} with eps held fixed; {_settings(args, backend, step, tolerance)}")
        rows = check_model(model, x, eps, step, tolerance, args.beta)
    if float32:
        print("note: float32 analytic gradients against float64 finite differences of the same weights (float32 "
              f"differences are only ~1e-2 accurate); expect errors ~1e-7, tolerance {tolerance:g}")
    print(format_table(rows))
    print(summarize(rows, tolerance))
    if not all(r.ok for r in rows) and margin < 10 * step:
        print(f"note: a ReLU input is {margin:.1e} from its kink at 0, within reach of the step h={step:g}; "
              "this FAIL may be the kink, not a bug: try another --seed")
    return 0 if all(r.ok for r in rows) else 1


def _image_shape(text):
    """``HxW`` -> (H, W), both multiples of 4 (the conv VAE's sizes, minivae/conv.py)."""
    from .conv import check_image_shape

    try:
        return list(check_image_shape(int(n) for n in text.lower().split("x", 1)))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}" if "multiples" in str(error) else
                                         f"{text!r} is not HxW (e.g. 8x8)") from None


def _settings(args, backend, step, tolerance):
    return f"{args.dtype} on {backend.name}, seed {args.seed}, step h={step:g}, tolerance {tolerance:g}"


if __name__ == "__main__":
    sys.exit(main())
