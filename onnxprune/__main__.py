"""``python -m onnxprune ...``: the same command line as the ``onnxprune`` script."""

from onnxprune.cli import entry

if __name__ == "__main__":
    entry()
