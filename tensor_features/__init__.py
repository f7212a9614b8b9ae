"""Autograd Feature Lab's shared package: two wings and a little shared ground.

lab/ (the lessons' plumbing: checks, the code that ran, Try lines, the teaching order, the
distributed-lesson plumbing) and trainer/ (the Tensor Feature Trainer: model maths, fitting,
its observation points, data parallel). Shared: cli (argument parsing, exit codes, the device
choice), config, train (the trainer's command line), load_data and download (the data), utils,
plots. `config`, `download`, `load_data`, `utils` and `train` stay where the original
description puts them.

Importing the package imports nothing heavy; torchvision is imported only where images are used.
"""
