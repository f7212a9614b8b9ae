"""Autograd Feature Lab's shared package.

Lessons: lab (the lesson plumbing), lessons (the teaching order and `make run`), cli (argument
parsing and the device choice), distributed (running a lesson's observations on two processes).
Trainer: model (feature maps, losses, the exact optimum: pure maths), fitting (the training
loops), observations (the trainer's observation points), train (the command line and the
report), config (its settings), plots. Data: load_data, download. Helpers: utils.

Importing the package imports nothing heavy; torchvision is imported only where images are used.
"""
