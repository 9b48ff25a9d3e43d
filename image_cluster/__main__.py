"""python -m image_cluster: the same as the image-cluster command."""

import sys

from image_cluster.cli import main

sys.exit(main())
