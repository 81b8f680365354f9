"""``python -m basic_inference_server.artifacts publish ...`` (see :mod:`.publish`)."""

import sys

from .publish import main

sys.exit(main())
