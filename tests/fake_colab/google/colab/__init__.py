"""A stand-in for Colab's `google.colab` package, put on the path of the kernel that
tests/test_colab_notebook.py runs the notebook in: only what the notebook calls."""
