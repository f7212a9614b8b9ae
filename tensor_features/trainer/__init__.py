"""The trainer wing: the Tensor Feature Trainer behind `python -m tensor_features.train`.

losses (the loss registry), model (feature maps, the loss terms, the exact optimum: mathematics),
problem (one run's exact problem, or why it has none), fitting (the training loops and FitPlan),
fast (the compiled --fast path), observations (the trainer's observation points), experiment (one
run: settings in, RunResult out), report (the RunResult in words, `make run`'s verdict),
data_parallel (training under torchrun). Nothing here imports from lab/.
"""
