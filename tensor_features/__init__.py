"""Autograd Feature Lab's shared package: two wings and a little shared ground.

lab/ (the lessons' plumbing: checks, the code that ran, Try lines, the teaching order, the
distributed-lesson plumbing) and trainer/ (the Tensor Feature Trainer: the loss registry, model
maths, one run's exact problem, fitting and its compiled --fast path, its observation points,
the run, its report, data parallel). Shared: ranks (the device and a process's rank, for both
wings), cli (argument parsing, exit codes), config, train (the trainer's command line), load_data
and download (the data), utils, plots. `config`, `download`, `load_data`, `utils` and `train`
stay where the original description puts them.

Importing the package imports nothing heavy; torchvision is imported only where images are used.
"""
