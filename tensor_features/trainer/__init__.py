"""The trainer wing: the Tensor Feature Trainer behind `python -m tensor_features.train`.

model (feature maps, losses, the exact optimum: mathematics), fitting (the training loops),
observations (the trainer's observation points), data_parallel (training under torchrun).
"""
