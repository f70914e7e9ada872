"""lt-dist: decoupled representation/classifier training for long-tailed recognition.

Importing the package has no side effects; every subsystem is imported on use.
"""

__version__ = "0.1.0"
