"""Autograd Feature Lab's shared package: lesson plumbing (lab), feature maps and helpers
(utils), data (load_data, download) and the regression trainer (train).

Importing the package imports nothing heavy; torchvision is imported only where images are used.
"""
