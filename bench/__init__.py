"""The lab's benchmark (`make bench`); the code and what each row means are in suite.py."""
