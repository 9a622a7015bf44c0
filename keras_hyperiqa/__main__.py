"""``python -m keras_hyperiqa ...``: the same CLI as ``keras-hyperiqa``."""

from keras_hyperiqa.cli import main

main()
