"""Trace every number of one forward and backward pass of a tiny VAE, to follow (or redo) by hand.

The VAE is D-H-J-H-D (by default 4-3-2-3-4: input 4, hidden 3, latent 2; ReLU, Bernoulli likelihood),
in float64, on one data point, with the noise eps held fixed. The script calls the library's own layers and functions
one step at a time, in the order of section 13 of docs/derivation.md, and prints every intermediate
array, each labelled with the equation that defines it there. Beside each parameter gradient it
prints the central finite difference of eq. (24) and the relative error between the two.

It also checks that its step-by-step gradients are exactly those of ``VAE.loss_and_backward`` (the
code path training uses), and ends with one summary line; it exits 1 if any relative error is above
the tolerance or the two paths disagree.

Run it from the repository root:

    python examples/trace_gradients.py

Other sizes and values: ``--dims D H J``, the data point ``--x`` (D numbers), the noise ``--eps``
(J numbers), the seed of the initialisation ``--seed``, and any parameter set by hand with
``--set NAME=v1,v2,...`` (NAME one of W1 b1 W2 b2 W3 b3 W4 b4, the values in row-major order). The
worked example of section 12 of docs/derivation.md is one such run, on a one-unit network:

    python examples/trace_gradients.py --dims 1 1 1 --x 1 --eps 1 --set W1=0.5 --set b1=0.5 ...

(the whole command is in section 12).

The flags of sections 19-22 trace the default 4-3-2-3-4 network with another likelihood or objective: the forward
values, the likelihood's gradient, the objective's own quantities (the IWAE's log-weights and
normalised weights, the KL weight) and every parameter gradient beside its finite difference:

    python examples/trace_gradients.py --likelihood continuous-bernoulli
    python examples/trace_gradients.py --likelihood gaussian --variance learned
    python examples/trace_gradients.py --objective iwae --samples 3
    python examples/trace_gradients.py --beta 0.5

Every number is printed with 6 significant digits, so any line can be recomputed by hand (or in a
Python prompt) from the lines above it to about 5 digits.
"""

import argparse
import pathlib
import sys

import numpy as np

try:
    import minivae  # noqa: F401  (installed, e.g. `pip install -e .`)
except ImportError:  # run from a source checkout without installing: use the checkout's package
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from minivae import objectives
from minivae.backend import numpy_backend
from minivae.cli import quiet_on_closed_pipe
from minivae.cli import nonnegative_float, positive_int, variance_setting
from minivae.gaussian import LOG_2PI, kl_divergence, kl_divergence_backward, reparameterize, reparameterize_backward
from minivae.gradcheck import DEFAULT_TOLERANCE, check_model, summarize
from minivae.likelihoods import LIKELIHOODS, likelihood_class
from minivae.model import VAE

SEED = 21  # weights where 2 of the 3 ReLU units are on in each hidden layer, none near the kink at 0
DIMS = (4, 3, 2)  # D, H, J
X = (1.0, 0.0, 1.0, 1.0)  # one binary data point, D numbers
EPS = (0.5, -1.2)  # the fixed noise, J numbers
PARAMETER_NAMES = ("W1", "b1", "W2", "b2", "W3", "b3", "W4", "b4")  # in the order of model.parameters()
LABEL_WIDTH = 50


def parse_setting(text):
    """``NAME=v1,v2,...`` -> (NAME, [v1, v2, ...]) for ``--set``."""
    name, sep, values = text.partition("=")
    if not sep or name not in PARAMETER_NAMES:
        raise argparse.ArgumentTypeError(f"expected NAME=v1,v2,... with NAME one of {' '.join(PARAMETER_NAMES)}, "
                                         f"got {text!r}")
    try:
        return name, [float(v) for v in values.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: expected comma-separated numbers, got {values!r}") from None


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Print every number of one forward and backward pass of a "
                                                 "tiny VAE, with the equation of docs/derivation.md for each.")
    parser.add_argument("--dims", nargs=3, type=int, default=DIMS, metavar=("D", "H", "J"),
                        help="input, hidden and latent size (default: %(default)s)")
    parser.add_argument("--x", nargs="+", type=float, default=X, help="the data point, D numbers in [0, 1]")
    parser.add_argument("--eps", nargs="+", type=float, default=EPS, help="the fixed noise, J numbers")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the PyTorch-style initialisation")
    parser.add_argument("--set", dest="settings", action="append", type=parse_setting, default=[],
                        metavar="NAME=v1,v2,...", help="set a parameter by hand (row-major), e.g. W2=1,0.5")
    variant = parser.add_argument_group("another likelihood or objective (sections 19-22; the 4-3-2-3-4 network)")
    variant.add_argument("--likelihood", choices=LIKELIHOODS, default="bernoulli", help="(default: bernoulli)")
    variant.add_argument("--variance", type=variance_setting, default=1.0,
                         help="the gaussian likelihood's variance, or 'learned' (default: 1.0)")
    variant.add_argument("--objective", choices=objectives.OBJECTIVES, default="elbo", help="(default: elbo)")
    variant.add_argument("--samples", type=positive_int, default=1, help="L (elbo) or K (iwae) (default: 1)")
    variant.add_argument("--beta", type=nonnegative_float, default=1.0, help="the KL weight, eq. (42) (default: 1)")
    args = parser.parse_args(argv)
    args.classic = (args.likelihood, args.variance, args.objective, args.samples, args.beta) == (
        "bernoulli", 1.0, "elbo", 1, 1.0)
    if not args.classic and (tuple(args.dims), tuple(args.x), tuple(args.eps), args.seed, args.settings) != (DIMS, X, EPS, SEED, []):
        parser.error("--dims, --x, --eps, --seed and --set trace the Bernoulli ELBO network; the likelihood and "
                     "objective flags trace the 4-3-2-3-4 one: use one kind or the other")
    problem = objectives.combination_problem(args.objective, args.beta)
    if problem is not None:
        parser.error(f"--objective {args.objective} --beta {args.beta:g}: {problem}")
    try:
        likelihood_class(args.likelihood, args.variance)
    except ValueError as error:
        parser.error(f"--likelihood {args.likelihood} --variance {args.variance}: {error}")
    d, h, j = args.dims
    if min(args.dims) < 1:
        parser.error(f"--dims: every size must be >= 1, got {d} {h} {j}")
    if len(args.x) != d:
        parser.error(f"--x: expected D = {d} numbers, got {len(args.x)}")
    if len(args.eps) != j:
        parser.error(f"--eps: expected J = {j} numbers, got {len(args.eps)}")
    sizes = dict(zip(PARAMETER_NAMES, (d * h, h, h * 2 * j, 2 * j, j * h, h, h * d, d)))
    for name, values in args.settings:
        if len(values) != sizes[name]:
            parser.error(f"--set {name}: expected {sizes[name]} numbers for dims {d} {h} {j}, got {len(values)}")
    return args


def fmt(array):
    """An array in full, 6 significant digits per number (``+ 0.0`` prints relu's -0.0 as 0)."""
    return np.array2string(np.asarray(array), formatter={"float_kind": lambda v: f"{v + 0.0:.6g}"},
                           separator=", ", max_line_width=100)


def show(label, equation, array):
    """One labelled line, the array's shape, and the array itself (indented) below it."""
    array = np.asarray(array)
    print(f"{label:<{LABEL_WIDTH}} {equation:<16} shape {array.shape}")
    for line in fmt(array).splitlines():
        print("    " + line)


def show_gradient(label, equation, analytic, row):
    """A parameter gradient, beside it its finite-difference value, then their relative error."""
    print(f"{label:<{LABEL_WIDTH}} {equation:<16} shape {analytic.shape}")
    left, right = fmt(analytic).splitlines(), fmt(row.numeric).splitlines()
    width = max(len(line) for line in left)
    print(f"    {'backward (analytic)':<{width}}   finite difference, eq. (24)")
    for a, n in zip(left, right):
        print(f"    {a:<{width}}   {n}")
    print(f"    rel. error {row.error:.2e}  {'ok' if row.ok else 'FAIL'}")


def main(argv=None):
    args = parse_args(argv)
    return trace_classic(args) if args.classic else trace_variant(args)


def trace_variant(args):
    """The forward values, the likelihood's and the objective's own gradients, and every parameter
    gradient beside its finite difference, for the likelihood and objective of the flags."""
    backend = numpy_backend("float64", seed=SEED)
    xp = backend.xp
    model = VAE(4, (3,), 2, activation="relu", likelihood=args.likelihood, variance=args.variance,
                n_samples=args.samples, objective=args.objective, backend=backend)
    x = np.array([X])  # (B, D) = (1, 4)
    x = x * 0.8 + 0.1 if args.likelihood != "bernoulli" else x  # grey levels for the densities on [0, 1]
    eps = np.array([[EPS]]) if args.samples == 1 else backend.standard_normal((args.samples, 1, 2))
    print(f"A 4-3-2-3-4 VAE on one data point, float64, eps held fixed: {args.likelihood} likelihood"
          f"{' (learned variance)' if args.variance == 'learned' else ''}, objective {args.objective}, "
          f"{'K' if args.objective == 'iwae' else 'L'} = {args.samples}, beta = {args.beta:g}.")
    print("\n== Forward ==")
    show("x  (the data point)", "", x)
    mu, logvar = model.encode(x)
    show("mu, logvar = encoder(x)", "eq. (4)", xp.concatenate([mu, logvar], axis=1))
    show("eps  (fixed noise, one row per sample)", "eq. (5)", eps.reshape(-1, 2))
    z = reparameterize(xp, mu, logvar, eps)
    show("z = mu + eps * exp(0.5 * logvar)", "eq. (5)", z)
    out = model.decoder.forward(z)
    equations = {"bernoulli": ("eq. (8), (10)", "eq. (10)"), "continuous-bernoulli": ("eq. (35)", "eq. (38)"),
                 "gaussian": ("eq. (39), (40)", "eq. (40)") if args.variance == "learned" else ("eq. (9)", "eq. (9)")}
    nll_equation, mean_equation = equations[args.likelihood]
    show("decoder output (logits, or [y | r])", "eq. (6)", out)
    show("mean of p(x|z)", mean_equation, model.likelihood.mean(out))
    nll, dout = model.likelihood.nll_and_grad(out, xp.tile(x, (args.samples, 1)))
    show("NLL per sample", nll_equation, nll)
    show("dNLL/d(decoder output)", {"bernoulli": "eq. (10)", "continuous-bernoulli": "eq. (37)"}.get(
        args.likelihood, "eq. (41)" if args.variance == "learned" else "eq. (11)"), dout)
    kl = kl_divergence(xp, mu, logvar)
    show("KL (closed form)", "eq. (7)", kl)
    if args.objective == "iwae":
        z_samples, eps_samples = z.reshape(eps.shape), eps.reshape(args.samples, 1, 2)
        log_weights = objectives.importance_log_weights(xp, nll.reshape(args.samples, 1), z_samples, eps_samples,
                                                        logvar)
        show("log q(z|x) = -0.5 sum(log 2pi + logvar + eps^2)", "eq. (44)",
             -0.5 * (LOG_2PI + logvar + eps_samples ** 2).sum(axis=-1))
        show("log w = -NLL + log p(z) - log q(z|x)", "eq. (43)", log_weights)
        show("normalised weights w~ (constants of the backward)", "eq. (45)",
             objectives.normalized_weights(xp, log_weights))
        loss = (-objectives.log_mean_exp(xp, log_weights)).sum()
        show("loss = -log mean_k w_k", "eq. (43)", loss)
    else:
        loss = nll.sum() / args.samples + args.beta * kl.sum()
        show(f"loss = mean NLL + beta KL, beta = {args.beta:g}", "eq. (42)", loss)
    terms = model.loss_and_backward(x, eps, args.beta)
    rows = check_model(model, x, eps, kl_weight=args.beta)
    print("\n== Parameter gradients of VAE.loss_and_backward, beside finite differences ==")
    equation = "eq. (46)" if args.objective == "iwae" else "eq. (12)"
    for row, p in zip(rows, model.parameters()):
        show_gradient(f"d{p.name}", equation, p.grad, row)
    print("\n== Checks ==")
    same = abs(float(loss) - float(terms.total)) <= 1e-12 * max(1.0, abs(float(loss)))
    print("step-by-step loss == VAE.loss_and_backward's:", "agree" if same else f"DIFFERENT ({float(terms.total)})")
    print(summarize(rows, DEFAULT_TOLERANCE))
    return 0 if same and all(row.ok for row in rows) else 1


def trace_classic(args):
    d, h, J = args.dims
    backend = numpy_backend("float64", seed=args.seed)
    xp = backend.xp
    model = VAE(d, (h,), J, activation="relu", likelihood="bernoulli", backend=backend)
    linear1, relu1, head = model.encoder.layers  # encoder.0, encoder.1, encoder.2
    linear3, relu3, linear4 = model.decoder.layers  # decoder.0, decoder.1, decoder.2
    parameters = dict(zip(PARAMETER_NAMES, model.parameters()))
    for name, values in args.settings:
        parameters[name].data[...] = np.reshape(values, parameters[name].data.shape)
    x, eps = np.array([args.x]), np.array([args.eps])  # shapes (B, D) and (B, J), B = 1

    print(f"A {d}-{h}-{J}-{h}-{d} VAE on one data point, float64, eps held fixed. "
          "Equation numbers: docs/derivation.md.")
    set_by_hand = " ".join(name for name, _ in args.settings)
    print(f"\n== Parameters (PyTorch nn.Linear initialisation, seed {args.seed}"
          + (f"; set by hand: {set_by_hand}" if set_by_hand else "") + "); y = x W + b, W is (in, out) ==")
    for short, p in parameters.items():
        show(f"{short}  ({p.name})", "", p.data)

    print("\n== Forward ==")
    show("x  (the data point)", "", x)
    a1 = linear1.forward(x)
    show("a1 = x W1 + b1", "eq. (4)", a1)
    h = relu1.forward(a1)
    show("h = relu(a1)", "eq. (4)", h)
    head_out = head.forward(h)
    show("[mu, logvar] = h W2 + b2", "eq. (4)", head_out)
    mu, logvar = head_out[:, :J], head_out[:, J:]
    show("mu = first J columns", "eq. (4)", mu)
    show("logvar = last J columns", "eq. (4)", logvar)
    show("eps  (fixed noise)", "eq. (5)", eps)
    show("std = exp(0.5 * logvar)", "eq. (5)", xp.exp(0.5 * logvar))
    z = reparameterize(xp, mu, logvar, eps)
    show("z = mu + eps * exp(0.5 * logvar)", "eq. (5)", z)
    a3 = linear3.forward(z)
    show("a3 = z W3 + b3", "eq. (6)", a3)
    g = relu3.forward(a3)
    show("g = relu(a3)", "eq. (6)", g)
    logits = linear4.forward(g)
    show("logits l = g W4 + b4", "eq. (6)", logits)
    nll, dlogits = model.likelihood.nll_and_grad(logits, x)
    show("NLL = sum_d softplus(l_d) - x_d l_d", "eq. (8)", nll)
    kl = kl_divergence(xp, mu, logvar)
    show("KL = -0.5 sum_j (1 + logvar - mu^2 - e^logvar)", "eq. (7)", kl)
    loss = nll.sum() + kl.sum()
    show("loss = NLL + KL  (L = 1 sample, B = 1)", "eq. (3)", loss)

    # the library's own one-call forward and backward, to compare with the step-by-step one at the end
    terms = model.loss_and_backward(x, eps)
    library_grads = {p.name: p.grad.copy() for p in model.parameters()}
    # the finite difference of every parameter gradient, eq. (24)
    rows = {row.name: row for row in check_model(model, x, eps)}

    print("\n== Backward (each d<name> is dLoss/d<name>) ==")
    show("sigmoid(l)", "eq. (10)", model.likelihood.mean(logits))
    show("dlogits = sigmoid(l) - x", "eq. (10)", dlogits)
    dg = linear4.backward(dlogits)
    show_gradient("dW4 = g^T dlogits", "eq. (12)", linear4.W.grad, rows["decoder.2.W"])
    show_gradient("db4 = sum_rows dlogits", "eq. (12)", linear4.b.grad, rows["decoder.2.b"])
    show("dg = dlogits W4^T", "eq. (12)", dg)
    da3 = relu3.backward(dg)
    show("da3 = dg * [a3 > 0]", "eq. (13)", da3)
    dz = linear3.backward(da3)
    show_gradient("dW3 = z^T da3", "eq. (12)", linear3.W.grad, rows["decoder.0.W"])
    show_gradient("db3 = sum_rows da3", "eq. (12)", linear3.b.grad, rows["decoder.0.b"])
    show("dz = da3 W3^T", "eq. (12)", dz)
    dmu_rec, dlogvar_rec = reparameterize_backward(xp, dz, logvar, eps)
    show("dmu via z = dz", "eq. (16)", dmu_rec)
    show("dlogvar via z = dz * eps * 0.5 * exp(0.5 logvar)", "eq. (16)", dlogvar_rec)
    dmu_kl, dlogvar_kl = kl_divergence_backward(xp, mu, logvar)
    show("dmu via KL = mu", "eq. (17)", dmu_kl)
    show("dlogvar via KL = 0.5 * (exp(logvar) - 1)", "eq. (17)", dlogvar_kl)
    dmu, dlogvar = dmu_rec + dmu_kl, dlogvar_rec + dlogvar_kl
    show("dmu = dmu via z + dmu via KL", "eq. (18)", dmu)
    show("dlogvar = dlogvar via z + dlogvar via KL", "eq. (18)", dlogvar)
    dhead = xp.concatenate([dmu, dlogvar], axis=1)
    show("d[mu, logvar] = [dmu, dlogvar]", "eq. (18)", dhead)
    dh = head.backward(dhead)
    show_gradient("dW2 = h^T d[mu, logvar]", "eq. (12)", head.W.grad, rows["encoder.2.W"])
    show_gradient("db2 = sum_rows d[mu, logvar]", "eq. (12)", head.b.grad, rows["encoder.2.b"])
    show("dh = d[mu, logvar] W2^T", "eq. (12)", dh)
    da1 = relu1.backward(dh)
    show("da1 = dh * [a1 > 0]", "eq. (13)", da1)
    linear1.backward(da1)  # the model's first layer skips dx (needs_input_grad = False): data are not trained
    show_gradient("dW1 = x^T da1", "eq. (12)", linear1.W.grad, rows["encoder.0.W"])
    show_gradient("db1 = sum_rows da1", "eq. (12)", linear1.b.grad, rows["encoder.0.b"])

    print("\n== Checks ==")
    same = float(loss) == float(terms.total)
    print("step-by-step loss == VAE.loss_and_backward's:", "identical" if same else f"DIFFERENT ({float(terms.total)})")
    for p in model.parameters():
        if not np.array_equal(p.grad, library_grads[p.name]):
            same = False
            print(f"step-by-step {p.name} gradient DIFFERS from VAE.loss_and_backward's")
    if same:
        print("step-by-step gradients == VAE.loss_and_backward's: identical")
    print(summarize(list(rows.values()), DEFAULT_TOLERANCE))
    return 0 if same and all(row.ok for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(quiet_on_closed_pipe(main))
