"""Keep finite differences away from ReLU's kink: the smallest |input| any ReLU of a network sees."""

from minivae.layers import ReLU


def relu_input_margin(network, x):
    """Run ``network`` (a Sequential) on x layer by layer; return min |input| over its ReLU layers
    (infinity when it has none)."""
    margin = float("inf")
    for layer in network.layers:
        if isinstance(layer, ReLU):
            margin = min(margin, float(abs(x).min()))
        x = layer.forward(x)
    return margin
