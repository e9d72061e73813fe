"""Keep finite differences away from ReLU's kink: the smallest |input| any ReLU of a network sees."""

from minivae.gradcheck import DEFAULT_STEP
from minivae.layers import ReLU

# Finite differences move a coordinate by up to 2h; an input within ~2h * |weight|s of ReLU's kink can
# cross it. Inputs drawn closer than this to 0 are rejected (Hypothesis `assume`).
KINK_MARGIN = 10 * DEFAULT_STEP


def relu_input_margin(network, x):
    """Run ``network`` (a Sequential) on x layer by layer; return min |input| over its ReLU layers
    (infinity when it has none)."""
    margin = float("inf")
    for layer in network.layers:
        if isinstance(layer, ReLU):
            margin = min(margin, float(abs(x).min()))
        x = layer.forward(x)
    return margin
