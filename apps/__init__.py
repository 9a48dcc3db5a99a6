"""Applications on top of the library and the engines: the `speech-llama` CLI (`apps.cli`), its
`build` and `train` commands, `reproduce` (the seed paper in miniature) and the demo launcher
(serves `spaces_demo/`). Nothing below this package imports it.
"""
