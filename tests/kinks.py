"""Keep finite differences away from ReLU's kink: the smallest |input| any ReLU of a network sees,
recorded during the network's own forward pass (``minivae.gradcheck.smallest_relu_inputs``; for a
whole VAE, ``minivae.gradcheck.relu_input_margin`` records it during ``VAE.forward``)."""

import math

from minivae.gradcheck import DEFAULT_STEP, smallest_relu_inputs

# Finite differences move a coordinate by up to 2h; an input within ~2h * |weight|s of ReLU's kink can
# cross it. Inputs drawn closer than this to 0 are rejected (Hypothesis `assume`).
KINK_MARGIN = 10 * DEFAULT_STEP


def relu_input_margin(network, x):
    """min |input| over the ReLU layers of ``network`` (a Sequential) in ``network.forward(x)``
    (infinity when it has none)."""
    with smallest_relu_inputs(network) as smallest:
        network.forward(x)
    return min(smallest, default=math.inf)
