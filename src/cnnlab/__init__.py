"""cnnlab: twelve successive Keras CNNs for CIFAR-10 as composable configs, tracked runs and a DVC pipeline."""

__version__ = "0.1.0"
