"""The `image-cluster` command: one console entry point for every role and tool
(image_cluster/cli.py), and the one rule for reading flags from the environment
(image_cluster/envflags.py) that every role's parser follows.

This package imports no role at module level: the command imports the role it runs when
it runs it, so `pip install image-cluster` (the client alone) can run `classify`, and a
role whose install is missing is named instead of failing with a traceback.
"""
