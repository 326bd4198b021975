"""The network: EfficientNet backbone, position encodings, scene transformers, heads and losses.

``build_model(ModelConfig)`` (in ``ms_transformer``) is the one way to make a model; everything the
paper defines (query-key alignment, attention statistics) lives beside it. ROS-free.
"""
