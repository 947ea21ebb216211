"""The DNN acoustic model: frames and context windows, the network, its training loop, inference, priors, export."""
